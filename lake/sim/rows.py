"""Kline row selection over cached, pre-formatted row blocks.

``RowServer.select`` answers "which rows, in which order" for the REST klines endpoint:

* ``newest_first=False``: the first ``limit`` rows with open time in ``[lo, hi]``, ascending
  (spot/USDⓈ-M with startTime).
* ``newest_first=True``: the most recent ``limit`` rows with open time in ``[lo, hi]``, still returned
  ascending (no times, endTime only, and COIN-M in general).

Closed candles come from cached blocks (one per symbol, interval and day for intervals up to 1d; one per
symbol, interval and "closed until" boundary for 1d and longer). Spot ``1s`` uses one block per hour
(3,600 rows) in a cache of its own (a quarter of ``cache_1s_mb``), so that a 1000-row page formats
at most a few thousand rows and 1s traffic does not evict the other intervals' blocks. The forming
candle (open ≤ now < close) is computed fresh with partial values, as Binance sends it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np

from lake.binance.intervals import Interval
from lake.sim.cache import ByteLRU
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE
from lake.sim.fmt import Block, json_block, json_row
from lake.sim.market import SimMarket
from lake.sim.universe import SymbolInfo

__all__ = ["RowServer"]

_HOUR = 3_600_000


class RowServer:
    """Formats and caches REST kline rows; selects them per request."""

    def __init__(self, market: SimMarket, cache_bytes: int | None = None):
        self.market = market
        budget = cache_bytes if cache_bytes is not None else market.config.cache_mb * 2**20 * 3 // 16
        self._blocks: ByteLRU[Block] = ByteLRU(budget, lambda b: b.nbytes + 200)
        self._blocks_1s: ByteLRU[Block] = ByteLRU(
            market.config.cache_1s_mb * 2**20 // 4, lambda b: b.nbytes + 200
        )

    def _key(self, info: SymbolInfo, iv: Interval, *rest: Hashable) -> tuple[Hashable, ...]:
        return (info.market, info.symbol, info.version, iv.name, *rest)

    def day_block(self, info: SymbolInfo, iv: Interval, day: int, micro: bool = False) -> Block:
        key = self._key(info, iv, day, micro)
        return self._blocks.get_or(
            key, lambda: json_block(info, iv, self.market.day_candles(info, iv, day), micro=micro)
        )

    def hour_block(self, info: SymbolInfo, iv: Interval, hour: int, micro: bool = False) -> Block:
        """1s rows of one hour (``hour`` counted from the epoch)."""
        key = self._key(info, iv, hour, micro)

        def make() -> Block:
            t0 = hour * _HOUR
            c = self.market.day_candles(info, iv, t0 // MS_PER_DAY).between(t0, t0 + _HOUR)
            return json_block(info, iv, c, micro=micro)

        return self._blocks_1s.get_or(key, make)

    def long_block(self, info: SymbolInfo, iv: Interval, until: int, micro: bool = False) -> Block:
        key = self._key(info, iv, "until", until, micro)
        return self._blocks.get_or(
            key, lambda: json_block(info, iv, self.market.long_candles(info, iv, until), micro=micro)
        )

    def select(
        self,
        info: SymbolInfo,
        iv: Interval,
        lo: int,
        hi: int,
        limit: int,
        now: int,
        *,
        newest_first: bool,
        micro: bool = False,
    ) -> tuple[bytes, int]:
        """The JSON array body and its row count."""
        fo = iv.floor(now)
        closed_hi = min(hi, fo - 1)
        # The forming candle (partial values) is built only when the page reaches it.
        want_forming = lo <= fo <= hi
        if newest_first:
            forming = self._forming(info, iv, now, micro) if want_forming else None
            parts, n = self._backward(info, iv, lo, closed_hi, limit - (forming is not None), fo, micro)
            if forming is not None and limit > 0:
                parts.append(forming)
                n += 1
        else:
            parts, n = self._forward(info, iv, lo, closed_hi, limit, fo, micro)
            forming = self._forming(info, iv, now, micro) if want_forming and n < limit else None
            if forming is not None:
                parts.append(forming)
                n += 1
        body = b"".join(parts)
        return b"[" + body[:-1] + b"]", n

    def _forming(self, info: SymbolInfo, iv: Interval, now: int, micro: bool) -> bytes | None:
        f = self.market.forming(info, iv, now)
        return None if f is None else json_row(info, iv, f, 0, micro=micro)

    def _sub_day(self, iv: Interval) -> bool:
        return iv.ms is not None and iv.ms <= MS_PER_DAY

    def _span(self, iv: Interval) -> tuple[int, Callable[[SymbolInfo, Interval, int, bool], Block]]:
        """The block size of a sub-day interval and how to get one: 1s by the hour, else by the day."""
        return (_HOUR, self.hour_block) if iv.name == "1s" else (MS_PER_DAY, self.day_block)

    def _forward(
        self, info: SymbolInfo, iv: Interval, lo: int, hi: int, limit: int, fo: int, micro: bool
    ) -> tuple[list[bytes], int]:
        parts: list[bytes] = []
        left = limit
        if left <= 0 or hi < lo:
            return parts, 0
        if not self._sub_day(iv):
            blk = self.long_block(info, iv, fo, micro)
            i, j = _range(blk, lo, hi)
            j = min(j, i + left)
            return ([blk.slice(i, j)] if j > i else []), j - i
        span, block = self._span(iv)
        uni = self.market.universe
        k = lo // span
        while left > 0:
            # validity is per minute: ask from the minute holding the probe (1s: its seconds from lo on)
            probe = max(lo, k * span)
            nxt = uni.next_valid(info, probe - probe % MS_PER_MINUTE)
            if nxt is None or iv.floor(nxt) > hi:
                break
            k = nxt // span
            blk = block(info, iv, k, micro)
            i, j = _range(blk, lo, hi)
            j = min(j, i + left)
            if j > i:
                parts.append(blk.slice(i, j))
                left -= j - i
            k += 1
        return parts, limit - left

    def _backward(
        self, info: SymbolInfo, iv: Interval, lo: int, hi: int, limit: int, fo: int, micro: bool
    ) -> tuple[list[bytes], int]:
        parts: list[bytes] = []
        left = limit
        if left <= 0 or hi < lo:
            return parts, 0
        if not self._sub_day(iv):
            blk = self.long_block(info, iv, fo, micro)
            i, j = _range(blk, lo, hi)
            i = max(i, j - left)
            return ([blk.slice(i, j)] if j > i else []), j - i
        assert iv.ms is not None
        span, block = self._span(iv)
        uni = self.market.universe
        k = hi // span
        while left > 0:
            prv = uni.prev_valid(info, min(k * span + span - 1, hi + iv.ms - 1))
            # the latest candle opening in the valid minute prv (1s: its last second)
            if prv is None or iv.floor(prv + MS_PER_MINUTE - 1) < lo:
                break
            k = prv // span
            blk = block(info, iv, k, micro)
            i, j = _range(blk, lo, hi)
            i = max(i, j - left)
            if j > i:
                parts.append(blk.slice(i, j))
                left -= j - i
            k -= 1
        parts.reverse()
        return parts, limit - left


def _range(blk: Block, lo: int, hi: int) -> tuple[int, int]:
    """Indexes ``[i, j)`` of rows with open time in ``[lo, hi]``."""
    i = int(np.searchsorted(blk.t, lo, side="left"))
    j = int(np.searchsorted(blk.t, hi, side="right"))
    return i, max(i, j)
