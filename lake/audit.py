"""Continuity audit: classify every hole in the lake and split series into listing segments.

Per (trade type, interval, symbol) the audit reports each hole with one of these kinds:

* ``maintenance`` — exchange-wide: every other symbol of the same trade type and interval that was
  trading around the hole misses the same window (at least two symbols must be trading);
* ``confirmed_empty`` — the exchange answered "no candles" for it (recorded by backfills and by
  ``lake live``);
* ``segment_break`` — inside a gap long enough to split the series (delisting and relisting): between
  two candles with trades, a gap of at least ``break_days`` (2) days, or of at least ``jump_days`` (1)
  day with a price jump of ≥ ``jump`` (10%) between the close before and the open after (the rule
  lostleaf's BHDS uses). Zero-volume candles (a quiet interval, or the "zombie" candles a delisted
  futures contract keeps producing) do not count as trading, as in lostleaf;
* ``missing`` — none of the above: data the lake should have and does not. Only these are
  *unexpected*; ``lake audit`` exits non-zero while any remain.

A hole is only called expected on evidence that the exchange has no candles there, never on its shape
alone: the range was answered empty over REST or by ``lake live`` (``lake.store.meta``), or, for
``maintenance`` and ``segment_break``, it lies inside days the ingested archive files vouch for (the
exchange's own published days lack those rows; ``lake.ingest.archive.manifest``): a daily file's day up
to its last candle, or a day a monthly file has a candle on. A whole day (a month above ``1d``) without
a candle inside a monthly file is no evidence: Binance has published truncated monthly files, and the
archive ingest reports such a day missing when no daily file has it (exit 5); the audit says the same. A
delisting and relisting inside the archive's months is a ``segment_break`` once REST has confirmed it (a
``--source auto`` backfill, or ``--repair``). A hole nobody asked the exchange about — two backfills
with a gap between them, a day an archive-only run could not get — is ``missing`` however much it looks
like maintenance or a delisting, so ``lake audit`` fails on it and ``--repair`` fetches it (REST then
confirms it empty, or fills it).

A hole is classified in pieces, cut where a confirmed-empty range or another symbol's hole starts
or ends: a maintenance window with a lost candle beside it is a ``maintenance`` hole and a
``missing`` one (``lake status`` counts such a hole as missing whole: only a hole wholly inside a
confirmed-empty range is an exchange hole there).

Holes and gaps are measured between slots: a candle fills the slot its open time falls in (some
2018 candles open off the interval grid), and 1M slots are calendar months.

A series is not judged on what lies after its last candle, but ``behind`` counts the candles
between it and the latest candle of its trade type and interval in the lake: a series a backfill
left behind, or a delisted one (those stop there).

It also counts rows per provenance (``archive`` / ``rest`` / ``ws``) and zero-volume rows, and lists
the segments: from the first to the last traded candle of each, so a zombie tail after a delisting
is in none.

``kept`` lists the archive candles still stored where a re-uploaded monthly file no longer has them
(``lake.ingest.archive.manifest``, kept ranges): the lake keeps them (a truncated re-upload is far
more common than withdrawn trading), but nothing Binance publishes now vouches for them. They are
rows, not holes: a warning, not in the exit code. A daily file of those days (the archive ingest
fetches one once it is published) or a later version of the file settles them; candles of another
source stored there since (REST, after the partitions were deleted by hand) are not counted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lake.binance.intervals import MS_PER_DAY, Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.ingest.archive.manifest import kept_dir, read_kept, read_manifest
from lake.ingest.archive.plan import merge_spans, span_minus, units
from lake.store.coverage import SeriesCoverage, coverage
from lake.store.fs import LakeFS
from lake.store.klines import iter_series_batches, scan_klines, to_lakefs
from lake.store.meta import EmptyRange, read_empty_ranges

__all__ = ["AuditHole", "KeptCandles", "SeriesAudit", "audit"]


@dataclass(frozen=True, slots=True)
class AuditHole:
    start: dt.datetime
    end: dt.datetime
    missing: int
    kind: str  # maintenance | confirmed_empty | segment_break | missing
    price_jump: float | None = None


@dataclass(frozen=True, slots=True)
class KeptCandles:
    """``candles`` archive candles stored in ``[start, end)`` that the re-uploaded ``file`` no longer has."""

    start: dt.datetime
    end: dt.datetime
    candles: int
    file: str


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
    zero_volume: int = 0  # stored candles without trades (quiet intervals, zombie candles)
    # candles between this series' last one and the latest of any series of its trade type and
    # interval: a series left behind (a backfill that stopped, a feed not run) or a delisted one
    behind: int = 0
    kept: list[KeptCandles] = field(default_factory=list)  # see the module doc

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
            "zero_volume": self.zero_volume,
            "behind": self.behind,
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
            "kept": [
                {"start": k.start, "end": k.end, "candles": k.candles, "file": k.file} for k in self.kept
            ],
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
        lasts = [iv.floor(_ms(c.last)) for c in group if c.last is not None]
        latest = max(lasts) if lasts else None
        market = get_trade_type(tt).market_name
        with_kept = {n.removesuffix(".json") for n in lfs.listdir(kept_dir(market, iv_name))}
        for c in wanted:
            a = SeriesAudit(tt, iv_name, c.symbol, c.first, c.last, c.rows, c.expected)
            if c.symbol in with_kept:
                a.kept = _kept_candles(lfs, tt, iv, c.symbol)
            a.sources = stats["sources"].get(c.symbol, {})
            a.zero_volume = stats["zero_volume"].get(c.symbol, 0)
            if c.last is not None and latest is not None:
                a.behind = iv.count(iv.next_open(iv.floor(_ms(c.last))), iv.next_open(latest))
            edges = stats["edges"].get(c.symbol, {})
            archived: _Archived | None = None  # read when a hole needs it
            breaks, a.segments = _segments(
                iv, stats["traded"].get(c.symbol), break_days=break_days, jump_days=jump_days, jump=jump
            )
            empty: list[EmptyRange] | None = None  # read when a hole needs it
            for h in c.holes:
                brk = next((b for b in breaks if b[0] <= h.start and h.end <= b[1]), None)
                before = edges.get(iv.floor(_ms(h.start) - 1))  # the slot before the hole
                after = edges.get(_ms(h.end))
                jump_v = None
                if brk is not None:
                    jump_v = brk[2]
                elif before is not None and after is not None and before[0] > 0:
                    jump_v = abs(after[1] / before[0] - 1.0)
                others = [
                    o
                    for o in group
                    if o.symbol != c.symbol and o.first and o.last and o.first < h.start and o.last >= h.end
                ]
                if empty is None:
                    empty = read_empty_ranges(lfs, tt, iv_name, c.symbol)
                # A hole can be part maintenance, part a candle lost next to it: classified in pieces
                # cut where a confirmed-empty range or another symbol's hole starts or ends.
                a0, b0 = _ms(h.start), _ms(h.end)
                cuts = {iv.floor(x) for r in empty for x in (r.start_ms, r.end_ms) if a0 < x < b0}
                cuts |= {
                    _ms(x)
                    for o in others
                    for oh in o.holes
                    for x in (oh.start, oh.end)
                    if h.start < x < h.end
                }
                bounds = [a0, *sorted(cuts - {a0, b0}), b0]
                vouched: list[tuple[int, int]] | None = None
                pieces: list[AuditHole] = []
                for pa, pb in itertools.pairwise(bounds):
                    start, end = _from_ms(pa), _from_ms(pb)
                    exchange_wide = len(others) >= 1 and all(
                        any(oh.start <= start and end <= oh.end for oh in o.holes) for o in others
                    )
                    confirmed = any(r.start_ms <= pa and pb <= r.end_ms for r in empty)
                    if not confirmed and (brk is not None or exchange_wide):
                        if archived is None:
                            archived = _archived_spans(lfs, tt, iv_name, c.symbol)
                        if vouched is None:
                            vouched = archived.vouched(iv, a0, b0)
                        published = _inside(vouched, pa, pb)
                    else:
                        published = False
                    if brk is not None and (confirmed or published):
                        kind = "segment_break"
                    elif exchange_wide and (confirmed or published):
                        kind = "maintenance"
                    elif confirmed:
                        kind = "confirmed_empty"
                    else:
                        kind = "missing"
                    n = iv.count(pa, pb)
                    if pieces and pieces[-1].kind == kind:  # neighbours of one kind are one hole
                        last = pieces[-1]
                        pieces[-1] = AuditHole(last.start, end, last.missing + n, kind, jump_v)
                    else:
                        pieces.append(AuditHole(start, end, n, kind, jump_v))
                a.holes.extend(pieces)
            out.append(a)
    return out


@dataclass(frozen=True, slots=True)
class _Archived:
    """The periods ``[start_ms, end_ms)`` of the archive files ingested for a series, merged."""

    daily: list[tuple[int, int]]
    monthly: list[tuple[int, int]]

    def vouched(self, iv: Interval, a0: int, b0: int) -> list[tuple[int, int]]:
        """The spans that vouch for the slots of the hole ``[a0, b0)``: daily files' days, and
        monthly files' periods except the days (months above ``1d``) the hole takes whole: the
        series has no candle there, so neither had the monthly file, which is what the archive
        ingest calls missing (plan: ``unfilled``) rather than a day the exchange was quiet."""
        blank = [(u0, u1) for u0, u1 in units(iv, a0, b0) if a0 <= u0 and u1 <= b0]
        monthly = [p for m in self.monthly for p in span_minus(m, blank)]
        return merge_spans(self.daily + monthly)


def _archived_spans(lfs: LakeFS, tt: str, iv_name: str, symbol: str) -> _Archived:
    records = read_manifest(lfs, get_trade_type(tt).market_name, iv_name, symbol).values()
    # a daily file vouches for its day up to its last candle: one cut hours before midnight
    # (binance-public-data #413) says nothing about those hours (the archive ingest calls them cut)
    daily = [
        (r.start_ms, r.end_ms if r.vouched_end is None else r.vouched_end)
        for r in records
        if r.end_ms - r.start_ms <= MS_PER_DAY
    ]
    monthly = [(r.start_ms, r.end_ms) for r in records if r.end_ms - r.start_ms > MS_PER_DAY]
    return _Archived(merge_spans(s for s in daily if s[0] < s[1]), merge_spans(monthly))


def _kept_candles(lfs: LakeFS, tt: str, iv: Interval, symbol: str) -> list[KeptCandles]:
    """The series' kept ranges with the archive candles stored in each (ranges without any left out)."""
    ranges = read_kept(lfs, get_trade_type(tt).market_name, iv.name, symbol)
    if not ranges:
        return []
    t = (
        scan_klines(
            lfs, tt, iv.name, [symbol], _from_ms(ranges[0].start_ms), _from_ms(max(r.end_ms for r in ranges))
        )
        .filter(pl.col("source") == "archive")
        .select(t=pl.col("candle_begin_time").dt.epoch("ms"))
        .sort("t")
        .collect()["t"]
    )
    out = []
    for r in ranges:
        n = int(t.search_sorted(r.end_ms)) - int(t.search_sorted(r.start_ms))
        if n:
            out.append(KeptCandles(_from_ms(r.start_ms), _from_ms(r.end_ms), n, r.file))
    return out


def _inside(spans: list[tuple[int, int]], a: int, b: int) -> bool:
    return any(s <= a and b <= e for s, e in spans)


def iv_end(iv_name: str, last: dt.datetime) -> dt.datetime:
    """End of the slot the candle opening at ``last`` fills (off-grid 2018 candles included)."""
    iv = parse_interval(iv_name)
    return _from_ms(iv.next_open(iv.floor(_ms(last))))


def _segments(
    iv: Interval,
    traded: tuple[int, int, list[tuple[int, float, int, float]]] | None,
    *,
    break_days: float,
    jump_days: float,
    jump: float,
) -> tuple[list[tuple[dt.datetime, dt.datetime, float | None]], list[tuple[dt.datetime, dt.datetime]]]:
    """Segment breaks ``(start, end, price jump)`` and segments ``[start, end)`` of one series.

    ``traded`` is ``(first slot, last slot, steps)`` over the candles with trades (volume > 0), with
    ``(previous slot, previous close, slot, open)`` for every step of more than one slot between two
    of them; zero-volume candles (quiet intervals, a delisted contract's zombie candles) are left
    out, as lostleaf does.
    """
    breaks: list[tuple[dt.datetime, dt.datetime, float | None]] = []
    segments: list[tuple[dt.datetime, dt.datetime]] = []
    if traded is None:
        return breaks, segments
    first, last, steps = traded
    seg_start = first
    for prev, close, cur, open_ in steps:
        start = iv.next_open(prev)
        if cur <= start:
            continue
        days = (cur - start) / MS_PER_DAY
        jump_v = abs(open_ / close - 1.0) if close > 0 else None
        if days >= break_days or (days >= jump_days and jump_v is not None and jump_v >= jump):
            breaks.append((_from_ms(start), _from_ms(cur), jump_v))
            segments.append((_from_ms(seg_start), _from_ms(start)))
            seg_start = cur
    segments.append((_from_ms(seg_start), _from_ms(iv.next_open(last))))
    return breaks, segments


def _slot(iv: Interval) -> pl.Expr:
    """The open time (ms) of the slot each candle fills: off-grid 2018 candles fall in the slot they open in."""
    if iv.ms is None:
        return pl.col("candle_begin_time").dt.truncate("1mo").dt.epoch("ms")
    return iv.floor_many(pl.col("candle_begin_time").dt.epoch("ms"))


def _series_stats(lfs: LakeFS, tt: str, iv_name: str, syms: list[str]) -> dict[str, Any]:
    """Per symbol: rows by source, zero-volume rows, (close, open) of the stored slots around every
    gap, and the traded candles around every gap between traded candles (series read in batches of
    bounded size, see ``iter_series_batches``)."""
    out: dict[str, Any] = {"sources": {}, "zero_volume": {}, "edges": {}, "traded": {}}
    columns = ["candle_begin_time", "open", "close", "volume", "source"]
    iv = parse_interval(iv_name)
    for _, df in iter_series_batches(lfs, tt, iv_name, syms, columns):
        for k, v in _batch_stats(df, iv).items():
            out[k].update(v)
    return out


def _batch_stats(df: pl.DataFrame, iv: Interval) -> dict[str, Any]:
    """``_series_stats`` of the series in ``df`` (sorted by symbol and open time)."""
    df = df.with_columns(slot=_slot(iv))
    sources: dict[str, dict[str, int]] = defaultdict(dict)
    for sym, src, n in df.group_by("symbol", "source").len().iter_rows():
        sources[sym][src] = n
    zero_volume = dict(df.filter(pl.col("volume") <= 0).group_by("symbol").len().iter_rows())

    s = pl.col("slot")
    prev, nxt = s.shift(1).over("symbol"), s.shift(-1).over("symbol")
    step = iv.ms if iv.ms is not None else 0  # 1M: every row (there are few)
    edges: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    stored = (
        df.filter(prev.is_null() | nxt.is_null() | (s - prev > step) | (nxt - s > step))
        .group_by("symbol", "slot", maintain_order=True)
        .agg(pl.col("close").last(), pl.col("open").first())
    )
    for sym, slot, c, o in stored.iter_rows():
        edges[sym][slot] = (c, o)
    traded_df = df.filter(pl.col("volume") > 0)
    traded: dict[str, tuple[int, int, list[tuple[int, float, int, float]]]] = {}
    for sym, first, last in (
        traded_df.group_by("symbol").agg(s.min().alias("a"), s.max().alias("b")).iter_rows()
    ):
        traded[sym] = (first, last, [])
    steps = traded_df.with_columns(prev_slot=prev, prev_close=pl.col("close").shift(1).over("symbol")).filter(
        s - pl.col("prev_slot") > step
    )
    for sym, p, c, cur, o in steps.select("symbol", "prev_slot", "prev_close", "slot", "open").iter_rows():
        traded[sym][2].append((p, c, cur, o))
    return {"sources": sources, "zero_volume": zero_volume, "edges": edges, "traded": traded}


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)
