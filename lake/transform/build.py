"""Build the offsets table from the klines table, incrementally, and read it back.

A build compares each base partition's change token (``LakeFS.mtime_key``) with the manifest of the
previous run (lake/transform/manifest.py) and recomputes only the bins that can see a changed
partition: for a change inside ``[a, b)`` the bins opening in ``[a − (T − B), b)``, from base candles
in ``[a − (T − B), b + T − B)``. A change that only appends candles (or lies in the series' tail) is a
*tail run*: the bins opening from ``a − (T − B)`` on go, for every symbol of the run at once, into one
new file of the offsets tail (lake/transform/tail.py) and the period files stay as they are. Any other
change is merged into the period files (``data.parquet``: read, merge, compare, write atomically),
folding the series' tail into them. A file whose content would not change is not written, so a
second run writes nothing (docs/offsets.md, "Incremental").

Work runs in batches of symbols (about ``batch_rows`` base rows each), so memory stays bounded
whatever the size of the lake, as a pipeline: a reader thread reads and fingerprints the next batch,
the calling thread resamples this one (in cache-sized chunks) while a pool encodes its files, and a
writer thread writes the previous batch with ``LakeFS.write_atomic_many`` (each file atomic, two
file-system syncs per batch, not two per file).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import functools
import itertools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Final, TypeAlias

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lake.binance.intervals import INTERVALS, MS_PER_DAY, Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbols
from lake.errors import DataError, NotFoundError, ValidationError
from lake.schema import OFFSET_SCHEMA
from lake.store.fs import LakeFS
from lake.store.klines import list_series, to_lakefs
from lake.store.paths import DATA_FILE, PartitionKey, partition_end, partition_period, series_dir
from lake.transform import tail as offsets_tail
from lake.transform.layout import (
    LEGACY_TAIL_FILE,
    OffsetPartition,
    offsets_period,
    period_end,
    period_start,
    table_dir,
)
from lake.transform.layout import series_dir as offsets_series_dir
from lake.transform.manifest import (
    Series,
    last_open,
    load_manifest,
    pack_days,
    save_manifest,
    unpack_days,
)
from lake.transform.offsets import OffsetPlan, Resampled, offset_plan, resample_arrays
from lake.transform.tail import BIN_SCHEMA, GRACE_S, Layer, TailState, arrow_column

__all__ = ["BuildResult", "build_offsets", "default_base", "scan_offsets"]

_KLINES_HIVE = {"trade_type": pl.String, "interval": pl.String, "symbol": pl.String, "date": pl.String}
_OFFSETS_HIVE = {
    "trade_type": pl.String,
    "interval": pl.String,
    "offset": pl.String,
    "symbol": pl.String,
    "date": pl.String,
}
_SAVE_EVERY_S = 30.0
_BATCH_SYMBOLS = 32
_TAIL_BATCH_SYMBOLS = 512
_PLAN_PARTITIONS = 256  # changed base partitions planning reads in one scan (~2M rows of 5m)
_FILES = (DATA_FILE, LEGACY_TAIL_FILE)
# How far a series' tail may reach (from its start to the last base day) before a run folds it into
# the period files, by the period of those files: about 770 bins per offset and series either way.
_TAIL_MAX_MS = {"year": 32 * MS_PER_DAY, "month": 8 * MS_PER_DAY}
# A run writes its tail bins as one file, or one per this many bins (memory stays bounded).
_LAYER_ROWS = 2_000_000
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_CHUNK_ROWS = 100_000
# period boundaries (ms) for a vectorised "which file period": numpy's calendar casts are ~20× slower
_YEAR_STARTS = np.arange("1970", "2200", dtype="datetime64[Y]").astype("datetime64[ms]").astype(np.int64)
_MONTH_STARTS = (
    np.arange("1970-01", "2200-01", dtype="datetime64[M]").astype("datetime64[ms]").astype(np.int64)
)
# Encodings chosen for these columns: times and counts delta-packed (a 1h time column shrinks from
# 70 KB to nothing), floats byte-stream-split and LZ4-compressed (their high bytes repeat, so LZ4 finds
# long runs fast): a 1h year file is ~360 KB in ~0.7 ms, where plain LZ4 gives ~460 KB in ~1.5 ms.
_INT_COLUMNS = ("candle_begin_time", "trade_num", "n_base")
_ENCODINGS: Final = {
    c: "DELTA_BINARY_PACKED" if c in _INT_COLUMNS else "BYTE_STREAM_SPLIT" for c in OFFSET_SCHEMA
}
_CODECS: Final = {c: "none" if c in _INT_COLUMNS else "lz4" for c in OFFSET_SCHEMA}


@dataclass(frozen=True, slots=True)
class BuildResult:
    """What one ``build_offsets`` run did."""

    trade_type: str
    interval: str
    base: str
    method: str
    offsets: tuple[str, ...]
    symbols: int = 0  # series looked at
    symbols_updated: int = 0  # series with something to recompute
    base_partitions_changed: int = 0
    bins: int = 0  # bins recomputed
    written: int = 0  # files written (period files and tail files)
    unchanged: int = 0  # files recomputed but identical, not written
    removed: int = 0  # files deleted (bins that no longer exist, tail files no longer needed)
    tail_bins: int = 0  # bins written to the tail
    folded: int = 0  # series whose tail was folded into their period files
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class _Work:
    symbol: str
    tokens: dict[str, str]
    read: list[str]  # base partition dates to read
    lo: int | None  # recompute bins opening in [lo, hi); None: unbounded
    hi: int | None
    changed: int
    drop_offsets: list[str] = field(default_factory=list)  # offsets built before a --rebuild
    days: dict[str, str] = field(default_factory=dict)  # packed day fingerprints known at planning
    # a tail run: the bins opening in [lo, ∞) go to the tail, the period files stay as they are
    tail: bool = False
    # otherwise, the series' tail from here on is folded into its period files: the tail layers from
    # ``tail_start`` on, and the per-period tail.parquet files of an older lake from ``legacy_from``
    tail_start: int | None = None
    legacy_from: int | None = None
    data_end: int | None = None  # end (ms) of the base data, before or after the run, whichever later
    # a tail run's base candles from ``lo`` on, when planning read all of them (no second read):
    # row ranges of planning's frames
    cached: list[_Rows] | None = None

    @property
    def fold_from(self) -> int | None:
        froms = [f for f in (self.tail_start, self.legacy_from) if f is not None]
        return min(froms) if froms else None

    def periods(self, target: Interval) -> list[dt.date] | None:
        """The file periods this run may rewrite, or ``None`` for all (a full recompute lists them)."""
        if self.lo is None or self.data_end is None:
            return None
        spans = [(self.lo, self.data_end if self.hi is None else self.hi)]
        if self.fold_from is not None:
            spans.append((self.fold_from, self.data_end))
        out: set[dt.date] = set()
        for a, b in spans:
            p = period_start(target, a)
            while a < b:
                out.add(p)
                p = period_end(target, p)
                a = _day_ms(p)
        return sorted(out)

    def touches(self, start_ms: int, end_ms: int) -> bool:
        """Whether this run rewrites files of the period ``[start_ms, end_ms)``."""
        fold_from = self.fold_from
        if fold_from is not None and end_ms > fold_from:
            return True
        return (self.lo is None or end_ms > self.lo) and (self.hi is None or start_ms < self.hi)


def default_base(lfs: LakeFS, trade_type: str, target: Interval, symbols: Sequence[str] | None) -> str:
    """The coarsest stored kline interval that divides ``target`` at least twice (5m for 1h, …)."""
    stored = {iv for tt, iv, sym in list_series(lfs) if tt == trade_type and (not symbols or sym in symbols)}
    assert target.ms is not None
    fits = [
        iv
        for iv in INTERVALS.values()
        if iv.name in stored and iv.ms and iv.ms < target.ms and target.ms % iv.ms == 0
    ]
    if not fits:
        have = ", ".join(sorted(stored)) or "none"
        raise NotFoundError(
            f"no stored {trade_type} klines to build {target.name} offsets from (stored intervals: {have})"
        )
    return max(fits, key=lambda iv: iv.ms or 0).name


def build_offsets(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    *,
    base: str | None = None,
    offsets: str | Sequence[str] | None = "all",
    method: str = "seed",
    symbols: str | Sequence[str] | None = None,
    rebuild: bool = False,
    fold: bool = False,
    batch_rows: int = 2_000_000,
    workers: int = 4,
    tail_grace_s: float = GRACE_S,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Bring the offsets table of (``trade_type``, ``interval``) up to date with the klines table.

    ``base`` defaults to the one the series were built from, else the coarsest stored interval that
    divides ``interval``. Offsets built earlier stay maintained alongside the requested ones. A
    series built with another base or method is an error unless ``rebuild`` (which recomputes it from
    scratch and deletes its old offsets). ``fold`` moves the tail of every series looked at into its
    period files now (otherwise a series' tail is folded when it grows past about a month). Tail
    files no longer needed are deleted ``tail_grace_s`` after that, so that a query which listed
    them just before can still read them. ``progress(done, total)`` is called per batch of symbols.
    """
    started = time.perf_counter()
    lfs = to_lakefs(root)
    tt = get_trade_type(trade_type)
    target = parse_interval(interval, spot=tt.is_spot)
    syms = validate_symbols(symbols) if symbols else None
    with lfs.lock(table_dir(tt.name, target.name)):
        manifest = load_manifest(lfs, tt.name, target.name)
        tail = offsets_tail.load_state(lfs, tt.name, target.name)  # an unreadable file stops here
        if base is None:
            built = {manifest[s].base for s in (syms or manifest) if s in manifest}
            base = built.pop() if len(built) == 1 else default_base(lfs, tt.name, target, syms)
        plan = offset_plan(target, parse_interval(base, spot=tt.is_spot), offsets, method)
        if syms is None:
            listed = {s for t, iv, s in list_series(lfs) if t == tt.name and iv == plan.base.name}
            syms = sorted(listed | {s for s, st in manifest.items() if st.base == plan.base.name})
        by_offsets: dict[tuple[int, ...], list[_Work]] = {}
        for w, ks in _plan_all(lfs, tt.name, plan, syms, manifest, rebuild, fold, tail.starts, workers):
            if w is not None:
                by_offsets.setdefault(ks, []).append(w)
        jobs = [
            (OffsetPlan(plan.target, plan.base, ks, plan.method), batch)
            for ks, items in by_offsets.items()
            for batch in _batches(items, batch_rows, plan)
        ]
        run = _Run(lfs, tt.name, target.name, manifest, tail, progress)
        try:
            run.execute(jobs, workers, tail_grace_s)
        finally:
            if run.dirty:
                save_manifest(lfs, tt.name, target.name, manifest)
    items = [w for v in by_offsets.values() for w in v]
    return BuildResult(
        trade_type=tt.name,
        interval=target.name,
        base=plan.base.name,
        method=plan.method,
        offsets=tuple(plan.names),
        symbols=len(syms),
        symbols_updated=len(items),
        base_partitions_changed=sum(w.changed for w in items),
        bins=run.bins,
        written=run.outcomes["written"],
        unchanged=run.outcomes["unchanged"],
        removed=run.outcomes["removed"],
        tail_bins=run.tail_bins,
        folded=run.folded,
        seconds=time.perf_counter() - started,
    )


class _Run:
    """Executes batches as a pipeline: a reader thread reads (and fingerprints) the next batch while
    this one is resampled and its files are encoded by a thread pool, and a writer thread writes the
    previous batch's files. A batch's series enter the manifest once all its files are written (a
    failure re-raises and leaves them out, so the next run redoes them); a tail run's series once
    the tail file holding their bins is written."""

    def __init__(
        self,
        lfs: LakeFS,
        trade_type: str,
        interval: str,
        manifest: dict[str, Series],
        tail: TailState,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.lfs, self.trade_type, self.interval = lfs, trade_type, interval
        self.manifest, self.tail, self.progress = manifest, tail, progress
        self.bins = 0
        self.tail_bins = 0
        self.folded = 0
        self.outcomes: Counter[str] = Counter()
        self.dirty = False
        self.done = 0
        # tail files written by this run (later names must follow them) and the bins of tail runs
        # waiting to be written as one tail file, with their series' manifest entries
        self.names = list(tail.names)
        self.names_lock = threading.Lock()
        self.layer_parts: list[pl.DataFrame] = []
        self.layer_rows = 0
        self.cover: dict[str, int] = {}
        self.deferred: list[tuple[OffsetPlan, _Work, dict[str, str]]] = []

    def execute(self, jobs: list[tuple[OffsetPlan, list[_Work]]], workers: int, grace_s: float) -> None:
        total = sum(len(batch) for _, batch in jobs)
        if jobs:
            offsets_tail.ensure_tail(self.lfs, self.trade_type, self.interval)
        last_save = time.monotonic()
        writes: deque[tuple[OffsetPlan, list[_Work], _Fingerprints, Future[list[_Outcome]]]] = deque()
        with (
            ThreadPoolExecutor(1) as reader,
            ThreadPoolExecutor(1) as writer,
            ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as encoders,  # CPU-bound
        ):
            ahead = reader.submit(self._load, *jobs[0]) if jobs else None
            for i, (plan, batch) in enumerate(jobs):
                assert ahead is not None
                base, fingerprints, tail_bins = ahead.result()
                if i + 1 < len(jobs):
                    ahead = reader.submit(self._load, *jobs[i + 1])
                futures = self._submit(plan, batch, base, tail_bins, encoders)
                del base, tail_bins
                folds = [w.symbol for w in batch if w.tail_start is not None]
                writes.append((plan, batch, fingerprints, writer.submit(self._write, futures, folds)))
                while len(writes) > 1:  # one batch being written while the next is computed
                    self._finish(*writes.popleft(), total)
                if self.dirty and time.monotonic() - last_save > _SAVE_EVERY_S:
                    save_manifest(self.lfs, self.trade_type, self.interval, self.manifest)
                    last_save = time.monotonic()
            while writes:
                self._finish(*writes.popleft(), total)
        self._flush_layer()
        state = self.tail
        if self.names != self.tail.names:
            state = offsets_tail.load_state(self.lfs, self.trade_type, self.interval)
        self.outcomes["removed"] += offsets_tail.cleanup(self.lfs, state, grace_s)

    def _load(
        self, plan: OffsetPlan, batch: list[_Work]
    ) -> tuple[pl.DataFrame, _Fingerprints, pl.DataFrame | None]:
        base = _read_base(self.lfs, self.trade_type, plan, batch)
        # a tail run's partitions were fingerprinted at planning (or did not change), and are read
        # from its lo on only
        tails = [i for i, w in enumerate(batch) if w.tail]
        rows = base.filter(~pl.col("_sym").is_in(tails)) if tails else base
        prints = _fingerprints(rows, plan.base, [w.symbol for w in batch])
        folds = [w.symbol for w in batch if w.tail_start is not None]
        return base, prints, self.tail.read_bins(self.lfs, folds) if folds else None

    def _write(self, futures: list[_Pending], folds: list[str]) -> list[_Outcome]:
        # .result() re-raises a failed merge: the batch's series then stay out of the manifest
        outcomes = [o for f in futures for o in (f.result() if isinstance(f, Future) else [f])]
        # one durable batch write (two file-system syncs) instead of two fsyncs per file
        self.lfs.write_atomic_many([(o.rel, o.data) for o in outcomes if o.kind == "write"])
        removed = [o for o in outcomes if o.kind == "remove" and _remove_file(self.lfs, o.rel)]
        out = [o for o in outcomes if o.kind in ("write", "unchanged")] + removed
        if folds:
            # only now do the folded bins leave the tail for readers: until this file exists they
            # read them from the tail (and, from the files just written, possibly once more)
            with self.names_lock:
                name = offsets_tail.write_markers(self.lfs, self.tail.directory, self.names, folds)
                self.names.append(name)
            out.append(_Outcome("write", f"{self.tail.directory}/{name}"))
        return out

    def _submit(
        self,
        plan: OffsetPlan,
        batch: list[_Work],
        base: pl.DataFrame,
        tail_bins: pl.DataFrame | None,
        pool: ThreadPoolExecutor,
    ) -> list[_Pending]:
        chunks = _resample_batch(base, plan, batch)
        to_tail = np.array([w.tail for w in batch], dtype=bool)
        if to_tail.any():
            split = [(_select(r, to_tail[r.sym]), _select(r, ~to_tail[r.sym])) for r in chunks]
            layer = _layer_rows([t for t, _ in split if len(t)], plan, batch)
            chunks = [d for _, d in split if len(d)]
            self.layer_parts.append(layer)
            self.layer_rows += layer.height
            self.tail_bins += layer.height
            self.bins += layer.height
            for w in batch:
                if w.tail:
                    assert w.lo is not None
                    self.cover[w.symbol] = w.lo
        files = _split_files(chunks, plan, batch)
        self.bins += sum(t.num_rows for per in files.values() for t in per.values())
        olds = _split_tail(tail_bins, plan.target) if tail_bins is not None else {}
        lfs, tt, iv = self.lfs, self.trade_type, plan.target.name
        futures: list[_Pending] = []
        for w in batch:
            if w.tail:
                continue
            known = w.periods(plan.target)
            for name in plan.names:
                new = files.get((w.symbol, name), {})
                old = olds.get((w.symbol, name), {})
                if known is None:
                    sdir = offsets_series_dir(tt, iv, name, w.symbol)
                    listed = {dt.date.fromisoformat(e[5:]) for e in lfs.listdir(sdir) if _is_date_dir(e)}
                else:
                    listed = set(known)
                for p in sorted(listed | new.keys() | old.keys()):
                    part = OffsetPartition(tt, iv, name, w.symbol, p)
                    if w.touches(part.start_ms, part.end_ms):
                        futures.append(pool.submit(_period_files, lfs, part, new.get(p), w, old.get(p)))
            for name in w.drop_offsets:
                sdir = offsets_series_dir(tt, iv, name, w.symbol)
                for e in lfs.listdir(sdir):
                    if _is_date_dir(e):
                        futures.extend(_Outcome("remove", f"{sdir}/{e}/{f}") for f in _FILES)
        return futures

    def _finish(
        self,
        plan: OffsetPlan,
        batch: list[_Work],
        fingerprints: _Fingerprints,
        written: Future[list[_Outcome]],
        total: int,
    ) -> None:
        for o in written.result():  # re-raises a failed encode or write
            self.outcomes[{"write": "written", "remove": "removed"}.get(o.kind, o.kind)] += 1
        for w in batch:
            prints = fingerprints.get(w.symbol, {})
            if w.tail:
                self.deferred.append((plan, w, prints))  # entered once its tail file is written
            else:
                self._record(plan, w, prints)
                self.folded += w.tail_start is not None
        if self.layer_rows >= _LAYER_ROWS:
            self._flush_layer()
        self.done += len(batch)
        if self.progress is not None:
            self.progress(self.done, total)

    def _record(self, plan: OffsetPlan, w: _Work, prints: dict[str, str]) -> None:
        old = self.manifest.get(w.symbol)
        days = {d: v for d, v in (old.days if old is not None else {}).items() if d in w.tokens}
        days.update(w.days)
        days.update(prints)
        self.manifest[w.symbol] = Series(plan.base.name, plan.method, plan.names, w.tokens, days)
        self.dirty = True

    def _flush_layer(self) -> None:
        """Write the tail runs' bins so far as one tail file, then enter their series."""
        if not self.cover:
            return
        parts = self.layer_parts
        bins = pl.concat(parts) if len(parts) > 1 else parts[0] if parts else pl.DataFrame(schema=BIN_SCHEMA)
        with self.names_lock:
            state = offsets_tail.load_state(self.lfs, self.trade_type, self.interval)
            name, _ = offsets_tail.write_layer(self.lfs, state, Layer(dict(self.cover), set(), bins))
            self.names.append(name)
        self.outcomes["written"] += 1
        for plan, w, prints in self.deferred:
            self._record(plan, w, prints)
        self.layer_parts, self.layer_rows, self.cover, self.deferred = [], 0, {}, []


# -- planning ------------------------------------------------------------------------------------


def _plan_all(
    lfs: LakeFS,
    trade_type: str,
    plan: OffsetPlan,
    syms: list[str],
    manifest: dict[str, Series],
    rebuild: bool,
    fold: bool,
    tail_starts: dict[str, int],
    workers: int,
) -> Iterator[tuple[_Work | None, tuple[int, ...]]]:
    """Plan every series: list and stat its base partitions, then read the changed ones in scans of
    about ``_PLAN_PARTITIONS`` partitions and fingerprint their days (not one read each)."""
    if lfs.is_local:  # a stat is microseconds: threads would only fight over the GIL (~20× slower)
        tokens = [_base_tokens(lfs, trade_type, plan.base.name, s) for s in syms]
    else:  # an object store answers in milliseconds: ask in parallel
        with ThreadPoolExecutor(max(1, workers)) as pool:
            tokens = list(pool.map(lambda s: _base_tokens(lfs, trade_type, plan.base.name, s), syms))
    names = {k: plan.name(k) for k in range(plan.n)}
    chunk: list[tuple[str, dict[str, str]]] = []
    wanted: list[tuple[str, str]] = []
    for i, (sym, tok) in enumerate(zip(syms, tokens, strict=True)):
        chunk.append((sym, tok))
        wanted += [(sym, d) for d in _to_read(manifest.get(sym), tok)]
        if len(wanted) >= _PLAN_PARTITIONS or i == len(syms) - 1:  # bounded memory
            read = _read_partitions(lfs, trade_type, plan.base, wanted)
            for s, t in chunk:
                yield _plan_series(
                    plan, names, s, manifest.get(s), rebuild, fold, t, read, tail_starts.get(s)
                )
            chunk, wanted = [], []


def _to_read(state: Series | None, tokens: dict[str, str]) -> list[str]:
    """The changed base partitions whose days planning compares (an unchanged series: none)."""
    if state is None:
        return []
    return [
        d
        for d, tok in tokens.items()
        if tok != state.partitions.get(d) and (d in state.days or d not in state.partitions)
    ]


@dataclass(frozen=True, slots=True)
class _Rows:
    """Rows ``[a, b)`` of a frame planning read, ordered by time (kline value columns; ``times``:
    open times, ms; ``hashes``: the rows' hashes as fingerprinted, by chunks of whole partitions)."""

    frame: pl.DataFrame
    times: np.ndarray
    hashes: _Hashes
    a: int
    b: int

    def since(self, t_ms: int) -> _Rows:
        at = self.a + int(np.searchsorted(self.times[self.a : self.b], t_ms))
        return _Rows(self.frame, self.times, self.hashes, at, self.b)

    def fingerprint(self, start_ms: int, last_ms: int) -> int:
        """The fingerprint of the rows opening in ``[start_ms, last_ms]``, as of a day's rows."""
        times = self.times[self.a : self.b]
        i = self.a + int(np.searchsorted(times, start_ms, side="left"))
        j = self.a + int(np.searchsorted(times, last_ms, side="right"))
        return _print(self.hashes.sum(i, j), j - i)


@dataclass(slots=True)
class _Hashes:
    """Row hashes of a frame as chunks (first row, hashes), each a run of whole series."""

    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def sum(self, i: int, j: int) -> int:
        """The wrapped uint64 sum of the hashes of rows ``[i, j)`` (rows of one series)."""
        at = bisect.bisect_right([a for a, _ in self.chunks], i) - 1
        a, h = self.chunks[at]
        return int(h[i - a : j - a].sum(dtype=np.uint64))


def _read_partitions(
    lfs: LakeFS, trade_type: str, base: Interval, wanted: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, _Rows]]:
    """Packed day fingerprints and rows of base partitions (symbol, date), read in one scan."""
    if not wanted:
        return {}
    paths = [
        lfs.url(PartitionKey("klines", trade_type, base.name, s, dt.date.fromisoformat(d)).path)
        for s, d in wanted
    ]
    frame = _scan_coded(lfs, paths, list(range(len(paths)))).collect()  # files (codes) in order
    rising = (pl.col("candle_begin_time").to_physical().diff() > 0) | (pl.col("_sym").diff() != 0)
    if not frame.select(rising.fill_null(True).all()).item():
        frame = frame.sort("_sym", "candle_begin_time")  # a file not written by lake: rows in order
    keys = [f"{i}" for i in range(len(wanted))]  # one code per partition
    hashes = _Hashes()
    prints = _fingerprints(frame, base, keys, hashes)
    code = frame["_sym"].to_numpy()
    starts = [0, *(np.flatnonzero(code[1:] != code[:-1]) + 1).tolist()]
    ends = [*starts[1:], len(code)]
    rows = frame.drop("_sym")
    times = rows["candle_begin_time"].to_physical().to_numpy()  # ms since the epoch, no copy
    out = {}
    for a, b in zip(starts, ends, strict=True):
        s, d = wanted[int(code[a])]
        out[(s, d)] = (prints.get(keys[int(code[a])], {}).get(d, ""), _Rows(rows, times, hashes, a, b))
    return out


def _scan_coded(lfs: LakeFS, paths: list[str], codes: list[int]) -> pl.LazyFrame:
    """One scan of base partition files (in the order given): ``_sym`` (each file's code) and the
    kline value columns. One multi-file scan reads ~2× faster than a concatenation of scans, and the
    path column is turned into codes through an enum (a string lookup per row costs as much again)."""
    columns = [pl.col(c).cast(OFFSET_SCHEMA[c]) for c in OFFSET_SCHEMA if c != "n_base"]
    return pl.scan_parquet(
        paths,
        glob=False,  # exact paths: a root named "data [old]" is not a pattern
        include_file_paths="_path",
        storage_options=lfs.storage_options or None,
    ).select(
        pl.lit(pl.Series(codes, dtype=pl.UInt32))
        .gather(pl.col("_path").cast(pl.Enum(paths)).to_physical())
        .alias("_sym"),
        *columns,
    )


def _plan_series(
    plan: OffsetPlan,
    names: dict[int, str],
    symbol: str,
    state: Series | None,
    rebuild: bool,
    fold: bool,
    tokens: dict[str, str],
    prefetched: dict[tuple[str, str], tuple[str, _Rows]],
    tail_start: int | None,
) -> tuple[_Work | None, tuple[int, ...]]:
    drop: list[str] = []
    if state is not None and (state.base != plan.base.name or state.method != plan.method or rebuild):
        if not rebuild:
            raise ValidationError(
                f"{symbol} {plan.target.name} offsets were built from {state.base} with method "
                f"{state.method!r}; pass rebuild to recompute them from {plan.base.name} with {plan.method!r}"
            )
        drop = state.offsets
        state = None
    legacy = state.legacy_tail_from if state is not None else None
    ks = set(plan.offsets)
    if state is not None:  # offsets built before stay maintained
        by_name = {n: k for k, n in names.items()}
        ks |= {by_name[n] for n in state.offsets if n in by_name}
    keys = tuple(sorted(ks))
    kept = [names[k] for k in keys]
    if state is None or sorted(state.offsets) != sorted(kept):
        if not tokens and state is None and not drop:
            return None, keys
        drop = [o for o in drop if o not in kept]
        return _Work(
            symbol,
            tokens,
            sorted(tokens),
            None,
            None,
            len(tokens),
            drop,
            tail_start=tail_start,
            legacy_from=legacy,
        ), keys
    changed = [d for d in tokens.keys() | state.partitions.keys() if tokens.get(d) != state.partitions.get(d)]
    old_end = _data_end(state.days, plan.base)
    if not changed:
        if legacy is None and not (fold and tail_start is not None):
            return None, keys
        # any run but a tail run folds the series' tail into its period files; this one only that
        w = _Work(symbol, tokens, [], 0, 0, 0, tail_start=tail_start, legacy_from=legacy)
        w.data_end = old_end
        return w, keys
    spans: list[tuple[int, int]] = []
    known: dict[str, str] = {}
    frames: dict[str, _Rows] = {}
    for d in changed:
        # a new partition had no rows; one from an old manifest without fingerprints counts as whole
        old_days = state.days.get(d, None if d in state.partitions else "")
        if d not in tokens or old_days is None:
            spans.append(_span(plan.base, d))
            continue
        new_days, stored = prefetched.get((symbol, d), ("", None))  # (none: gone since listed)
        known[d] = new_days
        if stored is not None:
            frames[d] = stored
        if new_days == old_days:
            continue
        new, old = unpack_days(new_days), unpack_days(old_days)
        for day in new.keys() | old.keys():
            n, o = new.get(day), old.get(day)
            if n is not None and o is not None and n[0] == o[0]:
                continue
            start = day * MS_PER_DAY
            # candles added to a day (a live period): if its rows up to the old last candle are the
            # old ones, the change starts after it
            if n is not None and o is not None and stored is not None:
                (_, new_last), (old_print, old_last) = n, o
                added = new_last is not None and old_last is not None and new_last > old_last
                if added and old_last is not None and stored.fingerprint(start, old_last) == old_print:
                    start = old_last + plan.base_ms
            spans.append((start, (day + 1) * MS_PER_DAY))
    after = {d: known.get(d, state.days.get(d, "")) for d in tokens}
    end = _data_end(after, plan.base)
    data_end = max(end or 0, old_end or 0) or None
    if not spans:  # rewritten with the same rows: only the change tokens move
        w = _Work(symbol, tokens, [], 0, 0, len(changed), days=known)
        if legacy is not None or (fold and tail_start is not None):
            w.tail_start, w.legacy_from, w.data_end = tail_start, legacy, data_end
        return w, keys
    a = min(x for x, _ in spans)
    b = max(y for _, y in spans)
    reach = plan.target_ms - plan.base_ms
    lo, hi = a - reach, b
    # A tail run: the change only adds candles after every stored one (an appended day: no stored bin
    # opens at or after lo) or lies inside the tail, and the tail stays within _TAIL_MAX_MS. The bins
    # from lo on go to a new tail layer; the period files (all bins before the tail start) stay.
    tail_from = tail_start
    if tail_from is None and old_end is not None and a >= old_end:
        tail_from = lo
    limit = _TAIL_MAX_MS[offsets_period(plan.target)]
    if (
        not fold
        and legacy is None
        and tail_from is not None
        and lo >= tail_from
        and end is not None
        and end - tail_from <= limit
    ):
        read = [d for d in sorted(tokens) if _span(plan.base, d)[1] > lo]
        # (each partition read either fingerprinted at planning or unchanged: no fingerprints to take)
        if all(d in known or tokens[d] == state.partitions.get(d) for d in read):
            w = _Work(symbol, tokens, read, lo, None, len(changed), days=known, tail=True)
            if all(d in frames for d in read):
                w.cached = [frames[d].since(lo) for d in read]
            return w, keys
    # otherwise the bins of [lo, hi) are merged into the period files, and a tail is folded into them
    read = [d for d in sorted(tokens) if _span(plan.base, d)[0] < hi + reach and _span(plan.base, d)[1] > lo]
    w = _Work(
        symbol, tokens, read, lo, hi, len(changed), days=known, tail_start=tail_start, legacy_from=legacy
    )
    w.data_end = data_end
    return w, keys


def _data_end(days: dict[str, str], base: Interval) -> int | None:
    """End (ms) of the last base candle (or of its UTC day, when its time is not known), from the
    packed day fingerprints of each base partition (the latest partition decides; one without
    fingerprints counts to its end); ``None`` when there are none."""
    if not days:
        return None
    part = max(days)
    got = last_open(days[part]) if days[part] else None
    if got is None:
        return _span(base, part)[1]
    day, last = got
    assert base.ms is not None
    return (day + 1) * MS_PER_DAY if last is None else last + base.ms


def _base_tokens(lfs: LakeFS, trade_type: str, base: str, symbol: str) -> dict[str, str]:
    """Change token of every stored base partition of one series, by partition date."""
    sdir = series_dir("klines", trade_type, base, symbol)
    out: dict[str, str] = {}
    for name in lfs.listdir(sdir):
        if not name.startswith("date="):
            continue
        token = lfs.mtime_key(f"{sdir}/{name}/{DATA_FILE}")
        if token is not None:
            out[name[5:]] = token
    return out


def _batches(items: list[_Work], batch_rows: int, plan: OffsetPlan) -> Iterator[list[_Work]]:
    """Groups of series of about ``batch_rows`` base rows (estimated from partition counts, or known
    for a tail run's cached rows), and at most ``_BATCH_SYMBOLS`` series that rewrite period files (a
    batch's encoded files wait in memory for their write). Tail runs write a few small files per
    series, so up to ``_TAIL_BATCH_SYMBOLS`` of them share a batch and its two file-system syncs."""
    days = {"day": 1, "month": 31, "year": 366}[partition_period(plan.base)]
    per_partition = days * MS_PER_DAY // plan.base_ms
    batch: list[_Work] = []
    rows = weight = 0
    for w in items:
        batch.append(w)
        rows += sum(r.b - r.a for r in w.cached) if w.cached is not None else len(w.read) * per_partition
        weight += _BATCH_SYMBOLS if w.tail else _TAIL_BATCH_SYMBOLS
        if rows >= batch_rows or weight >= _BATCH_SYMBOLS * _TAIL_BATCH_SYMBOLS:
            yield batch
            batch, rows, weight = [], 0, 0
    if batch:
        yield batch


# -- one batch -----------------------------------------------------------------------------------


def _read_base(lfs: LakeFS, trade_type: str, plan: OffsetPlan, batch: list[_Work]) -> pl.DataFrame:
    """The base candles a batch needs: ``_sym`` (the series' index in ``batch``) and the kline value
    columns, ordered by series then time. A tail run needs the candles from its ``lo`` on only (its
    partitions' fingerprints are known from planning), so its files are read with that filter: the
    month before an appended first of a month costs ~0.1 s instead of ~0.3 s to read."""
    ranges = [(i, r) for i, w in enumerate(batch) if w.cached is not None for r in w.cached if r.b > r.a]
    scans = []
    if ranges:  # one concatenation of slices, not a query per series
        rows = pl.concat([r.frame.slice(r.a, r.b - r.a) for _, r in ranges], rechunk=True)
        code = np.repeat(np.array([i for i, _ in ranges], np.uint32), [r.b - r.a for _, r in ranges])
        scans.append(rows.lazy().select(pl.Series("_sym", code, pl.UInt32), pl.all()))
    for tail in (True, False):
        files = [
            (
                lfs.url(
                    PartitionKey(
                        "klines", trade_type, plan.base.name, w.symbol, dt.date.fromisoformat(d)
                    ).path
                ),
                i,
            )
            for i, w in enumerate(batch)
            if w.cached is None and w.tail == tail
            for d in w.read
        ]
        if not files:
            continue
        scan = _scan_coded(lfs, [f for f, _ in files], [i for _, i in files])
        if tail:  # a constant bound, which the reader applies before materialising the other columns
            lo = min(batch[i].lo or 0 for _, i in files)
            scan = scan.filter(
                pl.col("candle_begin_time") >= pl.lit(lo).cast(OFFSET_SCHEMA["candle_begin_time"])
            )
        scans.append(scan)
    if not scans:
        return pl.DataFrame(schema={"_sym": pl.UInt32, **OFFSET_SCHEMA}).drop("n_base")
    out = pl.concat(scans).collect()
    return out if len(scans) == 1 else out.sort("_sym", "candle_begin_time")


def _resample_batch(base: pl.DataFrame, plan: OffsetPlan, batch: list[_Work]) -> list[Resampled]:
    """All offsets of a batch's series, restricted to the bins each series recomputes, in chunks of
    whole series of about ``_CHUNK_ROWS`` base rows (working arrays that stay in cache and are reused
    by the allocator, instead of fresh gigabyte-sized ones: ~1.5-8× faster)."""
    sym = base["_sym"].to_numpy().astype(np.int64)
    t = base["candle_begin_time"].dt.epoch("ms").to_numpy()
    if len(t) > 1 and not np.all((sym[1:] > sym[:-1]) | ((sym[1:] == sym[:-1]) & (t[1:] > t[:-1]))):
        base = base.sort("_sym", "candle_begin_time")
        sym = base["_sym"].to_numpy().astype(np.int64)
        t = base["candle_begin_time"].dt.epoch("ms").to_numpy()
    values = {c: base[c].to_numpy() for c in OFFSET_SCHEMA if c not in ("candle_begin_time", "n_base")}
    restrict = not all(w.lo is None and w.hi is None for w in batch)
    lo = np.array([_I64_MIN if w.lo is None else w.lo for w in batch], dtype=np.int64)
    hi = np.array([_I64_MAX if w.hi is None else w.hi for w in batch], dtype=np.int64)
    cuts = [0]
    for at in np.flatnonzero(np.diff(sym)).tolist():
        if at + 1 - cuts[-1] >= _CHUNK_ROWS:
            cuts.append(at + 1)
    cuts.append(len(t))
    out = []
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        r = resample_arrays(sym[a:b], t[a:b], {c: v[a:b] for c, v in values.items()}, plan)
        if restrict and len(r):
            keep = (r.start >= lo[r.sym]) & (r.start < hi[r.sym])
            r = Resampled(
                r.which[keep], r.sym[keep], r.start[keep], {c: v[keep] for c, v in r.columns.items()}
            )
        if len(r):
            out.append(r)
    return out


def _split_files(
    chunks: list[Resampled], plan: OffsetPlan, batch: list[_Work]
) -> dict[tuple[str, str], dict[dt.date, pa.Table]]:
    """Bins by (symbol, offset) and file period, as zero-copy slices of Arrow tables (a chunk's bins
    come ordered by offset, symbol and time, and a series is in one chunk)."""
    names = plan.names
    out: dict[tuple[str, str], dict[dt.date, pa.Table]] = {}
    for r in chunks:
        pid = _period_ids(r.start, plan.target)
        new = np.ones(len(r), dtype=bool)
        new[1:] = (r.which[1:] != r.which[:-1]) | (r.sym[1:] != r.sym[:-1]) | (pid[1:] != pid[:-1])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], len(r))
        table = pa.table(
            {
                "candle_begin_time": arrow_column(r.start).cast(pa.timestamp("ms", "UTC")),
                **{c: arrow_column(r.columns[c]) for c in OFFSET_SCHEMA if c != "candle_begin_time"},
            }
        )
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            key = (batch[int(r.sym[a])].symbol, names[int(r.which[a])])
            out.setdefault(key, {})[_period_date(int(pid[a]), plan.target)] = table.slice(a, b - a)
    return out


def _period_ids(start: np.ndarray, target: Interval) -> np.ndarray:
    """Months or years since 1970 of the file periods holding bins opening at ``start`` (ms)."""
    monthly = offsets_period(target) == "month"
    return np.searchsorted(_MONTH_STARTS if monthly else _YEAR_STARTS, start, side="right") - 1


def _period_date(pid: int, target: Interval) -> dt.date:
    if offsets_period(target) == "month":
        return dt.date(1970 + pid // 12, pid % 12 + 1, 1)
    return dt.date(1970 + pid, 1, 1)


def _select(r: Resampled, keep: np.ndarray) -> Resampled:
    return Resampled(r.which[keep], r.sym[keep], r.start[keep], {c: v[keep] for c, v in r.columns.items()})


def _layer_rows(chunks: list[Resampled], plan: OffsetPlan, batch: list[_Work]) -> pl.DataFrame:
    """Tail-run bins as rows of a tail file (``BIN_SCHEMA``)."""
    if not chunks:
        return pl.DataFrame(schema=BIN_SCHEMA)
    symbols = pl.Series([w.symbol for w in batch], dtype=pl.String)
    offsets = pl.Series(plan.names, dtype=pl.String)
    frames = [
        pl.DataFrame(
            {
                "symbol": symbols.gather(r.sym),
                "offset": offsets.gather(r.which),
                "candle_begin_time": pl.Series(r.start).cast(pl.Datetime("ms", "UTC")),
                **{c: r.columns[c] for c in OFFSET_SCHEMA if c != "candle_begin_time"},
            }
        )
        for r in chunks
    ]
    out = pl.concat(frames) if len(frames) > 1 else frames[0]
    return out.select([pl.col(c).cast(t) for c, t in BIN_SCHEMA.items()])


def _split_tail(bins: pl.DataFrame, target: Interval) -> dict[tuple[str, str], dict[dt.date, pl.DataFrame]]:
    """Tail bins (ordered by symbol, offset, time) by (symbol, offset) and file period."""
    out: dict[tuple[str, str], dict[dt.date, pl.DataFrame]] = {}
    if bins.height == 0:
        return out
    pid = _period_ids(bins["candle_begin_time"].dt.epoch("ms").to_numpy(), target)
    sym = bins["symbol"].to_numpy()
    off = bins["offset"].to_numpy()
    new = np.ones(bins.height, dtype=bool)
    new[1:] = (sym[1:] != sym[:-1]) | (off[1:] != off[:-1]) | (pid[1:] != pid[:-1])
    starts = np.flatnonzero(new).tolist()
    rows = bins.select(list(OFFSET_SCHEMA))
    for a, b in zip(starts, [*starts[1:], bins.height], strict=True):
        key = (str(sym[a]), str(off[a]))
        out.setdefault(key, {})[_period_date(int(pid[a]), target)] = rows.slice(a, b - a)
    return out


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What to do with one file: ``write`` (``data``), ``remove``, or nothing (``unchanged``/``none``)."""

    kind: str
    rel: str
    data: bytes = b""


_Pending: TypeAlias = "Future[list[_Outcome]] | _Outcome"  # encodings in the pool, or a removal
_Fingerprints: TypeAlias = dict[str, dict[str, str]]  # symbol -> partition -> packed day prints


def _period_files(
    lfs: LakeFS, part: OffsetPartition, new: pa.Table | None, w: _Work, tail: pl.DataFrame | None
) -> list[_Outcome]:
    """The new content of one period file (encoded, not written): its old bins outside ``[lo, hi)``
    (and before the tail start, when the series' tail is folded), the tail's bins of the period
    (``tail``: folded; an older lake's ``tail.parquet`` too, then removed), and ``new``."""
    stored = _read_period(lfs, part.path)
    # an older lake's per-period tail: only series with one (or recomputed whole) can have it
    check_legacy = w.legacy_from is not None or (w.lo is None and w.hi is None)
    legacy = _read_period(lfs, part.legacy_tail_path) if check_legacy else None
    has_tail = tail is not None and tail.height > 0
    if stored is None and legacy is None and not has_tail and new is not None:  # a new file: no merge
        return [_Outcome("write", part.path, _encode(new))]
    t = pl.col("candle_begin_time").dt.epoch("ms")
    old = []
    if stored is not None and stored.height:
        # from the tail start on, the tail is what counts (a fold cut short can have left bins here)
        old.append(stored if w.tail_start is None else stored.filter(t < w.tail_start))
    if legacy is not None:
        old.append(legacy)
    if tail is not None and has_tail:
        old.append(tail)
    if w.lo is None and w.hi is None:
        old = []  # everything recomputed
    elif w.lo is None or w.hi is None or w.lo < w.hi:
        inside = (t >= (_I64_MIN if w.lo is None else w.lo)) & (t < (_I64_MAX if w.hi is None else w.hi))
        old = [df.filter(~inside) for df in old]
    parts = [df for df in old if df.height]
    if new is not None and new.num_rows:
        parts.append(pl.DataFrame(pl.from_arrow(new)))
    merged = pl.concat(parts) if len(parts) > 1 else (parts[0] if parts else None)
    if merged is not None and len(parts) > 1 and not merged["candle_begin_time"].is_sorted():
        merged = merged.sort("candle_begin_time")
    out = [_Outcome("remove", part.legacy_tail_path)] if legacy is not None else []
    if merged is None or merged.height == 0:
        return [*out, _Outcome("none" if stored is None else "remove", part.path)]
    if stored is not None and legacy is None and stored.equals(merged):
        return [_Outcome("unchanged", part.path)]
    return [_Outcome("write", part.path, _encode(merged.to_arrow())), *out]


def _read_period(lfs: LakeFS, rel: str) -> pl.DataFrame | None:
    """One period file, or ``None`` if there is none. Decoded by pyarrow: ~0.9 ms for a 1h year,
    where Polars took ~2.5 ms on its byte-stream-split columns (a monthly fold decodes 3,600)."""
    try:
        if lfs.is_local:
            path = lfs.full(rel)
            if not os.path.exists(path):  # a stat; pyarrow takes ~5× as long to fail
                return None
            table = pq.ParquetFile(path).read(use_threads=False)  # callers run in a pool
        else:
            with lfs.fs.open(lfs.full(rel), "rb") as f:
                table = pq.ParquetFile(f).read(use_threads=False)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"unreadable offsets file {rel} ({exc}): move it away and run lake offsets again"
        ) from exc
    return pl.DataFrame(pl.from_arrow(table))


def _encode(table: pa.Table) -> bytes:
    """One offsets file: a single row group, no dictionaries (prices rarely repeat), ``_ENCODINGS``."""
    buf = pa.BufferOutputStream()
    pq.write_table(
        table,
        buf,
        compression=_CODECS,
        use_dictionary=False,
        column_encoding=_ENCODINGS,
        write_statistics=True,
        store_schema=False,
    )
    return bytes(buf.getvalue().to_pybytes())


def _remove_file(lfs: LakeFS, rel: str) -> bool:
    """Delete one partition file and, on a local disk, its then empty ``date=`` directory; whether
    it existed."""
    existed = lfs.exists(rel)
    lfs.remove(rel)
    if lfs.is_local:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(lfs.full(rel)))
    return existed


# -- reading -------------------------------------------------------------------------------------


def scan_offsets(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    offsets: str | Sequence[str] | None = None,
    symbols: str | Sequence[str] | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> pl.LazyFrame:
    """Lazily read the offsets table: columns ``symbol``, ``offset`` and ``OFFSET_SCHEMA``.

    The period files plus the visible bins of the tail, each bin once. The tail (small) is read
    when this is called, before the period files are listed; period files outside the offsets,
    symbols and ``[start, end)`` asked for are never opened.
    """
    lfs = to_lakefs(root)
    tdir = table_dir(trade_type, interval)
    want_offsets = None if offsets is None else set([offsets] if isinstance(offsets, str) else offsets)
    want_syms = None if symbols is None else set(validate_symbols(symbols))
    for t in (start, end):
        if t is not None and t.tzinfo is None:
            raise ValidationError(f"naive datetime {t!r}: pass a timezone-aware (UTC) datetime")
    lo = None if start is None else int(start.timestamp() * 1000)
    hi = None if end is None else int(end.timestamp() * 1000)
    columns = ["symbol", "offset", *OFFSET_SCHEMA]
    tail = offsets_tail.load_state(lfs, trade_type, interval).read_bins(lfs, want_syms, want_offsets, lo, hi)
    files: list[str] = []
    for odir in lfs.listdir(tdir):
        if not odir.startswith("offset=") or (want_offsets is not None and odir[7:] not in want_offsets):
            continue
        for sdir in lfs.listdir(f"{tdir}/{odir}"):
            if not sdir.startswith("symbol=") or (want_syms is not None and sdir[7:] not in want_syms):
                continue
            for ddir in lfs.listdir(f"{tdir}/{odir}/{sdir}"):
                if not _is_date_dir(ddir):
                    continue
                part = OffsetPartition(
                    trade_type, interval, odir[7:], sdir[7:], dt.date.fromisoformat(ddir[5:])
                )
                if (hi is not None and part.start_ms >= hi) or (lo is not None and part.end_ms <= lo):
                    continue
                names = set(lfs.listdir(f"{tdir}/{odir}/{sdir}/{ddir}"))
                pairs = ((part.path, DATA_FILE), (part.legacy_tail_path, LEGACY_TAIL_FILE))
                files.extend(lfs.url(p) for p, f in pairs if f in names)
    parts = [tail.lazy().select(columns)] if tail.height else []
    if files:
        lf = pl.scan_parquet(
            files,
            hive_partitioning=True,
            hive_schema=_OFFSETS_HIVE,
            glob=False,
            storage_options=lfs.storage_options or None,
        )
        if start is not None:
            lf = lf.filter(pl.col("candle_begin_time") >= start)
        if end is not None:
            lf = lf.filter(pl.col("candle_begin_time") < end)
        parts.insert(0, lf.select(columns))
    if not parts:
        return pl.LazyFrame(schema={"symbol": pl.String, "offset": pl.String, **OFFSET_SCHEMA})
    return pl.concat(parts) if len(parts) > 1 else parts[0]


def _is_date_dir(name: str) -> bool:
    """``date=YYYY-MM-DD`` (anything else in a series directory is ignored)."""
    if not name.startswith("date=") or len(name) != 15:
        return False
    try:
        dt.date.fromisoformat(name[5:])
    except ValueError:
        return False
    return True


def _fingerprints(
    df: pl.DataFrame, base: Interval, symbols: Sequence[str], hashes: _Hashes | None = None
) -> _Fingerprints:
    """Per symbol, per base partition: a fingerprint of each UTC day's rows (values included) and the
    open time of its last candle, packed (``pack_days``); ``hashes``, if given, receives the rows'
    hashes.

    ``df`` has the series' index in ``symbols`` as ``_sym``, ordered by series. Fingerprints only ever
    compare with ones this code wrote; a Polars upgrade that changes row hashing makes every day look
    changed once (a full recompute), never a day look unchanged.
    """
    out: _Fingerprints = {}
    if df.height == 0:
        return out
    # whole series at a time, about _CHUNK_ROWS rows each: arrays that fresh would cost more in page
    # faults than in arithmetic (a cold incremental run spent 0.3 s of system time in them)
    sym = df["_sym"].to_numpy()
    cuts = [0]
    for at in (np.flatnonzero(sym[1:] != sym[:-1]) + 1).tolist():
        if at - cuts[-1] >= _CHUNK_ROWS:
            cuts.append(at)
    cuts.append(df.height)
    for a, b in itertools.pairwise(cuts):
        h = _fingerprint_rows(df.slice(a, b - a), base, symbols, out)
        if hashes is not None:
            hashes.chunks.append((a, h))
    return out


def _print(hash_sum: int, rows: int) -> int:
    """A day's fingerprint from the wrapped uint64 sum of its rows' hashes and their number."""
    return (hash_sum ^ (rows << 1)) & ((1 << 63) - 1)


def _fingerprint_rows(
    df: pl.DataFrame, base: Interval, symbols: Sequence[str], out: _Fingerprints
) -> np.ndarray:
    """Fingerprints of the rows of whole series into ``out``; returns the rows' hashes (in their order)."""
    cols = [c for c in OFFSET_SCHEMA if c != "n_base"]
    # integer day numbers, not calendar truncation on every row; rows come ordered by (series, time),
    # so a day's rows are one run and the hashes are summed per run (uint64 sums wrap, as Polars' do)
    code = df["_sym"].to_numpy().astype(np.int64)
    t = df["candle_begin_time"].to_physical().to_numpy()  # ms since the epoch
    day = t // MS_PER_DAY
    h = row_hashes = df.select(cols).hash_rows(seed=17).to_numpy()
    if len(t) > 1 and not np.all((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (t[1:] > t[:-1]))):
        order = np.lexsort((t, code))  # by series, then time
        code, t, day, h = code[order], t[order], day[order], h[order]
    key = code * (1 << 32) + day
    starts = np.flatnonzero(np.diff(key, prepend=key[0] - 1))
    ends = np.append(starts[1:], len(key))
    sums = np.add.reduceat(h, starts)
    counts = (ends - starts).astype(np.uint64)
    prints = ((sums ^ (counts << np.uint64(1))) & np.uint64((1 << 63) - 1)).astype(np.int64)
    codes, days, lasts = code[starts], day[starts], t[ends - 1]
    # the base partition of each day, and runs of days of one (series, partition)
    unit = {"day": "D", "month": "M", "year": "Y"}[partition_period(base)]
    part = days.astype("datetime64[D]").astype(f"datetime64[{unit}]").astype("datetime64[D]")
    new = np.ones(len(days), dtype=bool)
    new[1:] = (codes[1:] != codes[:-1]) | (part[1:] != part[:-1])
    runs = np.flatnonzero(new).tolist()
    for a, b in zip(runs, [*runs[1:], len(days)], strict=True):
        packed = pack_days(days[a:b], prints[a:b], lasts[a:b])
        out.setdefault(symbols[int(codes[a])], {})[str(part[a])] = packed
    return row_hashes


@functools.lru_cache(maxsize=4096)
def _span(base: Interval, date: str) -> tuple[int, int]:
    """``[start, end)`` in ms of the base partition ``date=<date>``."""
    d = dt.date.fromisoformat(date)
    return _day_ms(d), _day_ms(partition_end(base, d))


def _day_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
