"""Build the offsets table from the klines table, incrementally, and read it back.

A build compares each base partition's change token (``LakeFS.mtime_key``) with the manifest of the
previous run and recomputes only the bins that can see a changed partition: for a change inside
``[a, b)`` the bins opening in ``[a − (T − B), b)``, from base candles in ``[a − (T − B), b + T − B)``.
Those bins replace the same range in the stored files (read, merge, compare, write atomically); a file
whose content would not change is not written, so a second run writes nothing. Appending a day costs
about a day of base reads plus one rewrite of the current file of each (offset, symbol).

Work runs in batches of symbols (about ``batch_rows`` base rows each), so memory stays bounded
whatever the size of the lake. While a batch is resampled, the next one is read and the previous
one's files are merged and encoded by a thread pool; each batch's files are then written with
``LakeFS.write_atomic_many`` (each file atomic, two file-system syncs per batch, not two per file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Final, TypeAlias

import numpy as np
import polars as pl

from lake.binance.intervals import INTERVALS, MS_PER_DAY, Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbols
from lake.errors import NotFoundError, ValidationError
from lake.schema import OFFSET_SCHEMA
from lake.store.fs import LakeFS
from lake.store.klines import list_series, read_partition, to_lakefs
from lake.store.meta import read_json, write_json
from lake.store.paths import DATA_FILE, PartitionKey, partition_end, partition_period, series_dir
from lake.transform.layout import OffsetPartition, manifest_path, offsets_period, table_dir
from lake.transform.layout import series_dir as offsets_series_dir
from lake.transform.offsets import OffsetPlan, offset_plan, resample_offsets

__all__ = ["BuildResult", "build_offsets", "default_base", "scan_offsets"]

_MANIFEST_VERSION = 2
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
# Derived data is rebuilt cheaply and written in bulk: LZ4 encodes ~2× faster than zstd for ~25% more
# bytes (a year of 1h bins for one offset and symbol: ~550 KB).
_COMPRESSION: Final = "lz4"


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
    written: int = 0  # files written
    unchanged: int = 0  # files recomputed but identical, not written
    removed: int = 0  # files deleted (their bins no longer exist)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class _Series:
    """Manifest entry: how a series' offsets were built and from which base partition versions."""

    base: str
    method: str
    offsets: list[str]
    partitions: dict[str, str]  # base partition date -> change token
    # base partition date -> {day: fingerprint of that day's rows}: a changed partition (a month of
    # 5m) is narrowed to the days whose rows changed, so appending a day recomputes about a day.
    days: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Work:
    symbol: str
    tokens: dict[str, str]
    read: list[str]  # base partition dates to read
    lo: int | None  # recompute bins opening in [lo, hi); None: unbounded
    hi: int | None
    changed: int
    drop_offsets: list[str] = field(default_factory=list)  # offsets built before a --rebuild
    days: dict[str, dict[str, int]] = field(default_factory=dict)  # fingerprints known at planning

    def touches(self, start_ms: int, end_ms: int) -> bool:
        """Whether ``[start_ms, end_ms)`` overlaps the bins this run recomputes."""
        return self.lo is None or self.hi is None or (start_ms < self.hi and end_ms > self.lo)


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
    batch_rows: int = 2_000_000,
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> BuildResult:
    """Bring the offsets table of (``trade_type``, ``interval``) up to date with the klines table.

    ``base`` defaults to the one the series were built from, else the coarsest stored interval that
    divides ``interval``. Offsets built earlier stay maintained alongside the requested ones. A
    series built with another base or method is an error unless ``rebuild`` (which recomputes it from
    scratch and deletes its old offsets). ``progress(done, total)`` is called per batch of symbols.
    """
    started = time.perf_counter()
    lfs = to_lakefs(root)
    tt = get_trade_type(trade_type)
    target = parse_interval(interval, spot=tt.is_spot)
    syms = validate_symbols(symbols) if symbols else None
    with lfs.lock(table_dir(tt.name, target.name)):
        manifest = _load_manifest(lfs, tt.name, target.name)
        if base is None:
            built = {manifest[s].base for s in (syms or manifest) if s in manifest}
            base = built.pop() if len(built) == 1 else default_base(lfs, tt.name, target, syms)
        plan = offset_plan(target, parse_interval(base, spot=tt.is_spot), offsets, method)
        if syms is None:
            listed = {s for t, iv, s in list_series(lfs) if t == tt.name and iv == plan.base.name}
            syms = sorted(listed | {s for s, st in manifest.items() if st.base == plan.base.name})
        by_offsets: dict[tuple[int, ...], list[_Work]] = {}
        for sym in syms:
            w, ks = _plan_series(lfs, tt.name, plan, sym, manifest.get(sym), rebuild)
            if w is not None:
                by_offsets.setdefault(ks, []).append(w)
        jobs = [
            (OffsetPlan(plan.target, plan.base, ks, plan.method), batch)
            for ks, items in by_offsets.items()
            for batch in _batches(items, batch_rows, plan)
        ]
        run = _Run(lfs, tt.name, manifest, progress)
        try:
            run.execute(jobs, workers)
        finally:
            if run.dirty:
                _save_manifest(lfs, tt.name, target.name, manifest)
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
        seconds=time.perf_counter() - started,
    )


class _Run:
    """Executes batches: the next batch is read while this one is resampled and the previous one's
    files are encoded by a thread pool; a batch's series enter the manifest once all its files are
    written (a failure re-raises and leaves them out, so the next run redoes them)."""

    def __init__(
        self,
        lfs: LakeFS,
        trade_type: str,
        manifest: dict[str, _Series],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.lfs, self.trade_type, self.manifest, self.progress = lfs, trade_type, manifest, progress
        self.bins = 0
        self.fingerprints: dict[str, dict[str, dict[str, int]]] = {}
        self.outcomes: Counter[str] = Counter()
        self.dirty = False
        self.done = 0

    def execute(self, jobs: list[tuple[OffsetPlan, list[_Work]]], workers: int) -> None:
        total = sum(len(batch) for _, batch in jobs)
        last_save = time.monotonic()
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(max(1, workers)) as writer:
            pending: tuple[OffsetPlan, list[_Work], list[_Pending]] | None = None
            ahead = reader.submit(_read_base, self.lfs, self.trade_type, *jobs[0]) if jobs else None
            for i, (plan, batch) in enumerate(jobs):
                assert ahead is not None
                base = ahead.result()
                if i + 1 < len(jobs):
                    ahead = reader.submit(_read_base, self.lfs, self.trade_type, *jobs[i + 1])
                futures = self._submit(plan, batch, base, writer)
                del base
                if pending is not None:
                    self._finish(*pending, total)
                pending = (plan, batch, futures)
                if self.dirty and time.monotonic() - last_save > _SAVE_EVERY_S:
                    _save_manifest(self.lfs, self.trade_type, plan.target.name, self.manifest)
                    last_save = time.monotonic()
            if pending is not None:
                self._finish(*pending, total)

    def _submit(
        self, plan: OffsetPlan, batch: list[_Work], base: pl.DataFrame, pool: ThreadPoolExecutor
    ) -> list[_Pending]:
        self.fingerprints.update(_fingerprints(base, plan.base))  # a symbol is in one batch only
        bins = resample_offsets(base, plan)
        if any(w.lo is not None for w in batch):
            bins = _restrict(bins, batch)
        self.bins += bins.height
        files = _split_files(bins, plan.target)
        lfs, tt, iv = self.lfs, self.trade_type, plan.target.name
        futures: list[_Pending] = []
        for w in batch:
            for name in plan.names:
                sdir = offsets_series_dir(tt, iv, name, w.symbol)
                periods = {dt.date.fromisoformat(e[5:]) for e in lfs.listdir(sdir) if _is_date_dir(e)}
                periods |= files.get((w.symbol, name), {}).keys()
                for p in sorted(periods):
                    part = OffsetPartition(tt, iv, name, w.symbol, p)
                    if not w.touches(part.start_ms, part.end_ms):
                        continue
                    new = files.get((w.symbol, name), {}).get(p)
                    futures.append(pool.submit(_merge_file, lfs, part, new, w.lo, w.hi))
            for name in w.drop_offsets:
                sdir = offsets_series_dir(tt, iv, name, w.symbol)
                for e in lfs.listdir(sdir):
                    if _is_date_dir(e):
                        futures.append(_Outcome("remove", f"{sdir}/{e}/{DATA_FILE}"))
        return futures

    def _finish(self, plan: OffsetPlan, batch: list[_Work], futures: list[_Pending], total: int) -> None:
        # .result() re-raises a failed merge: the batch's series then stay out of the manifest
        outcomes = [f.result() if isinstance(f, Future) else f for f in futures]
        # one durable batch write (two file-system syncs) instead of two fsyncs per file
        self.lfs.write_atomic_many([(o.rel, o.data) for o in outcomes if o.kind == "write"])
        for o in outcomes:
            if o.kind == "remove":
                _remove_file(self.lfs, o.rel)
        for o in outcomes:
            self.outcomes[{"write": "written", "remove": "removed"}.get(o.kind, o.kind)] += 1
        for w in batch:
            old = self.manifest.get(w.symbol)
            days = {d: v for d, v in (old.days if old is not None else {}).items() if d in w.tokens}
            days.update(w.days)
            days.update(self.fingerprints.pop(w.symbol, {}))
            self.manifest[w.symbol] = _Series(plan.base.name, plan.method, plan.names, w.tokens, days)
        self.dirty = True
        self.done += len(batch)
        if self.progress is not None:
            self.progress(self.done, total)


# -- planning ------------------------------------------------------------------------------------


def _plan_series(
    lfs: LakeFS, trade_type: str, plan: OffsetPlan, symbol: str, state: _Series | None, rebuild: bool
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
    ks = set(plan.offsets)
    if state is not None:  # offsets built before stay maintained
        by_name = {plan.name(k): k for k in range(plan.n)}
        ks |= {by_name[n] for n in state.offsets if n in by_name}
    keys = tuple(sorted(ks))
    names = [plan.name(k) for k in keys]
    tokens = _base_tokens(lfs, trade_type, plan.base.name, symbol)
    if state is None or sorted(state.offsets) != sorted(names):
        if not tokens and state is None and not drop:
            return None, keys
        drop = [o for o in drop if o not in names]
        return _Work(symbol, tokens, sorted(tokens), None, None, len(tokens), drop), keys
    changed = [d for d in tokens.keys() | state.partitions.keys() if tokens.get(d) != state.partitions.get(d)]
    if not changed:
        return None, keys
    spans: list[tuple[int, int]] = []
    known: dict[str, dict[str, int]] = {}
    for d in changed:
        old_days = state.days.get(d)
        if d not in tokens or old_days is None:
            spans.append(_span(plan.base, d))
            continue
        key = PartitionKey("klines", trade_type, plan.base.name, symbol, dt.date.fromisoformat(d))
        stored = read_partition(lfs, key)
        new_days = (
            _fingerprints(stored.with_columns(pl.lit(symbol).alias("symbol")), plan.base)
            .get(symbol, {})
            .get(d, {})
            if stored is not None
            else {}
        )
        known[d] = new_days
        for day in new_days.keys() | old_days.keys():
            if new_days.get(day) != old_days.get(day):
                start = _day_ms(dt.date.fromisoformat(day))
                spans.append((start, start + MS_PER_DAY))
    if not spans:  # rewritten with the same rows: only the change tokens move
        return _Work(symbol, tokens, [], 0, 0, len(changed), days=known), keys
    a = min(x for x, _ in spans)
    b = max(y for _, y in spans)
    reach = plan.target_ms - plan.base_ms
    lo, hi = a - reach, b
    read = [d for d in sorted(tokens) if _span(plan.base, d)[0] < hi + reach and _span(plan.base, d)[1] > lo]
    return _Work(symbol, tokens, read, lo, hi, len(changed), days=known), keys


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
    """Groups of series of about ``batch_rows`` base rows (estimated from partition counts), and at
    most ``_BATCH_SYMBOLS`` series: an incremental run reads little but rewrites a file per offset and
    symbol, and a batch's encoded files wait in memory for their write."""
    days = {"day": 1, "month": 31, "year": 366}[partition_period(plan.base)]
    per_partition = days * MS_PER_DAY // plan.base_ms
    batch: list[_Work] = []
    rows = 0
    for w in items:
        batch.append(w)
        rows += len(w.read) * per_partition
        if rows >= batch_rows or len(batch) >= _BATCH_SYMBOLS:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


# -- one batch -----------------------------------------------------------------------------------


def _read_base(lfs: LakeFS, trade_type: str, plan: OffsetPlan, batch: list[_Work]) -> pl.DataFrame:
    """The base candles a batch needs (``symbol`` plus the kline value columns)."""
    files = [
        lfs.url(PartitionKey("klines", trade_type, plan.base.name, w.symbol, dt.date.fromisoformat(d)).path)
        for w in batch
        for d in w.read
    ]
    columns = ["symbol", *(c for c in OFFSET_SCHEMA if c != "n_base")]
    if not files:
        return pl.DataFrame(schema={"symbol": pl.String, **OFFSET_SCHEMA}).select(columns)
    lf = pl.scan_parquet(
        files,
        hive_partitioning=True,
        hive_schema=_KLINES_HIVE,
        glob=False,  # exact paths: a root named "data [old]" is not a pattern
        storage_options=lfs.storage_options or None,
    )
    return lf.select(columns).collect(engine="streaming")


def _restrict(bins: pl.DataFrame, batch: list[_Work]) -> pl.DataFrame:
    """Only the bins each series recomputes: those opening in its ``[lo, hi)``."""
    ranges = pl.DataFrame(
        {"symbol": [w.symbol for w in batch], "_lo": [w.lo for w in batch], "_hi": [w.hi for w in batch]},
        schema={"symbol": pl.String, "_lo": pl.Int64, "_hi": pl.Int64},
    )
    t = pl.col("candle_begin_time").dt.epoch("ms")
    inside = (pl.col("_lo").is_null() | (t >= pl.col("_lo"))) & (
        pl.col("_hi").is_null() | (t < pl.col("_hi"))
    )
    return (
        bins.join(ranges, on="symbol", how="inner", maintain_order="left").filter(inside).drop("_lo", "_hi")
    )


def _split_files(bins: pl.DataFrame, target: Interval) -> dict[tuple[str, str], dict[dt.date, pl.DataFrame]]:
    """Bins by (symbol, offset) and file period, as zero-copy slices (bins come grouped and sorted)."""
    if bins.height == 0:
        return {}
    trunc = "1mo" if offsets_period(target) == "month" else "1y"
    keys = bins.select(
        "symbol", "offset", pl.col("candle_begin_time").dt.truncate(trunc).dt.date().alias("p")
    )
    runs = keys.select(pl.struct(pl.all()).rle_id()).to_series().to_numpy()
    starts = np.flatnonzero(np.diff(runs, prepend=-1))
    ends = np.append(starts[1:], len(runs))
    values = bins.select(list(OFFSET_SCHEMA))
    out: dict[tuple[str, str], dict[dt.date, pl.DataFrame]] = {}
    for (sym, off, p), a, b in zip(keys[starts].rows(), starts, ends, strict=True):
        out.setdefault((sym, off), {})[p] = values.slice(int(a), int(b - a))
    return out


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What to do with one file: ``write`` (``data``), ``remove``, or nothing (``unchanged``/``none``)."""

    kind: str
    rel: str
    data: bytes = b""


_Pending: TypeAlias = "Future[_Outcome] | _Outcome"  # an encoding in the pool, or a removal


def _merge_file(
    lfs: LakeFS, part: OffsetPartition, new: pl.DataFrame | None, lo: int | None, hi: int | None
) -> _Outcome:
    """The new content of one file: its bins of ``[lo, hi)`` replaced by ``new`` (encoded, not written)."""
    data = lfs.read_bytes_or_none(part.path)
    old = pl.read_parquet(io.BytesIO(data)) if data is not None else None
    merged = new if new is not None else pl.DataFrame(schema=OFFSET_SCHEMA)
    if old is not None and lo is not None and hi is not None:
        t = pl.col("candle_begin_time").dt.epoch("ms")
        keep = old.filter((t < lo) | (t >= hi))
        if keep.height:
            merged = pl.concat([keep, merged]).sort("candle_begin_time")
    if merged.height == 0:
        return _Outcome("none" if old is None else "remove", part.path)
    if old is not None and old.equals(merged):
        return _Outcome("unchanged", part.path)
    buf = io.BytesIO()
    merged.write_parquet(buf, compression=_COMPRESSION, statistics=True)
    return _Outcome("write", part.path, buf.getvalue())


def _remove_file(lfs: LakeFS, rel: str) -> None:
    """Delete one partition file and, on a local disk, its then empty ``date=`` directory."""
    lfs.remove(rel)
    if lfs.is_local:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(lfs.full(rel)))


# -- manifest ------------------------------------------------------------------------------------


def _load_manifest(lfs: LakeFS, trade_type: str, interval: str) -> dict[str, _Series]:
    doc = read_json(lfs, manifest_path(trade_type, interval))
    if not isinstance(doc, dict) or doc.get("version") != _MANIFEST_VERSION:
        return {}
    return {sym: _Series(**entry) for sym, entry in doc.get("series", {}).items()}


def _save_manifest(lfs: LakeFS, trade_type: str, interval: str, manifest: dict[str, _Series]) -> None:
    doc = {"version": _MANIFEST_VERSION, "series": {s: asdict(st) for s, st in sorted(manifest.items())}}
    write_json(lfs, manifest_path(trade_type, interval), doc)


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

    Files outside the offsets, symbols and ``[start, end)`` asked for are never opened.
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
                files.append(lfs.url(part.path))
    columns = ["symbol", "offset", *OFFSET_SCHEMA]
    if not files:
        return pl.LazyFrame(schema={"symbol": pl.String, "offset": pl.String, **OFFSET_SCHEMA})
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
    return lf.select(columns)


def _is_date_dir(name: str) -> bool:
    """``date=YYYY-MM-DD`` (anything else in a series directory is ignored)."""
    if not name.startswith("date=") or len(name) != 15:
        return False
    try:
        dt.date.fromisoformat(name[5:])
    except ValueError:
        return False
    return True


def _fingerprints(df: pl.DataFrame, base: Interval) -> dict[str, dict[str, dict[str, int]]]:
    """Per symbol, per base partition, per UTC day: a fingerprint of the day's rows (values included).

    Fingerprints only ever compare with ones this code wrote; a Polars upgrade that changes row
    hashing makes every day look changed once (a full recompute), never a day look unchanged.
    """
    if df.height == 0:
        return {}
    cols = [c for c in OFFSET_SCHEMA if c != "n_base"]
    trunc = {"day": "1d", "month": "1mo", "year": "1y"}[partition_period(base)]
    t = pl.col("candle_begin_time")
    agg = (
        df.select(
            "symbol",
            t.dt.truncate(trunc).dt.date().cast(pl.String).alias("p"),
            t.dt.date().cast(pl.String).alias("day"),
            df.select(cols).hash_rows(seed=17).alias("h"),
        )
        .group_by("symbol", "p", "day")
        .agg(pl.col("h").sum(), pl.len().alias("n"))
    )
    out: dict[str, dict[str, dict[str, int]]] = {}
    for sym, p, day, h, n in agg.iter_rows():
        out.setdefault(sym, {}).setdefault(p, {})[day] = (int(h) ^ (int(n) << 1)) & ((1 << 63) - 1)
    return out


def _span(base: Interval, date: str) -> tuple[int, int]:
    """``[start, end)`` in ms of the base partition ``date=<date>``."""
    d = dt.date.fromisoformat(date)
    return _day_ms(d), _day_ms(partition_end(base, d))


def _day_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
