"""Build the offsets table from the klines table, incrementally, and read it back.

A build compares each base partition's change token (``LakeFS.mtime_key``) with the manifest of the
previous run (lake/transform/manifest.py) and recomputes only the bins that can see a changed
partition: for a change inside ``[a, b)`` the bins opening in ``[a − (T − B), b)``, from base
candles in ``[a − (T − B), b + T − B)`` (from ``a − T`` for an ``a`` off the grid of bin starts). A
change that only appends candles (or lies in the series' tail) is a *tail run*: the bins opening
from ``a − (T − B)`` on go, for every symbol of the run at once, into one new file of the offsets
tail (lake/transform/tail.py) and the period files stay as they are. Any other change is merged into
the period files (``data.parquet``: read, merge, compare, write atomically), folding the series'
tail into them. A file whose content would not change is not written, so a second run writes nothing
(docs/offsets.md, "Incremental"). Planning, which decides per series what to recompute, is
lake/transform/planning.py.

Work runs in batches of symbols (about ``batch_rows`` base rows each), so memory stays bounded
whatever the size of the lake, as a pipeline: a reader thread reads and fingerprints the next batch,
the calling thread resamples this one (in cache-sized chunks) while a pool encodes its files, and a
writer thread writes the previous batch with ``LakeFS.write_atomic_many`` (each file atomic, two
file-system syncs per batch, not two per file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
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
from lake.store.fs import LakeFS, Payload
from lake.store.klines import TimeLike, as_utc, collect_named, existing_lake, list_series, to_lakefs
from lake.store.paths import DATA_FILE, PartitionKey, is_date_dir, partition_period
from lake.transform import tail as offsets_tail
from lake.transform.layout import (
    LEGACY_TAIL_FILE,
    OffsetPartition,
    offsets_period,
    table_dir,
)
from lake.transform.layout import series_dir as offsets_series_dir
from lake.transform.manifest import (
    Series,
    load_manifest,
    save_manifest,
)
from lake.transform.offsets import (
    OffsetPlan,
    Resampled,
    check_target,
    format_offset,
    offset_plan,
    parse_duration_ms,
    resample_arrays,
    with_confirmed_empty,
)
from lake.transform.planning import (
    CHUNK_ROWS,
    Fingerprints,
    Tally,
    Work,
    _data_end,
    _Rows,
    _span,
    base_footers,
    fingerprints,
    plan_all,
    read_since_coded,
    scan_coded,
)
from lake.transform.tail import BIN_SCHEMA, GRACE_S, Layer, TailState, arrow_column, numpy_frame

__all__ = ["BuildResult", "build_offsets", "default_base", "offsets_symbols", "scan_offsets"]

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
_FILES = (DATA_FILE, LEGACY_TAIL_FILE)
# A run writes its tail bins as one file, or one per this many bins (memory stays bounded).
_LAYER_ROWS = 2_000_000
_MS = {"candle_begin_time": pa.timestamp("ms", "UTC")}
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
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
    removed: int = 0  # files deleted (bins that no longer exist), tail files retired or deleted
    tail_bins: int = 0  # bins written to the tail
    folded: int = 0  # series whose tail was folded into their period files
    base_rows_read: int = 0  # base candles read (planning and computing together)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_base(lfs: LakeFS, trade_type: str, target: Interval, symbols: Sequence[str] | None) -> str:
    """The coarsest stored kline interval that divides ``target`` at least twice (5m for 1h, …)."""
    stored = {iv for tt, iv, sym in list_series(lfs) if tt == trade_type and (not symbols or sym in symbols)}
    check_target(target)
    assert target.ms is not None
    fits = [
        iv
        for iv in INTERVALS.values()
        if iv.name in stored and iv.ms and iv.ms < target.ms and target.ms % iv.ms == 0
    ]
    if not fits:
        have = ", ".join(sorted(stored)) or "none"
        if not symbols:
            raise NotFoundError(
                f"no stored {trade_type} klines to build {target.name} offsets from (stored intervals: {have})"
            )
        # a symbol the lake does not hold must not read as a market with nothing stored
        market = sorted({iv for tt, iv, _ in list_series(lfs) if tt == trade_type})
        scope = ", ".join(symbols)
        raise NotFoundError(
            f"no stored {trade_type} klines of {scope} to build {target.name} offsets from (stored "
            f"intervals of {scope}: {have}; of any {trade_type} symbol: {', '.join(market) or 'none'})"
        )
    return max(fits, key=lambda iv: iv.ms or 0).name


def build_offsets(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    *,
    base: str | None = None,
    offsets: str | Sequence[str] | None = "all",
    method: str | None = None,
    symbols: str | Sequence[str] | None = None,
    missing_ok: bool = False,
    rebuild: bool = False,
    fold: bool = False,
    batch_rows: int = 2_000_000,
    workers: int = 4,
    tail_grace_s: float = GRACE_S,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Bring the offsets table of (``trade_type``, ``interval``) up to date with the klines table.

    ``base`` defaults to the one the series were built from, else the coarsest stored interval that
    divides ``interval``; ``method`` likewise to theirs, else ``seed``. Offsets built earlier stay
    maintained alongside the requested ones. A series built with another base or method is an error
    unless ``rebuild`` (which recomputes it from scratch and deletes its old offsets). ``fold`` moves the tail of every series looked at into its
    period files now (otherwise a series' tail is folded when it grows past about a month). Tail
    files no longer needed are deleted ``tail_grace_s`` after that, so that a query which listed
    them just before can still read them. ``progress(done, total)`` is called per batch of symbols.
    A symbol of ``symbols`` with neither base klines nor offsets is a ``NotFoundError`` (a typo),
    unless ``missing_ok``.
    """
    started = time.perf_counter()
    lfs = to_lakefs(root)
    tt = get_trade_type(trade_type)
    target = parse_interval(interval, spot=tt.is_spot)
    syms = validate_symbols(symbols) if symbols else None
    # a bad combination fails before the lock (and its file) is taken
    if base is not None:
        offset_plan(target, parse_interval(base, spot=tt.is_spot), offsets, method or "seed")
    else:
        check_target(target)
    with lfs.lock(table_dir(tt.name, target.name)):
        manifest = load_manifest(lfs, tt.name, target.name)
        tail = offsets_tail.load_state(lfs, tt.name, target.name)  # an unreadable file stops here
        if base is None:
            built = {manifest[s].base for s in (syms or manifest) if s in manifest}
            if not built and manifest:  # only series not built yet: the table's base, if they have it
                table = {st.base for st in manifest.values()}
                held = {iv for t, iv, s in list_series(lfs) if t == tt.name and (not syms or s in syms)}
                built = table if len(table) == 1 and table <= held else set()
            base = built.pop() if len(built) == 1 else default_base(lfs, tt.name, target, syms)
        if method is None:
            used = {manifest[s].method for s in (syms or manifest) if s in manifest}
            if not used:  # only series not built yet (a new listing live noted): the table's method
                used = {st.method for st in manifest.values() if st.base == base}
            method = used.pop() if len(used) == 1 else "seed"
        plan = offset_plan(target, parse_interval(base, spot=tt.is_spot), offsets, method)
        if syms is None or not missing_ok:  # (a listing: live's frequent builds skip it)
            listed = {s for t, iv, s in list_series(lfs) if t == tt.name and iv == plan.base.name}
        if syms is None:
            syms = sorted(listed | {s for s, st in manifest.items() if st.base == plan.base.name})
        elif not missing_ok:  # a typo would otherwise be a run that did nothing, reported as done
            unknown = [s for s in syms if s not in listed and s not in manifest]
            if unknown:
                raise NotFoundError(
                    f"no stored {tt.name} {plan.base.name} klines of {', '.join(unknown)} to build "
                    f"{target.name} offsets from ({len(listed)} symbols hold them)"
                )
        by_offsets: dict[tuple[int, ...], list[Work]] = {}
        tally = Tally()
        for w, ks in plan_all(lfs, tt.name, plan, syms, manifest, rebuild, fold, tail.starts, workers, tally):
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
        base_rows_read=tally.rows + run.rows_read,
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
        self.rows_read = 0  # base candles read here (planning counts its own)
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
        self.deferred: list[tuple[OffsetPlan, Work, dict[str, str]]] = []

    def execute(self, jobs: list[tuple[OffsetPlan, list[Work]]], workers: int, grace_s: float) -> None:
        total = sum(len(batch) for _, batch in jobs)
        if jobs:
            offsets_tail.ensure_tail(self.lfs, self.trade_type, self.interval)
        last_save = time.monotonic()
        writes: deque[tuple[OffsetPlan, list[Work], Fingerprints, Future[list[_Outcome]]]] = deque()
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
        self, plan: OffsetPlan, batch: list[Work]
    ) -> tuple[pl.DataFrame, Fingerprints, pl.DataFrame | None]:
        # Series whose fingerprints _record takes from planning or the manifest need neither footers
        # nor hashing. For the others, the day fingerprints their files carry (lake.store.dayprints)
        # spare hashing the rows, read before the rows: should a file change in between, the
        # manifest records the older fingerprints and the next run recomputes, never the other way
        # round. (Locally only: on an object store a request per file costs more than hashing.)
        known = {i for i, w in enumerate(batch) if not w.tail and set(w.read) <= self._planned(w).keys()}
        footed: dict[int, dict[str, str]] = {}
        if self.lfs.is_local and partition_period(plan.base) != "day":  # a day's file has none
            full = [i for i, w in enumerate(batch) if not w.tail and w.read and i not in known]
            series = [(batch[i].symbol, batch[i].read) for i in full]
            for i, got in zip(
                full, base_footers(self.lfs, self.trade_type, plan.base, series, 4), strict=True
            ):
                if got is not None:
                    footed[i] = got
        base = _read_base(self.lfs, self.trade_type, plan, batch)
        self.rows_read += base.height - sum(r.b - r.a for w in batch for r in w.cached.values())
        # A run recomputing [lo, hi) planned it from the base as planning saw it: candles another
        # writer (a live feed) appended since are left to the next run, which takes them as an
        # append. Used here, they completed bins in the period files that the next run's tail layer
        # held a second time (a live 1s feed's builds met it every few runs).
        ends = {i: w.data_end for i, w in enumerate(batch) if not w.tail and w.lo is not None and w.data_end}
        # Likewise a series whose fingerprints come from its footers, read before its rows (a build
        # of every bin: planning saw only change tokens), uses no candle past the last one they
        # describe. A candle appended in between completed a period-file bin while the manifest
        # recorded the older fingerprints, and the next run's tail layer held that bin again (the
        # first build of `lake live --offsets` from a month or year base, racing its compaction).
        for i, got in footed.items():
            end_ = _data_end(got, plan.base)
            if end_ is not None:
                ends[i] = min(ends.get(i, end_), end_)
        if ends:
            end = pl.col("_sym").replace_strict(ends, default=None, return_dtype=pl.Int64)
            base = base.filter(end.is_null() | (pl.col("candle_begin_time").dt.epoch("ms") < end))
        # a tail run's partitions were fingerprinted at planning (or did not change), and are read
        # from its lo on only
        skip = [i for i, w in enumerate(batch) if w.tail] + sorted(known) + list(footed)
        rows = base.filter(~pl.col("_sym").is_in(skip)) if skip else base
        prints = fingerprints(rows, plan.base, [w.symbol for w in batch])
        prints.update({batch[i].symbol: got for i, got in footed.items()})
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
        batch: list[Work],
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
                    listed = {dt.date.fromisoformat(e[5:]) for e in lfs.listdir(sdir) if is_date_dir(e)}
                else:
                    listed = set(known)
                for p in sorted(listed | new.keys() | old.keys()):
                    part = OffsetPartition(tt, iv, name, w.symbol, p)
                    if w.touches(part.start_ms, part.end_ms):
                        futures.append(pool.submit(_period_files, lfs, part, new.get(p), w, old.get(p)))
            for name in w.drop_offsets:
                sdir = offsets_series_dir(tt, iv, name, w.symbol)
                for e in lfs.listdir(sdir):
                    if is_date_dir(e):
                        futures.extend(_Outcome("remove", f"{sdir}/{e}/{f}") for f in _FILES)
        return futures

    def _finish(
        self,
        plan: OffsetPlan,
        batch: list[Work],
        fingerprints: Fingerprints,
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

    def _record(self, plan: OffsetPlan, w: Work, prints: dict[str, str]) -> None:
        """Enter a series in the manifest: its change tokens and day fingerprints as planned.

        A run that recomputes every bin (``lo`` is None) records the fingerprints of the rows it
        read. One that recomputes only ``[lo, hi)`` planned that range from the partitions as
        planning saw them, and may have read them later, after another writer changed a day outside
        the range: it records what planning saw (or the manifest's record of a partition whose token
        had not changed), so that the next run finds such a change. Its own reads count only for
        partitions with no such record, whose bins it recomputed whole."""
        days = {d: v for d, v in {**prints, **self._planned(w)}.items() if d in w.tokens}
        empty = None if w.empty is None else [[a, b] for a, b in w.empty]
        self.manifest[w.symbol] = Series(plan.base.name, plan.method, plan.names, w.tokens, days, empty=empty)
        self.dirty = True

    def _planned(self, w: Work) -> dict[str, str]:
        """The day fingerprints ``_record`` takes for ``w`` without its rows: planning's, and the
        manifest's of partitions whose token had not changed; none for a run recomputing every bin."""
        old = self.manifest.get(w.symbol)
        if w.lo is None or old is None:
            return dict(w.days)
        days = {d: v for d, v in old.days.items() if w.tokens.get(d) == old.partitions.get(d)}
        days.update(w.days)
        return days

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


def _batches(items: list[Work], batch_rows: int, plan: OffsetPlan) -> Iterator[list[Work]]:
    """Groups of series of about ``batch_rows`` base rows (estimated from partition counts, or known
    for a tail run's cached rows), and at most ``_BATCH_SYMBOLS`` series that rewrite period files (a
    batch's encoded files wait in memory for their write). Tail runs write a few small files per
    series, so up to ``_TAIL_BATCH_SYMBOLS`` of them share a batch and its two file-system syncs."""
    days = {"day": 1, "month": 31, "year": 366}[partition_period(plan.base)]
    per_partition = days * MS_PER_DAY // plan.base_ms
    batch: list[Work] = []
    rows = weight = 0
    for w in items:
        batch.append(w)
        rows += sum(r.b - r.a for r in w.cached.values())
        for a, b in (_span(plan.base, d) for d in w.unread):
            # a tail run reads from lo on only (the last hour of a month, say)
            start = a if not w.tail or w.lo is None else max(a, w.lo)
            rows += min(per_partition, max(0, (b - start) // plan.base_ms))
        weight += _BATCH_SYMBOLS if w.tail else _TAIL_BATCH_SYMBOLS
        if rows >= batch_rows or weight >= _BATCH_SYMBOLS * _TAIL_BATCH_SYMBOLS:
            yield batch
            batch, rows, weight = [], 0, 0
    if batch:
        yield batch


# -- one batch -----------------------------------------------------------------------------------


def _read_base(lfs: LakeFS, trade_type: str, plan: OffsetPlan, batch: list[Work]) -> pl.DataFrame:
    """The base candles a batch needs: ``_sym`` (the series' index in ``batch``) and the kline value
    columns, ordered by series then time (rows of another writer's unsorted file read alone are
    not: ``_resample_batch`` sorts what is not). A tail run needs the candles from its ``lo`` on
    only (its partitions' fingerprints are known from planning): planning's rows where it read them,
    the rest from ``lo`` on, lake's own files page by page (``read_since_coded``). The last hour of the month
    before an appended first of a month (300 series) costs ~0.07 s so, where Polars' filtered scan
    of both months took ~0.25 s."""
    ranges = [(i, r) for i, w in enumerate(batch) for r in w.cached.values() if r.b > r.a]
    scans = []
    read: list[str] = []  # the files the scans read (to name a damaged one)
    if ranges:
        scans.append(_cached_rows(ranges).lazy())
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
            if w.tail == tail
            for d in w.unread
        ]
        if not files:
            continue
        read += [f for f, _ in files]
        if tail:  # from a constant bound on: lake's own files page by page, the others filtered by Polars
            lo = min(batch[i].lo or 0 for _, i in files)
            scans.append(read_since_coded(lfs, [f for f, _ in files], lo, [i for _, i in files]).lazy())
        else:
            scans.append(scan_coded(lfs, [f for f, _ in files], [i for _, i in files]))
    if not scans:
        return pl.DataFrame(schema={"_sym": pl.UInt32, **OFFSET_SCHEMA}).drop("n_base")
    out = collect_named(lfs, pl.concat(scans), lambda: read)
    return out if len(scans) == 1 else out.sort("_sym", "candle_begin_time")


def _cached_rows(ranges: list[tuple[int, _Rows]]) -> pl.DataFrame:
    """The rows planning read for a batch (``(series index, rows)``, in batch order) with ``_sym``.
    Consecutive rows of one frame (an appended day: every series' rows, back to back) are one slice
    of it: a slice per series cost ~30 ms for 300 series. ``_sym`` comes from Arrow: a Series from
    NumPy imports ``numpy.ma`` (7–12 ms of an appended day's run)."""
    lengths = [r.b - r.a for _, r in ranges]
    code = np.repeat(np.array([i for i, _ in ranges], np.uint32), lengths)
    runs: list[tuple[pl.DataFrame, int, int]] = []
    for _, r in ranges:
        if runs and runs[-1][0] is r.frame and runs[-1][2] == r.a:
            runs[-1] = (r.frame, runs[-1][1], r.b)
        else:
            runs.append((r.frame, r.a, r.b))
    parts = [frame.slice(a, b - a) for frame, a, b in runs]
    rows = pl.concat(parts, rechunk=True) if len(parts) > 1 else parts[0]
    rows.insert_column(0, numpy_frame({"_sym": code}, {"_sym": pa.uint32()}).to_series())
    return rows


def _resample_batch(base: pl.DataFrame, plan: OffsetPlan, batch: list[Work]) -> list[Resampled]:
    """All offsets of a batch's series, restricted to the bins each series recomputes, in chunks of
    whole series of about ``CHUNK_ROWS`` base rows (working arrays that stay in cache and are reused
    by the allocator, instead of fresh gigabyte-sized ones: ~1.5-8× faster)."""
    sym = base["_sym"].to_numpy().astype(np.int64)
    t = base["candle_begin_time"].dt.epoch("ms").to_numpy()
    if len(t) > 1 and not np.all((sym[1:] > sym[:-1]) | ((sym[1:] == sym[:-1]) & (t[1:] > t[:-1]))):
        base = base.sort("_sym", "candle_begin_time")
        sym = base["_sym"].to_numpy().astype(np.int64)
        t = base["candle_begin_time"].dt.epoch("ms").to_numpy()
    values = {c: base[c].to_numpy() for c in OFFSET_SCHEMA if c not in ("candle_begin_time", "n_base")}
    real = None
    empty = {i: w.empty for i, w in enumerate(batch) if w.empty}
    if plan.method == "binance" and empty:
        sym, t, values, real = with_confirmed_empty(sym, t, values, plan, empty)
    restrict = not all(w.lo is None and w.hi is None for w in batch)
    lo = np.array([_I64_MIN if w.lo is None else w.lo for w in batch], dtype=np.int64)
    hi = np.array([_I64_MAX if w.hi is None else w.hi for w in batch], dtype=np.int64)
    cuts = [0]
    for at in np.flatnonzero(np.diff(sym)).tolist():
        if at + 1 - cuts[-1] >= CHUNK_ROWS:
            cuts.append(at + 1)
    cuts.append(len(t))
    out = []
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        r = resample_arrays(
            sym[a:b],
            t[a:b],
            {c: v[a:b] for c, v in values.items()},
            plan,
            None if real is None else real[a:b],
        )
        if restrict and len(r):
            keep = (r.start >= lo[r.sym]) & (r.start < hi[r.sym])
            r = Resampled(
                r.which[keep], r.sym[keep], r.start[keep], {c: v[keep] for c, v in r.columns.items()}
            )
        if len(r):
            out.append(r)
    return out


def _split_files(
    chunks: list[Resampled], plan: OffsetPlan, batch: list[Work]
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


def _layer_rows(chunks: list[Resampled], plan: OffsetPlan, batch: list[Work]) -> pl.DataFrame:
    """Tail-run bins as rows of a tail file (``BIN_SCHEMA``)."""
    if not chunks:
        return pl.DataFrame(schema=BIN_SCHEMA)
    symbols = pl.Series([w.symbol for w in batch], dtype=pl.String)
    offsets = pl.Series(plan.names, dtype=pl.String)
    frames = []
    for r in chunks:
        values = {c: r.columns[c] for c in OFFSET_SCHEMA if c != "candle_begin_time"}
        f = numpy_frame({"_s": r.sym, "_o": r.which, "candle_begin_time": r.start, **values}, _MS)
        sym, off = symbols.gather(f["_s"]).alias("symbol"), offsets.gather(f["_o"]).alias("offset")
        frames.append(f.select(sym, off, "candle_begin_time", *values))
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
    data: Payload = b""


_Pending: TypeAlias = "Future[list[_Outcome]] | _Outcome"  # encodings in the pool, or a removal


def _period_files(
    lfs: LakeFS, part: OffsetPartition, new: pa.Table | None, w: Work, tail: pl.DataFrame | None
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
                # pre_buffer=False: read on this thread, as in tail._read_meta (Arrow's IO pool
                # releasing a buffer of this Python file at interpreter exit aborts the process)
                table = pq.ParquetFile(f, pre_buffer=False).read(use_threads=False)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(
            f"unreadable offsets file {rel} ({exc}): move it away and run lake offsets again"
        ) from exc
    return pl.DataFrame(pl.from_arrow(table))


def _encode(table: pa.Table) -> memoryview:
    """One offsets file: a single row group, no dictionaries (prices rarely repeat), ``_ENCODINGS``.
    A view of the encoder's buffer, written as it is (no copy into a ``bytes``)."""
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
    return memoryview(buf.getvalue()).cast("B").toreadonly()  # compares as bytes do


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
    start: TimeLike | None = None,
    end: TimeLike | None = None,
) -> pl.LazyFrame:
    """Lazily read the offsets table: columns ``symbol``, ``offset`` and ``OFFSET_SCHEMA``.

    The period files plus the visible bins of the tail, each bin once. The tail (small) is read
    when this is called, before the period files are listed; period files outside the offsets,
    symbols and ``[start, end)`` asked for are never opened. ``start``/``end``: aware datetimes,
    dates or ISO strings (UTC). An offset the table does not hold (or offsets asked of a table not
    built yet) is a ``NotFoundError`` naming those it has: an empty frame would look like missing
    data. Without ``offsets``, a table not built yet is an empty frame. A local ``root`` path that
    does not exist is a ``NotFoundError``.
    """
    lfs = existing_lake(root)
    tdir = table_dir(trade_type, interval)
    asked = (
        None
        if offsets is None
        else {o: _offset_aliases(o) for o in ([offsets] if isinstance(offsets, str) else offsets)}
    )
    want_offsets = None if asked is None else set().union(*asked.values())
    want_syms = None if symbols is None else set(validate_symbols(symbols))
    start, end = as_utc(start, name="start"), as_utc(end, name="end")
    lo = None if start is None else int(start.timestamp() * 1000)
    hi = None if end is None else int(end.timestamp() * 1000)
    columns = ["symbol", "offset", *OFFSET_SCHEMA]
    tail = offsets_tail.load_state(lfs, trade_type, interval).read_bins(lfs, want_syms, want_offsets, lo, hi)
    files: list[str] = []
    odirs = lfs.listdir(tdir)
    if asked is not None:
        have = {d[7:] for d in odirs if d.startswith("offset=")} | set(tail["offset"].unique().to_list())
        unknown = sorted(o for o, names in asked.items() if not names & have)
        if unknown and have:
            raise NotFoundError(
                f"offset(s) {', '.join(unknown)} not in the {trade_type} {interval} offsets table; it holds "
                + ", ".join(sorted(have, key=_offset_sort_key))
            )
        if unknown:
            raise NotFoundError(
                f"no {trade_type} {interval} offsets in the lake yet: run "
                f"`lake offsets --type {trade_type} --interval {interval}`"
            )
    for odir in odirs:
        if not odir.startswith("offset=") or (want_offsets is not None and odir[7:] not in want_offsets):
            continue
        for sdir in lfs.listdir(f"{tdir}/{odir}"):
            if not sdir.startswith("symbol=") or (want_syms is not None and sdir[7:] not in want_syms):
                continue
            for ddir in lfs.listdir(f"{tdir}/{odir}/{sdir}"):
                if not is_date_dir(ddir):
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


def offsets_symbols(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    offsets: Iterable[str] | None = None,
) -> set[str]:
    """The symbols the offsets table holds a period file or a visible tail bin of (of ``offsets``,
    under any of their names, or of any offset): from listings and the tail alone, without opening
    a period file, so it costs the same for a year of history as for a day."""
    lfs = existing_lake(root)
    tdir = table_dir(trade_type, interval)
    want = None if offsets is None else set().union(*(_offset_aliases(o) for o in offsets))
    tail = offsets_tail.load_state(lfs, trade_type, interval).read_bins(lfs, None, want)
    out = set(tail["symbol"].unique().to_list())
    for odir in lfs.listdir(tdir):
        if not odir.startswith("offset=") or (want is not None and odir[7:] not in want):
            continue
        for sdir in lfs.listdir(f"{tdir}/{odir}"):
            if not sdir.startswith("symbol=") or sdir[7:] in out:
                continue
            for ddir in lfs.listdir(f"{tdir}/{odir}/{sdir}"):
                # (a partition emptied by a rebuild may leave its directory behind)
                if is_date_dir(ddir) and {DATA_FILE, LEGACY_TAIL_FILE} & set(
                    lfs.listdir(f"{tdir}/{odir}/{sdir}/{ddir}")
                ):
                    out.add(sdir[7:])
                    break
    return out


def _offset_aliases(name: str) -> set[str]:
    """The names an offset asked of ``scan_offsets`` may be stored under: its canonical one (``90m``
    is stored as ``1h30m``, as ``lake offsets --offsets 90m`` names it), and for zero the zero of
    every unit (``0m`` for a 5m base, ``0h`` for 1h: one table holds one of them)."""
    try:
        ms = parse_duration_ms(name)
    except ValidationError:
        return {name}
    return {f"0{u}" for u in "smhd"} if ms == 0 else {format_offset(ms)}


def _offset_sort_key(name: str) -> tuple[int, str]:
    try:
        return parse_duration_ms(name), name
    except ValidationError:
        return 0, name
