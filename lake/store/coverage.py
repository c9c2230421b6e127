"""Coverage of the klines table: per series first/last candle, counts and the exact holes.

A hole is a run of missing candles strictly between the first and the last stored candle. The parts
of it the exchange confirmed empty (``lake.store.meta``) are marked ``exchange``, the others
``missing``: a maintenance window with a lost candle beside it is an exchange hole and a missing
candle, as ``lake audit`` classifies it (and the ``coverage`` view counts it).
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import polars as pl

from lake.binance.intervals import Interval, parse_interval
from lake.errors import DataError, LakeError
from lake.store.fs import LakeFS
from lake.store.klines import iter_series_batches, list_partitions, list_series, to_lakefs, unreadable_error
from lake.store.meta import read_empty_ranges
from lake.store.tail import read_tail, tail_feeds

__all__ = ["Hole", "SeriesCoverage", "coverage"]


@dataclass(frozen=True, slots=True)
class Hole:
    """Missing candles opening in ``[start, end)``; ``kind`` is ``missing`` or ``exchange``."""

    start: dt.datetime
    end: dt.datetime
    missing: int
    kind: str = "missing"


@dataclass(frozen=True, slots=True)
class SeriesCoverage:
    trade_type: str
    interval: str
    symbol: str
    first: dt.datetime | None
    last: dt.datetime | None
    rows: int
    expected: int
    holes: list[Hole] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(h.missing for h in self.holes if h.kind == "missing")

    @property
    def exchange_missing(self) -> int:
        return sum(h.missing for h in self.holes if h.kind == "exchange")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["missing"] = self.missing
        d["exchange_missing"] = self.exchange_missing
        return d


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def coverage(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str | None = None,
    interval: str | None = None,
    symbols: list[str] | None = None,
) -> list[SeriesCoverage]:
    """Coverage of every stored series matching the filters, sorted by (trade type, interval, symbol)."""
    lfs = to_lakefs(root)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for tt, iv, sym in list_series(lfs):
        if (trade_type and tt != trade_type) or (interval and iv != interval):
            continue
        if symbols is not None and sym not in symbols:
            continue
        groups[(tt, iv)].append(sym)
    # a series whose candles are all in lake live's tail still (a new listing, until compaction)
    for tt, iv in tail_feeds(lfs):
        if (trade_type and tt != trade_type) or (interval and iv != interval):
            continue
        held = set(groups.get((tt, iv), []))
        for sym in read_tail(lfs, tt, iv)["symbol"].unique().sort().to_list():
            if sym not in held and (symbols is None or sym in symbols):
                groups[(tt, iv)].append(sym)
    out: list[SeriesCoverage] = []
    for (tt, iv_name), syms in sorted(groups.items()):
        ivl = parse_interval(iv_name)
        batches = iter_series_batches(lfs, tt, iv_name, sorted(syms), ["candle_begin_time"])
        while True:
            try:
                batch = next(batches, None)
            except pl.exceptions.PolarsError as exc:
                raise _unreadable(lfs, tt, iv_name, syms, exc) from exc
            if batch is None:
                break
            for (sym,), part in batch[1].group_by("symbol", maintain_order=True):
                out.append(_series(lfs, tt, iv_name, str(sym), part["candle_begin_time"], ivl))
    return sorted(out, key=lambda c: (c.trade_type, c.interval, c.symbol))


def _unreadable(lfs: LakeFS, tt: str, iv_name: str, syms: list[str], exc: Exception) -> LakeError:
    """The error for a scan that failed: a ``DataError`` naming the partition files whose parquet
    footer cannot be read (a damaged file: Polars' message does not name it), else one with
    Polars' message."""
    paths = [lfs.full(key.path) for sym in syms for key in list_partitions(lfs, tt, iv_name, sym)]
    named = unreadable_error(lfs, paths, exc)
    return named if named is not None else DataError(f"reading {tt} {iv_name} klines failed: {exc}")


def _series(lfs: LakeFS, tt: str, iv_name: str, sym: str, times: pl.Series, iv: Interval) -> SeriesCoverage:
    if times.len() == 0:
        return SeriesCoverage(tt, iv_name, sym, None, None, 0, 0, [])
    ms = times.dt.epoch("ms")
    # A candle fills the slot its open time falls in (off-grid 2018 candles), as the planners count
    if iv.ms is not None:
        ms = iv.floor_many(ms)
    elif ms.len():
        ms = pl.Series([iv.floor(v) for v in ms.to_list()], dtype=pl.Int64)
    first, last = int(ms[0]), int(ms[-1])
    expected = iv.count(first, last + 1)
    holes: list[Hole] = []
    if iv.ms is not None:
        gaps = (
            pl.DataFrame({"t": ms})
            .with_columns(prev=pl.col("t").shift(1))
            .filter(pl.col("t") - pl.col("prev") > iv.ms)
        )
        spans = [(int(p) + iv.ms, int(t)) for t, p in gaps.select("t", "prev").iter_rows()]
    else:
        spans = []
        values = ms.to_list()
        for prev, cur in itertools.pairwise(values):
            nxt = iv.next_open(prev)
            if cur > nxt:
                spans.append((nxt, cur))
    empty = read_empty_ranges(lfs, tt, iv_name, sym) if spans else []
    for a, b in spans:
        for x, y, kind in _pieces(a, b, [(r.start_ms, r.end_ms) for r in empty]):
            n = iv.count(x, y)
            if n:
                holes.append(Hole(_from_ms(x), _from_ms(y), n, kind))
    stored = times.dt.epoch("ms")
    first_open, last_open = _from_ms(int(stored[0])), _from_ms(int(stored[-1]))
    return SeriesCoverage(tt, iv_name, sym, first_open, last_open, times.len(), expected, holes)


def _pieces(a: int, b: int, empty: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """``[a, b)`` cut where the confirmed-empty ranges (sorted, disjoint) start and end: its parts
    inside them ``exchange``, the rest ``missing``."""
    out: list[tuple[int, int, str]] = []
    at = a
    for r0, r1 in empty:
        if r1 <= at or r0 >= b:
            continue
        if r0 > at:
            out.append((at, r0, "missing"))
        out.append((max(r0, at), min(r1, b), "exchange"))
        at = min(r1, b)
    if at < b:
        out.append((at, b, "missing"))
    return out
