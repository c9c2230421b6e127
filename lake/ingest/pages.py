"""Kline pagination as pure functions: which ranges are missing, which requests cover them, and what
an answer proves.

Every page is a window of exactly ``limit`` candle slots, requested with ``startTime`` = the first
slot and ``endTime`` = the window end − 1 ms. All markets then answer the same thing — every candle
of the window — however they select rows: spot/USDⓈ-M ascending from startTime, COIN-M the most
recent ``limit`` rows before endTime (and COIN-M's 200-day span cap is respected by shrinking the
window). So an answer is unambiguous: a slot of the window without a candle is confirmed empty
(maintenance, no trading, not yet listed, delisted).

The limit is the market's most weight-efficient size (1000 spot; 499 futures), and a short last
page asks for just its slots (on futures ≤ 99 slots costs weight 1 instead of 2).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lake.binance.intervals import MS_PER_DAY, Interval
from lake.binance.markets import Market

__all__ = [
    "Page",
    "answer_gaps",
    "missing_ranges",
    "page_limit",
    "plan_pages",
    "subtract_ranges",
]


@dataclass(frozen=True, slots=True)
class Page:
    """One klines request: candle slots opening in ``[start_ms, end_ms)``, at most ``limit`` of them."""

    start_ms: int
    end_ms: int
    limit: int
    weight: int

    @property
    def end_time(self) -> int:
        """The request's (inclusive) ``endTime``."""
        return self.end_ms - 1


def page_limit(market: Market, interval: Interval) -> int:
    """Slots per full page: the efficient request size, capped by COIN-M's span limit."""
    limit = market.kline_request_limit
    if market.kline_max_span_days is not None:
        span = market.kline_max_span_days * MS_PER_DAY
        limit = min(limit, max(1, (span - 1) // interval.approx_ms))
    return limit


def _advance(interval: Interval, t: int, n: int) -> int:
    if interval.ms is not None:
        return t + n * interval.ms
    for _ in range(n):
        t = interval.next_open(t)
    return t


def plan_pages(market: Market, interval: Interval, start_ms: int, end_ms: int) -> list[Page]:
    """Pages covering the aligned slots in ``[start_ms, end_ms)``, in time order."""
    full = page_limit(market, interval)
    t = interval.floor(start_ms)
    if t < start_ms:
        t = interval.next_open(t)
    pages: list[Page] = []
    while t < end_ms:
        nxt = _advance(interval, t, full)
        if nxt >= end_ms:
            n = interval.count(t, end_ms)
            pages.append(Page(t, end_ms, n, market.kline_weight(n)))
            break
        pages.append(Page(t, nxt, full, market.kline_weight(full)))
        t = nxt
    return pages


def subtract_ranges(start_ms: int, end_ms: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start_ms, end_ms)`` minus the union of ``ranges`` (half-open), as sorted disjoint ranges."""
    out: list[tuple[int, int]] = []
    t = start_ms
    for a, b in sorted(ranges):
        if b <= t:
            continue
        if a >= end_ms:
            break
        if a > t:
            out.append((t, min(a, end_ms)))
        t = max(t, b)
        if t >= end_ms:
            break
    if t < end_ms:
        out.append((t, end_ms))
    return out


def _slot_ranges(
    interval: Interval, start_ms: int, end_ms: int, present: Sequence[int]
) -> list[tuple[int, int]]:
    """Runs of aligned slots in ``[start_ms, end_ms)`` whose open time is not in sorted ``present``."""
    out: list[tuple[int, int]] = []
    t = interval.floor(start_ms)
    if t < start_ms:
        t = interval.next_open(t)
    i = bisect.bisect_left(present, t)
    while t < end_ms:
        if i < len(present) and present[i] < end_ms:
            p = present[i]
            if p > t:
                out.append((t, p))
            t = interval.next_open(p)
            i += 1
            while i < len(present) and present[i] < t:
                i += 1
        else:
            out.append((t, end_ms))
            break
    return out


def _slot_ranges_np(
    interval: Interval, start_ms: int, end_ms: int, opens: Sequence[int] | np.ndarray
) -> list[tuple[int, int]]:
    """``_slot_ranges`` for a fixed-length interval, on arrays (a year of 1m is 525,600 opens)."""
    ms = interval.ms
    assert ms is not None
    arr = np.asarray(opens, dtype=np.int64)
    t = interval.floor(start_ms)
    if t < start_ms:
        t += ms
    # An open time floors into [t, end_ms) exactly when it lies in it (t is aligned), so the window
    # is cut before flooring.
    arr = arr[(arr >= t) & (arr < end_ms)]
    present = interval.floor_many(arr)
    # Stored opens come sorted and aligned (one per slot): then the O(n log n) unique is skipped.
    if present.size > 1 and not bool(np.all(present[1:] > present[:-1])):
        present = np.unique(present)
    if present.size == 0:
        return [(t, end_ms)] if t < end_ms else []
    out: list[tuple[int, int]] = []
    if present[0] > t:
        out.append((t, int(present[0])))
    gap = np.flatnonzero(np.diff(present) > ms)
    out.extend((int(present[i]) + ms, int(present[i + 1])) for i in gap)
    last = int(present[-1]) + ms
    if last < end_ms:
        out.append((last, end_ms))
    return out


def missing_ranges(
    interval: Interval,
    start_ms: int,
    end_ms: int,
    stored_opens: Sequence[int] | np.ndarray,
    confirmed_empty: Iterable[tuple[int, int]] = (),
) -> list[tuple[int, int]]:
    """Ranges of ``[start_ms, end_ms)`` with slots neither stored nor confirmed empty.

    ``stored_opens`` are the stored candles' open times (any order; a list or an int64 array);
    irregular (non-aligned) open times fill the slot they fall in.
    """
    if interval.ms is not None and len(stored_opens) > 64:
        holes = _slot_ranges_np(interval, start_ms, end_ms, stored_opens)
    else:
        if isinstance(stored_opens, np.ndarray):
            stored_opens = [int(t) for t in stored_opens]
        present = sorted({interval.floor(t) for t in stored_opens})
        holes = _slot_ranges(interval, start_ms, end_ms, present)
    empties = sorted(confirmed_empty)
    out: list[tuple[int, int]] = []
    for a, b in holes:
        out.extend(subtract_ranges(a, b, empties))
    return out


def answer_gaps(
    interval: Interval, page: Page, opens: Sequence[int], *, recent_first: bool
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """What an answer with candle open times ``opens`` (sorted) proves about ``page``.

    Returns ``(empty, unresolved)``: the slot ranges confirmed empty, and a sub-range the answer
    does not speak for (``None`` normally). An answer can only be partial when it holds ``limit``
    rows while slots are missing (irregular open times): then the rows cover only part of the window
    — the start for ascending markets, the end for COIN-M (``recent_first``) — and the rest must be
    asked again.
    """
    floored = sorted({interval.floor(t) for t in opens if page.start_ms <= t < page.end_ms})
    gaps = _slot_ranges(interval, page.start_ms, page.end_ms, floored)
    if len(opens) < page.limit or not gaps or not floored:
        return gaps, None
    if recent_first:
        first = floored[0]
        return [g for g in gaps if g[0] >= first], ((page.start_ms, first) if first > page.start_ms else None)
    after = interval.next_open(floored[-1])
    return [g for g in gaps if g[1] <= after], ((after, page.end_ms) if after < page.end_ms else None)
