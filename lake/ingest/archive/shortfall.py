"""What the archive files a run took lack while the series traded on, and what a re-upload dropped.

    ended_units(iv, df, start_ms, end_ms)          -> [(u0, u1)]: units whose last slot the file has
    cut_ranges(lfs, tt, iv, symbol, units, …)     -> [(a, b)]: ranges after a file's last candle
    kept_ranges(lfs, tt, iv, symbol, lost, …)     -> [(a, b, n)]: earlier archive rows a re-upload lacks

**Cut files.** Binance has published files whose candles stop hours before their period ends while
the symbol kept trading: a day's 1m files cut at 07:36 for every symbol (binance-public-data #413),
1s files ending at 20:59 (#436) or holding half a day (#367), all re-uploaded complete later. Such a
file verifies (its ``.CHECKSUM`` matches what was uploaded), so only its rows can tell. A unit (a day;
a month above ``1d``) whose candles stop before its last slot is *cut* when the series does not resume
later than the next period's first slot: a maintenance window spanning midnight goes on into the next
day, a cut file does not. Other symbols missing the same hours are no excuse, as #413 cut every
symbol alike; and a maintenance window ending exactly at midnight is not on record (none of the
windows quoted in #169 and #368 does; 2018-02-08 00:15 to 02-09 09:58 spans midnight and goes on
into the next day; should one happen, ``--source auto`` confirms it empty). Holes *inside* a unit
are left alone: that is the shape of maintenance (#84, #169, #368), which only REST or the other
symbols can tell from a loss (``lake audit``). A published file without any candle in its period is cut whole (the archive
publishes no file for a period without candles). What the exchange confirmed empty over REST
(``lake.store.meta``) is never cut. ``runner._missing`` then drops the cuts a delisting explains.

**Re-uploads that lost candles.** A re-uploaded monthly file replaces its earlier version's rows only
where it has candles (``runner._vouched``): a truncated re-upload (#320) is far more common than a
withdrawn trading day, and deleting on it would lose candles nothing else restores. The earlier
rows it no longer has stay, and ``kept_ranges`` names them so the lake never differs from the
archive silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence

import numpy as np
import polars as pl

from lake.binance.intervals import Interval
from lake.ingest.archive.plan import merge_spans, span_minus, units
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines
from lake.store.meta import read_empty_ranges

__all__ = ["cut_ranges", "ended_units", "kept_ranges"]

Span = tuple[int, int]


def _slots(iv: Interval, opens: pl.Series) -> np.ndarray:
    """Sorted distinct slots the candles opening at ``opens`` fill (2018 candles open off the grid)."""
    if iv.ms is not None:
        return np.unique(iv.floor_many(opens.to_numpy()))
    return np.unique(np.asarray([iv.floor(int(t)) for t in opens.to_list()], dtype=np.int64))


def ended_units(iv: Interval, df: pl.DataFrame, start_ms: int, end_ms: int) -> list[Span]:
    """The units of ``[start_ms, end_ms)`` (``plan.units``) in whose last slot the parsed file ``df``
    has a candle: none of them can be cut (``cut_ranges``), so the run need not read them again.
    A file with a maintenance hole inside a unit still ends it; only units a file stops short of
    are looked at twice."""
    if not df.height:
        return []
    us = units(iv, start_ms, end_ms)
    if len(us) == 1:  # a daily file (or a month above 1d): its last candle says it all
        last = df["candle_begin_time"].dt.epoch("ms").max()
        assert isinstance(last, int)
        return us if iv.floor(last) == iv.floor(us[0][1] - 1) else []
    last_slots = np.asarray([iv.floor(u1 - 1) for _, u1 in us], dtype=np.int64)
    opens = df["candle_begin_time"].dt.epoch("ms")
    if iv.ms is None:
        slots = _slots(iv, opens)
    else:
        slots = iv.floor_many(opens.to_numpy())
        if not bool((np.diff(slots) >= 0).all()):  # (parsed files come sorted: no sort, no unique)
            slots = np.sort(slots)
    at = np.minimum(np.searchsorted(slots, last_slots), len(slots) - 1)
    have = slots[at] == last_slots
    return [u for u, h in zip(us, have.tolist(), strict=True) if h]


def _opens(
    lfs: LakeFS, tt: str, iv: Interval, symbol: str, a: int, b: int, *, archive: bool = False
) -> pl.Series:
    def at(ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)

    lf = scan_klines(lfs, tt, iv.name, [symbol], at(a), at(b))
    if archive:
        lf = lf.filter(pl.col("source") == "archive")
    return lf.select(t=pl.col("candle_begin_time").dt.epoch("ms")).collect()["t"]


def _first_open_from(iv: Interval, ms: int) -> int:
    f = iv.floor(ms)
    return f if f >= ms else iv.next_open(f)


def cut_ranges(
    lfs: LakeFS,
    tt: str,
    iv: Interval,
    symbol: str,
    candidates: Collection[Span],
    window: Span,
    empty_files: Collection[int],
) -> list[Span]:
    """Ranges of ``window`` that the lake lacks after the last candle of a unit in ``candidates``
    (units an archive file covers and the lake may lack candles of), when the series does not go on
    lacking candles into the next unit (module doc); and the whole of a candidate unit without any
    candle whose start is in ``empty_files`` (its file was ingested without a row). Ranges the
    exchange confirmed empty are left out."""
    if not candidates:
        return []
    lo, hi = window
    wanted = set(candidates)
    empties = [(r.start_ms, r.end_ms) for r in read_empty_ranges(lfs, tt, iv.name, symbol)]
    out: list[Span] = []
    for s0, s1 in merge_spans(list(wanted)):
        after = units(iv, s1, s1 + 1)[0][1]  # the unit after the run: where the series resumes
        slots = _slots(iv, _opens(lfs, tt, iv, symbol, s0, after))
        for u0, u1 in units(iv, s0, s1):
            if (u0, u1) not in wanted:
                continue
            i0, i1 = np.searchsorted(slots, [u0, u1])
            if i0 == i1:
                if u0 not in empty_files:
                    continue  # no file covers it (``lacking``), or its file failed
                gap = (u0, u1)
            else:
                last = int(slots[i1 - 1])
                if last >= iv.floor(u1 - 1):
                    continue  # a hole inside the unit, if any: maintenance-shaped
                nxt = units(iv, u1, u1 + 1)[0][1]
                if i1 < len(slots) and _first_open_from(iv, u1) < slots[i1] < nxt:
                    continue  # the hole goes on past the unit's end: maintenance-shaped
                gap = (iv.next_open(last), u1)
            for a, b in span_minus(gap, empties):
                a, b = max(a, lo), min(b, hi)
                if a < b and iv.count(a, b) > 0:
                    out.append((a, b))
    return merge_spans(out)


def kept_ranges(
    lfs: LakeFS, tt: str, iv: Interval, symbol: str, lost: Sequence[Span], settled: Sequence[Span] = ()
) -> list[tuple[int, int, int]]:
    """Per range of ``lost`` (where a re-uploaded file has no candle and its earlier version's rows
    were kept) outside ``settled`` (what other files of the run have candles for): the part from the
    first to the end of the last stored archive candle, and how many there are; ranges without any
    are left out."""
    done = merge_spans(settled)
    out: list[tuple[int, int, int]] = []
    for a, b in merge_spans([x for r in lost for x in span_minus(r, done)]):
        t = _opens(lfs, tt, iv, symbol, a, b, archive=True)
        if t.len():
            first, last = int(t.min()), int(t.max())  # type: ignore[arg-type]
            out.append((max(a, iv.floor(first)), min(b, iv.next_open(iv.floor(last))), t.len()))
    return out
