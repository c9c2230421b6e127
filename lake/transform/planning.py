"""Planning an offsets build: what each series must recompute, from its base partitions' changes.

For every series the base partitions are listed with their change tokens (``LakeFS.mtime_key``) and
compared with the manifest of the previous run. The partitions that changed are read (in scans of
about ``_PLAN_PARTITIONS`` partitions) and each UTC day of their rows is fingerprinted (a wrapped sum
of row hashes and the day's last open time, ``pack_days``), so that an edit can be told from an
append and located to the day: the result is one ``Work`` per series (lake/transform/build.py runs
them), with the range of bins to recompute, whether it is a *tail run*, and the rows planning has
already read.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np
import polars as pl
import pyarrow as pa

from lake.binance.intervals import MS_PER_DAY, Interval
from lake.errors import ValidationError
from lake.schema import OFFSET_SCHEMA
from lake.store.dayprints import changed_days, day_prints, last_open, pack_days, row_hashes
from lake.store.fs import LakeFS
from lake.store.klines import collect_named
from lake.store.meta import read_empty_ranges
from lake.store.parquet_plain import footer_prints
from lake.store.paths import (
    DATA_FILE,
    PartitionKey,
    is_date_dir,
    partition_end,
    partition_period,
    series_dir,
)
from lake.store.plain_read import read_since
from lake.transform.layout import offsets_period, period_end, period_start
from lake.transform.manifest import Series
from lake.transform.offsets import OffsetPlan
from lake.transform.tail import arrow_column

__all__ = [
    "CHUNK_ROWS",
    "Fingerprints",
    "Tally",
    "Work",
    "base_footers",
    "fingerprints",
    "plan_all",
    "read_footers",
    "read_since_coded",
    "scan_coded",
]

_FOOTER_THREADS = 8  # footer reads in flight (each a short wait when not cached)
_FOOTER_PROBE = 16  # footers read in turn before deciding whether they are in the page cache
_CACHED_FOOTER_S = 100e-6  # ... they are if they took at most this long each
_PLAN_PARTITIONS = 256  # changed base partitions planning reads in one scan (~2M rows of 5m)
# How far a series' tail may reach (from its start to the last base day) before a run folds it into
# the period files, by the period of those files: about 770 bins per offset and series either way.
_TAIL_MAX_MS = {"year": 32 * MS_PER_DAY, "month": 8 * MS_PER_DAY}
Fingerprints: TypeAlias = dict[str, dict[str, str]]  # symbol -> partition -> packed day prints
CHUNK_ROWS = 100_000


@dataclass(slots=True)
class Tally:
    """Base candles planning read (all its reads together)."""

    rows: int = 0


@dataclass(slots=True)
class Work:
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
    # method binance: the series' confirmed-empty ranges as planning read them (the run builds with
    # these and records them, so a range recorded meanwhile is the next run's change)
    empty: list[tuple[int, int]] | None = None
    # a tail run's base candles from ``lo`` on that planning read (no second read), by partition:
    # row ranges of planning's frames
    cached: dict[str, _Rows] = field(default_factory=dict)

    @property
    def unread(self) -> list[str]:
        """The partitions of ``read`` the run reads itself (those planning's rows do not hold)."""
        return [d for d in self.read if d not in self.cached]

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


def plan_all(
    lfs: LakeFS,
    trade_type: str,
    plan: OffsetPlan,
    syms: list[str],
    manifest: dict[str, Series],
    rebuild: bool,
    fold: bool,
    tail_starts: dict[str, int],
    workers: int,
    tally: Tally | None = None,
) -> Iterator[tuple[Work | None, tuple[int, ...]]]:
    """Plan every series: list and stat its base partitions, then read the changed ones in scans of
    about ``_PLAN_PARTITIONS`` partitions and fingerprint their days (not one read each)."""
    if lfs.is_local:  # a stat is microseconds: threads would only fight over the GIL (~20× slower)
        tokens = [_base_tokens(lfs, trade_type, plan.base.name, s) for s in syms]
    else:  # an object store answers in milliseconds: ask in parallel
        with ThreadPoolExecutor(max(1, workers)) as pool:
            tokens = list(pool.map(lambda s: _base_tokens(lfs, trade_type, plan.base.name, s), syms))
    names = {k: plan.name(k) for k in range(plan.n)}
    empties: list[list[tuple[int, int]] | None] = [None] * len(syms)
    if plan.method == "binance":  # (a small JSON file per series, in parallel on an object store)
        with ThreadPoolExecutor(1 if lfs.is_local else max(1, workers)) as pool:
            empties = list(pool.map(lambda s: _empty_ranges(lfs, trade_type, plan.base.name, s), syms))
    chunk: list[tuple[str, dict[str, str]]] = []
    wanted: list[tuple[str, str]] = []
    for i, (sym, tok) in enumerate(zip(syms, tokens, strict=True)):
        chunk.append((sym, tok))
        wanted += [(sym, d) for d in _to_read(manifest.get(sym), tok)]
        if len(wanted) >= _PLAN_PARTITIONS or i == len(syms) - 1:  # bounded memory
            read = _read_partitions(lfs, trade_type, plan, wanted, manifest, workers)
            if tally is not None:
                tally.rows += sum(r.b - r.a for _, r in read.values() if r is not None)
            for j, (s, t) in enumerate(chunk, start=i + 1 - len(chunk)):
                w, keys = _plan_series(
                    plan, names, s, manifest.get(s), rebuild, fold, t, read, tail_starts.get(s), empties[j]
                )
                if w is not None:
                    w.empty = empties[j]
                yield w, keys
            chunk, wanted = [], []


def _empty_ranges(lfs: LakeFS, trade_type: str, interval: str, symbol: str) -> list[tuple[int, int]]:
    return [(r.start_ms, r.end_ms) for r in read_empty_ranges(lfs, trade_type, interval, symbol)]


def _empty_changes(old: list[list[int]] | None, new: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges whose confirmed-empty state differs between two sets of (merged, sorted) ranges
    (``old`` None: not known, so every range of ``new`` counts)."""
    before = [(int(a), int(b)) for a, b in old or []]
    cuts = sorted({x for r in before + new for x in r})

    def inside(ranges: list[tuple[int, int]], x: int) -> bool:
        i = bisect.bisect_right(ranges, (x, float("inf"))) - 1  # the last range starting at or before x
        return i >= 0 and ranges[i][0] <= x < ranges[i][1]

    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        if inside(before, a) != inside(new, a):
            if out and out[-1][1] == a:
                out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
    return out


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
    from_ms: int | None = None  # the partition's rows from here on only (None: all of them)

    def since(self, t_ms: int) -> _Rows:
        at = self.a + int(np.searchsorted(self.times[self.a : self.b], t_ms))
        return _Rows(self.frame, self.times, self.hashes, at, self.b, self.from_ms)

    def first_after(self, t_ms: int, default: int) -> int:
        """The open time of the first of these rows opening after ``t_ms``, else ``default``."""
        times = self.times[self.a : self.b]
        i = int(np.searchsorted(times, t_ms, side="right"))
        return int(times[i]) if i < len(times) else default

    def covers(self, t_ms: int) -> bool:
        """Whether these are all of the partition's rows opening at or after ``t_ms``."""
        return self.from_ms is None or self.from_ms <= t_ms

    def fingerprint(self, start_ms: int, last_ms: int) -> int:
        """The fingerprint of the rows opening in ``[start_ms, last_ms]``, as of a day's rows."""
        times = self.times[self.a : self.b]
        i = self.a + int(np.searchsorted(times, start_ms, side="left"))
        j = self.a + int(np.searchsorted(times, last_ms, side="right"))
        return _print(self.hashes.sum(i, j), j - i)


@dataclass(slots=True)
class _Hashes:
    """Row hashes of a frame as chunks (first row, hashes), each a run of whole series; or the
    frame, hashed when first asked (an appended whole day never asks)."""

    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)
    pending: pl.DataFrame | None = None

    def sum(self, i: int, j: int) -> int:
        """The wrapped uint64 sum of the hashes of rows ``[i, j)`` (rows of one series)."""
        if self.pending is not None:
            self.chunks, self.pending = [(0, row_hashes(self.pending))], None
        at = bisect.bisect_right([a for a, _ in self.chunks], i) - 1
        a, h = self.chunks[at]
        return int(h[i - a : j - a].sum(dtype=np.uint64))


def _read_partitions(
    lfs: LakeFS,
    trade_type: str,
    plan: OffsetPlan,
    wanted: list[tuple[str, str]],
    manifest: dict[str, Series],
    workers: int,
) -> dict[tuple[str, str], tuple[str, _Rows | None]]:
    """Packed day fingerprints of changed base partitions (symbol, date), and their rows as far as
    planning needs them.

    A partition whose footer has its day fingerprints (``lake.store.dayprints``: the klines writer
    stores them) is read from its first changed day on only, less the reach of a bin: enough to tell
    an append inside a day from an edit, and to feed a tail run (the reader filters on time before
    it materialises the other columns). The others are read whole and fingerprinted here."""
    if not wanted:
        return {}
    paths = {
        sd: lfs.url(
            PartitionKey("klines", trade_type, plan.base.name, sd[0], dt.date.fromisoformat(sd[1])).path
        )
        for sd in wanted
    }
    footers = read_footers(lfs, [paths[sd] for sd in wanted], workers)
    reach = plan.target_ms - plan.base_ms
    out: dict[tuple[str, str], tuple[str, _Rows | None]] = {}
    whole: list[tuple[str, str]] = []
    cuts: dict[int, list[tuple[str, str]]] = {}
    for sd, prints in zip(wanted, footers, strict=True):
        if prints is None:
            whole.append(sd)
            continue
        state = manifest.get(sd[0])
        first = _first_change(prints, state.days.get(sd[1], "") if state is not None else "")
        out[sd] = (prints, None)
        if first is not None:
            cuts.setdefault(first * MS_PER_DAY - reach, []).append(sd)
    for cut, group in sorted(cuts.items()):
        frame = read_since_coded(lfs, [paths[sd] for sd in group], cut)
        for sd, rows in _split_rows(frame, group, cut).items():
            out[sd] = (out[sd][0], rows)
    if whole:
        files = [paths[sd] for sd in whole]
        frame = collect_named(lfs, scan_coded(lfs, files, list(range(len(whole)))), lambda: files)
        keys = [f"{i}" for i in range(len(whole))]  # one code per partition
        hashes = _Hashes()
        frame = _ordered(frame)
        found = fingerprints(frame, plan.base, keys, hashes)
        code = {sd: keys[i] for i, sd in enumerate(whole)}
        for sd, rows in _split_rows(frame, whole, None, hashes).items():
            out[sd] = (found.get(code[sd], {}).get(sd[1], ""), rows)
    return out


# the columns planning reads, as Arrow types (``scan_coded``'s, but for ``_sym``)
_ARROW = {
    c: pa.timestamp("ms", tz="UTC") if t == pl.Datetime else pa.float64() if t == pl.Float64 else pa.int64()
    for c, t in OFFSET_SCHEMA.items()
    if c != "n_base"
}
_NUMERIC = [c for c in _ARROW if c != "candle_begin_time"]


def read_since_coded(
    lfs: LakeFS, paths: list[str], cut: int, codes: Sequence[int] | None = None
) -> pl.DataFrame:
    """The rows of base partition files opening at or after ``cut`` (ms), with ``_sym`` (each file's
    code, by default its index in ``paths``), as ``scan_coded`` reads them: files in the order
    given (for codes that do not decrease along ``paths``), each file's rows in time order unless it
    is another writer's unsorted file read alone. Files of lake's writer on a local disk are read
    from the pages holding those rows only (``lake.store.plain_read``), the others by Polars."""
    code_of = list(codes) if codes is not None else list(range(len(paths)))
    since = pl.col("candle_begin_time") >= pl.lit(cut).cast(OFFSET_SCHEMA["candle_begin_time"])
    found: list[tuple[int, dict[str, np.ndarray]]] = []
    rest: list[int] = []
    for i, path in enumerate(paths):
        got = read_since(path, cut, _NUMERIC) if lfs.is_local else None
        if got is None:
            rest.append(i)
        else:
            found.append((i, got))
    frames = []
    if found:
        lengths = [len(got["candle_begin_time"]) for _, got in found]
        sym = np.repeat(np.array([code_of[i] for i, _ in found], dtype=np.uint32), lengths)
        arrays = [arrow_column(sym, pa.uint32())]
        # (np.concatenate copies, also a single array: the views read_since returns are unaligned)
        arrays += [
            arrow_column(np.concatenate([got[c] for _, got in found]), kind) for c, kind in _ARROW.items()
        ]
        frames.append(pl.DataFrame(pl.from_arrow(pa.Table.from_arrays(arrays, ["_sym", *_ARROW]))))
    if rest:
        files = [paths[i] for i in rest]
        frames.append(
            collect_named(
                lfs, scan_coded(lfs, files, [code_of[i] for i in rest]).filter(since), lambda: files
            )
        )
    if len(frames) == 1:
        return frames[0]
    # the fallback's rows came after the others: back in file order (another writer's files only)
    return pl.concat(frames).sort("_sym", "candle_begin_time")


def base_footers(
    lfs: LakeFS, trade_type: str, base: Interval, series: Sequence[tuple[str, Sequence[str]]], workers: int
) -> list[dict[str, str] | None]:
    """For each (symbol, partition dates): the day fingerprints in the footers of those base
    partitions, by date, or ``None`` unless every one of them has them."""
    urls = [
        lfs.url(PartitionKey("klines", trade_type, base.name, sym, dt.date.fromisoformat(d)).path)
        for sym, dates in series
        for d in dates
    ]
    found = iter(read_footers(lfs, urls, workers))
    out: list[dict[str, str] | None] = []
    for _, dates in series:
        got: dict[str, str] = {}
        for d in dates:
            prints = next(found)
            if prints is not None:
                got[d] = prints
        out.append(got if len(got) == len(dates) else None)
    return out


def read_footers(lfs: LakeFS, urls: Sequence[str], workers: int) -> list[str | None]:
    """The day fingerprints in the footers of parquet files (``_footer``), in order. Read in turn
    while they come from the page cache, else by a few threads: a footer not in the page cache (or
    on an object store) is a wait of its own, which a single thread would pay file after file (3,600
    of them: 0.8–1.2 s from disk, 0.28 s on 8 threads)."""
    if len(urls) < 64:
        return [_footer(lfs, u) for u in urls]
    done: list[str | None] = []
    if lfs.is_local:
        # a footer in the page cache costs ~15 µs read here, and a thread pool's hand-offs cost
        # more than 300 of them (12–18 ms of an appended day's run): threads only once footers
        # turn out to be waits (the first few take longer on average than a cached read can)
        t0 = time.perf_counter()
        done = [_footer(lfs, u) for u in urls[:_FOOTER_PROBE]]
        if time.perf_counter() - t0 < _FOOTER_PROBE * _CACHED_FOOTER_S:
            return done + [_footer(lfs, u) for u in urls[_FOOTER_PROBE:]]
        urls = urls[_FOOTER_PROBE:]
    threads = _FOOTER_THREADS if lfs.is_local else max(_FOOTER_THREADS, workers)
    step = -(-len(urls) // threads)  # one block of files per thread: cached footers cost ~15 µs each,
    blocks = [urls[i : i + step] for i in range(0, len(urls), step)]  # less than handing them out
    with ThreadPoolExecutor(threads) as pool:
        return done + [p for block in pool.map(lambda b: [_footer(lfs, u) for u in b], blocks) for p in block]


def _footer(lfs: LakeFS, url: str) -> str | None:
    """The day fingerprints in a base partition's footer (``None``: none, or not readable now; the
    partition is then read whole, which reports a real problem)."""
    try:
        if lfs.is_local:
            return footer_prints(url)
        with lfs.fs.open(url, "rb") as f:
            return footer_prints(f)
    except Exception:  # any failure falls back to reading the rows
        return None


def _first_change(new: str, old: str) -> int | None:
    """The first day (number) whose fingerprint differs between two packed sets, or ``None``."""
    changed = changed_days(new, old)
    return min(changed) if changed else None


def _ordered(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows by (``_sym``, time), as the lake writes them (a file not written by lake is sorted)."""
    # NumPy views of the two columns: the same test as a Polars expression took ~4 ms of an
    # appended day's run
    code = frame["_sym"].to_numpy()
    t = frame["candle_begin_time"].to_physical().to_numpy()
    if not np.all((code[1:] != code[:-1]) | (t[1:] > t[:-1])):
        frame = frame.sort("_sym", "candle_begin_time")
    return frame


def _split_rows(
    frame: pl.DataFrame,
    keys: list[tuple[str, str]],
    from_ms: int | None = None,
    hashes: _Hashes | None = None,
) -> dict[tuple[str, str], _Rows]:
    """The rows of each partition (``_sym``: its index in ``keys``) of one read, from ``from_ms`` on
    (``None``: all), with their hashes (computed here unless given)."""
    if frame.height == 0:
        return {}
    if hashes is None:
        frame = _ordered(frame)
        hashes = _Hashes(pending=frame)
    code = frame["_sym"].to_numpy()
    starts = [0, *(np.flatnonzero(code[1:] != code[:-1]) + 1).tolist()]
    ends = [*starts[1:], len(code)]
    rows = frame.drop("_sym")
    times = rows["candle_begin_time"].to_physical().to_numpy()  # ms since the epoch, no copy
    return {
        keys[int(code[a])]: _Rows(rows, times, hashes, a, b, from_ms)
        for a, b in zip(starts, ends, strict=True)
    }


def scan_coded(lfs: LakeFS, paths: list[str], codes: list[int]) -> pl.LazyFrame:
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
    prefetched: dict[tuple[str, str], tuple[str, _Rows | None]],
    tail_start: int | None,
    empty: list[tuple[int, int]] | None = None,
) -> tuple[Work | None, tuple[int, ...]]:
    drop: list[str] = []
    if state is not None and (state.base != plan.base.name or state.method != plan.method or rebuild):
        if not rebuild:
            raise ValidationError(
                f"{symbol} {plan.target.name} offsets were built from {state.base} with method "
                f"{state.method!r}; pass --rebuild to recompute them from {plan.base.name} with {plan.method!r}"
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
        return Work(
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
    # method binance: slots confirmed empty since the last run (or no longer) change the bins within
    # T of them, as a changed candle does
    spans: list[tuple[int, int]] = []
    if empty is not None and (state.empty is None or [list(r) for r in empty] != state.empty):
        spans = _empty_changes(state.empty, empty)
    if not changed and not spans:
        if legacy is None and not (fold and tail_start is not None):
            return None, keys
        # any run but a tail run folds the series' tail into its period files; this one only that
        w = Work(symbol, tokens, [], 0, 0, 0, tail_start=tail_start, legacy_from=legacy)
        w.data_end = old_end
        return w, keys
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
        for day, (n, o) in changed_days(new_days, old_days).items():
            start = day * MS_PER_DAY
            # candles added to a day (a live period): if its rows up to the old last candle are the
            # old ones, the change starts at the first candle after it (old_last + B on the grid;
            # earlier for a candle off the grid, which old_last + B would leave out)
            if n is not None and o is not None and stored is not None:
                (_, new_last), (old_print, old_last) = n, o
                added = new_last is not None and old_last is not None and new_last > old_last
                if added and old_last is not None and stored.fingerprint(start, old_last) == old_print:
                    start = stored.first_after(old_last, start)
            spans.append((start, (day + 1) * MS_PER_DAY))
    after = {d: known.get(d, state.days.get(d, "")) for d in tokens}
    end = _data_end(after, plan.base)
    data_end = max(end or 0, old_end or 0) or None
    if not spans:  # rewritten with the same rows: only the change tokens move
        w = Work(symbol, tokens, [], 0, 0, len(changed), days=known)
        if legacy is not None or (fold and tail_start is not None):
            w.tail_start, w.legacy_from, w.data_end = tail_start, legacy, data_end
        return w, keys
    a = min(x for x, _ in spans)
    b = max(y for _, y in spans)
    reach = plan.target_ms - plan.base_ms
    # a candle opening at or after a is in bins opening after a − T, so from a − (T − B) on when a
    # is on the grid of bin starts (a day's start, a candle of the grid); from a − T otherwise
    on_grid = (a - plan.anchor_ms) % plan.base_ms == 0
    lo, hi = (a - reach if on_grid else a - plan.target_ms), b
    # A tail run: the change only adds candles after every stored one (an appended day: no stored bin
    # opens at or after lo) or lies inside the tail, and the tail stays within _TAIL_MAX_MS. The bins
    # from lo on go to a new tail layer; the period files (all bins before the tail start) stay.
    tail_from = tail_start
    # stored bins hold no slot from the old data end on, unless confirmed-empty slots right after it
    # completed some (method binance): those reach T − B further
    stored_end = old_end
    if old_end is not None and any(r0 < old_end + reach and r1 > old_end for r0, r1 in state.empty or []):
        stored_end = old_end + reach
    if tail_from is None and stored_end is not None and a >= stored_end:
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
            w = Work(symbol, tokens, read, lo, None, len(changed), days=known, tail=True)
            # planning's rows of a partition serve if they hold every row the run needs of it: one
            # read from its own first changed day on may start after lo (two changed months of one
            # series); the run reads the others (the month before a new month's first day)
            w.cached = {
                d: frames[d].since(lo)
                for d in read
                if d in frames and frames[d].covers(max(lo, _span(plan.base, d)[0]))
            }
            return w, keys
    # otherwise the bins of [lo, hi) are merged into the period files, and a tail is folded into them
    read = [d for d in sorted(tokens) if _span(plan.base, d)[0] < hi + reach and _span(plan.base, d)[1] > lo]
    w = Work(
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
        if not is_date_dir(name):  # a stray directory is not a partition (the readers skip it too)
            continue
        token = lfs.mtime_key(f"{sdir}/{name}/{DATA_FILE}")
        if token is not None:
            out[name[5:]] = token
    return out


def fingerprints(
    df: pl.DataFrame, base: Interval, symbols: Sequence[str], hashes: _Hashes | None = None
) -> Fingerprints:
    """Per symbol, per base partition: a fingerprint of each UTC day's rows (values included) and the
    open time of its last candle, packed (``pack_days``); ``hashes``, if given, receives the rows'
    hashes.

    ``df`` has the series' index in ``symbols`` as ``_sym``, ordered by series. Fingerprints only ever
    compare with ones this code wrote; a Polars upgrade that changes row hashing makes every day look
    changed once (a full recompute), never a day look unchanged.
    """
    out: Fingerprints = {}
    if df.height == 0:
        return out
    # whole series at a time, about CHUNK_ROWS rows each: arrays that fresh would cost more in page
    # faults than in arithmetic (a cold incremental run spent 0.3 s of system time in them)
    sym = df["_sym"].to_numpy()
    cuts = [0]
    for at in (np.flatnonzero(sym[1:] != sym[:-1]) + 1).tolist():
        if at - cuts[-1] >= CHUNK_ROWS:
            cuts.append(at)
    cuts.append(df.height)
    for a, b in itertools.pairwise(cuts):
        h = _fingerprint_rows(df.slice(a, b - a), base, symbols, out)
        if hashes is not None:
            hashes.chunks.append((a, h))
    return out


def _print(hash_sum: int, rows: int) -> int:
    """A day's fingerprint from the wrapped uint64 sum of its rows' hashes and their number."""
    return int(day_prints(np.array([hash_sum], np.uint64), np.array([rows], np.uint64))[0])


def _fingerprint_rows(
    df: pl.DataFrame, base: Interval, symbols: Sequence[str], out: Fingerprints
) -> np.ndarray:
    """Fingerprints of the rows of whole series into ``out``; returns the rows' hashes (in their order)."""
    # integer day numbers, not calendar truncation on every row; rows come ordered by (series, time),
    # so a day's rows are one run and the hashes are summed per run (uint64 sums wrap, as Polars' do)
    code = df["_sym"].to_numpy().astype(np.int64)
    t = df["candle_begin_time"].to_physical().to_numpy()  # ms since the epoch
    day = t // MS_PER_DAY
    h = hashed = row_hashes(df)
    if len(t) > 1 and not np.all((code[1:] > code[:-1]) | ((code[1:] == code[:-1]) & (t[1:] > t[:-1]))):
        order = np.lexsort((t, code))  # by series, then time
        code, t, day, h = code[order], t[order], day[order], h[order]
    key = code * (1 << 32) + day
    starts = np.flatnonzero(np.diff(key, prepend=key[0] - 1))
    ends = np.append(starts[1:], len(key))
    sums = np.add.reduceat(h, starts)
    prints = day_prints(sums, ends - starts)
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
    return hashed


@functools.lru_cache(maxsize=4096)
def _span(base: Interval, date: str) -> tuple[int, int]:
    """``[start, end)`` in ms of the base partition ``date=<date>``."""
    d = dt.date.fromisoformat(date)
    return _day_ms(d), _day_ms(partition_end(base, d))


def _day_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
