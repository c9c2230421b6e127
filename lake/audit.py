"""Continuity audit: classify every hole in the lake and split series into listing segments.

Per (trade type, interval, symbol) the audit reports each hole with one of these kinds:

* ``maintenance`` — exchange-wide: every other symbol of the same trade type and interval that was
  trading around the hole misses the same window (at least two symbols must be trading);
* ``confirmed_empty`` — the exchange answered "no candles" for it (recorded by backfills);
* ``segment_break`` — long enough to split the series (delisting and relisting): a hole of at least
  ``break_days`` (2) days, or of at least ``jump_days`` (1) day with a price jump of ≥ ``jump`` (10%)
  between the close before and the open after (the rule lostleaf's BHDS uses);
* ``missing`` — none of the above: data the lake should have and does not. Only these are
  *unexpected*; ``lake audit`` exits non-zero while any remain.

It also counts rows per provenance (``archive`` / ``rest`` / ``ws``) and lists the segments.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lake.binance.intervals import MS_PER_DAY, parse_interval
from lake.store.coverage import SeriesCoverage, coverage
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, to_lakefs

__all__ = ["AuditHole", "SeriesAudit", "audit"]


@dataclass(frozen=True, slots=True)
class AuditHole:
    start: dt.datetime
    end: dt.datetime
    missing: int
    kind: str  # maintenance | confirmed_empty | segment_break | missing
    price_jump: float | None = None


@dataclass(slots=True)
class SeriesAudit:
    trade_type: str
    interval: str
    symbol: str
    first: dt.datetime | None
    last: dt.datetime | None
    rows: int
    expected: int
    sources: dict[str, int] = field(default_factory=dict)
    holes: list[AuditHole] = field(default_factory=list)
    segments: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)

    @property
    def unexpected(self) -> list[AuditHole]:
        return [h for h in self.holes if h.kind == "missing"]

    def to_dict(self) -> dict[str, object]:
        return {
            "trade_type": self.trade_type,
            "interval": self.interval,
            "symbol": self.symbol,
            "first": self.first,
            "last": self.last,
            "rows": self.rows,
            "expected": self.expected,
            "sources": self.sources,
            "holes": [
                {
                    "start": h.start,
                    "end": h.end,
                    "missing": h.missing,
                    "kind": h.kind,
                    "price_jump": h.price_jump,
                }
                for h in self.holes
            ],
            "segments": [{"segment": i, "start": a, "end": b} for i, (a, b) in enumerate(self.segments)],
            "unexpected_missing": sum(h.missing for h in self.unexpected),
        }


def audit(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str | None = None,
    interval: str | None = None,
    symbols: list[str] | None = None,
    *,
    break_days: float = 2.0,
    jump_days: float = 1.0,
    jump: float = 0.10,
) -> list[SeriesAudit]:
    """Audit every stored series matching the filters (see the module doc for the hole kinds)."""
    lfs = to_lakefs(root)
    covs = coverage(lfs, trade_type, interval)  # all symbols: maintenance needs the whole market
    by_group: dict[tuple[str, str], list[SeriesCoverage]] = defaultdict(list)
    for c in covs:
        by_group[(c.trade_type, c.interval)].append(c)
    out: list[SeriesAudit] = []
    for (tt, iv_name), group in sorted(by_group.items()):
        iv = parse_interval(iv_name)
        wanted = [c for c in group if symbols is None or c.symbol in symbols]
        if not wanted:
            continue
        stats = _series_stats(lfs, tt, iv_name, [c.symbol for c in wanted])
        for c in wanted:
            a = SeriesAudit(tt, iv_name, c.symbol, c.first, c.last, c.rows, c.expected)
            a.sources = stats["sources"].get(c.symbol, {})
            edges = stats["edges"].get(c.symbol, {})
            seg_start = c.first
            for h in c.holes:
                before = edges.get(_ms(h.start) - (iv.ms or 0))
                after = edges.get(_ms(h.end))
                jump_v = None
                if before is not None and after is not None and before[0] > 0:
                    jump_v = abs(after[1] / before[0] - 1.0)
                duration_days = (h.end - h.start).total_seconds() * 1000 / MS_PER_DAY
                others = [
                    o
                    for o in group
                    if o.symbol != c.symbol and o.first and o.last and o.first < h.start and o.last >= h.end
                ]
                exchange_wide = len(others) >= 1 and all(
                    any(oh.start <= h.start and h.end <= oh.end for oh in o.holes) for o in others
                )
                if duration_days >= break_days or (
                    duration_days >= jump_days and jump_v is not None and jump_v >= jump
                ):
                    kind = "segment_break"
                    if seg_start is not None:
                        a.segments.append((seg_start, h.start))
                    seg_start = h.end
                elif exchange_wide:
                    kind = "maintenance"
                elif h.kind == "exchange":
                    kind = "confirmed_empty"
                else:
                    kind = "missing"
                a.holes.append(AuditHole(h.start, h.end, h.missing, kind, jump_v))
            if seg_start is not None and c.last is not None:
                a.segments.append((seg_start, iv_end(iv_name, c.last)))
            out.append(a)
    return out


def iv_end(iv_name: str, last: dt.datetime) -> dt.datetime:
    iv = parse_interval(iv_name)
    return dt.datetime.fromtimestamp(iv.next_open(_ms(last)) / 1000, tz=dt.UTC)


def _series_stats(lfs: LakeFS, tt: str, iv_name: str, syms: list[str]) -> dict[str, Any]:
    """Per symbol: rows by source, and (close, next open) around every gap, in one scan."""
    iv = parse_interval(iv_name)
    lf = scan_klines(lfs, tt, iv_name, syms).select("symbol", "candle_begin_time", "open", "close", "source")
    df = lf.collect().sort("symbol", "candle_begin_time")
    sources: dict[str, dict[str, int]] = defaultdict(dict)
    for sym, src, n in df.group_by("symbol", "source").len().iter_rows():
        sources[sym][src] = n
    step = iv.ms or 28 * MS_PER_DAY
    t = pl.col("candle_begin_time").dt.epoch("ms")
    gap = (t - t.shift(1).over("symbol") > step) | (t.shift(-1).over("symbol") - t > step)
    around = df.filter(gap).with_columns(ms=t)
    edges: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for sym, ms, o, c in around.select("symbol", "ms", "open", "close").iter_rows():
        edges[sym][ms] = (c, o)
    return {"sources": sources, "edges": edges}


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)
