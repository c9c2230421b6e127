"""Deterministic, random-access generation of 1m candles.

Two levels, so any (symbol, day) is generated on its own in O(day):

1. A per-symbol daily walk of log prices (one vectorized cumulative sum over ~27 years of days,
   softly bounded with ``tanh`` so prices stay within a factor of ~6 of the reference price). The value
   at day ``d`` is the open of day ``d``.
2. An intraday walk seeded by (seed, symbol, day): a Brownian bridge in log price from day ``d``'s open
   to day ``d+1``'s open, so the last close of a day equals the next day's first open.

Zero-volume minutes copy the previous close into open/high/low/close (never the day's last minute, so
the day-to-day bridge holds); the minute after one opens with a small gap, like a first trade would. Volumes follow an intraday activity profile and the size of the move;
quote volume is volume × a price inside [low, high]; taker volumes are a fraction of the totals.
Trade ids are ``day * 10**7 + running count`` (a day never has 10**7 trades), so ``f``/``L`` are
random-access too.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np

from lake.sim.candles import Candles
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE
from lake.sim.universe import BTC_USD, MAX_LOTS_PER_MINUTE, SymbolInfo

__all__ = ["WALK_DAY0", "WALK_DAYS", "daily_walk", "generate_day"]

WALK_DAY0 = int(dt.datetime(2015, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) // MS_PER_DAY
WALK_DAYS = 365 * 27
_ANCHOR = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) // MS_PER_DAY - WALK_DAY0
_BOUND = math.log(6.0)
_T = 1440
_MINUTES = np.arange(_T, dtype=np.int64) * MS_PER_MINUTE
_FRAC = np.arange(1, _T + 1, dtype=np.float64) / _T
# Activity peaks in the European/US afternoon and is quietest around 04:00 UTC.
_PROFILE = 1.0 + 0.45 * np.cos(2 * np.pi * (np.arange(_T) / _T - 14 / 24))
_TRADE_ID_DAY = 10**7
_MAX_TRADES_PER_MINUTE = 6000


def daily_walk(info: SymbolInfo) -> np.ndarray:
    """Log open price of every day from ``WALK_DAY0`` (index 0) for ``WALK_DAYS + 1`` days."""
    rng = np.random.default_rng([info.key, 0])
    steps = rng.standard_normal(WALK_DAYS + 1) * info.daily_vol
    x = np.cumsum(steps)
    x -= x[_ANCHOR]
    return math.log(info.p0) + _BOUND * np.tanh(x / _BOUND)


def _ticks(logp: np.ndarray | float, scale: float) -> np.ndarray:
    return np.maximum(np.rint(np.exp(logp) * scale), 1).astype(np.int64)


def generate_day(info: SymbolInfo, walk: np.ndarray, day: int) -> Candles:
    """All 1440 one-minute candles of ``day`` (days since the epoch), before listing/maintenance masks."""
    k = day - WALK_DAY0
    if not 0 <= k < WALK_DAYS:
        raise ValueError(f"day {day} outside the simulated calendar")
    rng = np.random.Generator(np.random.PCG64((info.key * 0x9E3779B97F4A7C15 + day) % 2**63))
    z = rng.standard_normal((4, _T))
    u = rng.random((3, _T))
    x0, x1 = float(walk[k]), float(walk[k + 1])
    scale = 10.0**info.price_dec
    sig = info.daily_vol / math.sqrt(_T) * _PROFILE

    w = np.cumsum(z[0] * sig)
    bridge = x0 + w - _FRAC * (w[-1] - (x1 - x0))
    close = _ticks(bridge, scale)
    close[-1] = _ticks(x1, scale)
    zero = u[0] < info.zero_rate
    zero[-1] = False
    # A zero-volume minute repeats the previous close: forward-fill the chain open0, c0, c1, ...
    chain = np.concatenate((_ticks(x0, scale).reshape(1), close))
    keep = np.concatenate(([True], ~zero))
    chain = chain[np.maximum.accumulate(np.where(keep, np.arange(_T + 1), 0))]
    o, c = chain[:-1], chain[1:]
    # After a quiet minute the first trade rarely prints exactly at the last close: open with a gap.
    after_quiet = np.concatenate(([False], zero[:-1])) & ~zero
    gap = np.rint(z[3] * np.maximum(1.0, 2 * sig * c)).astype(np.int64)
    o = np.maximum(np.where(after_quiet, o + gap, o), 1)
    wick = sig * 0.6
    h = np.maximum(o, c) + np.rint(np.abs(z[1]) * wick * c).astype(np.int64)
    lo = np.maximum(np.minimum(o, c) - np.rint(np.abs(z[2]) * wick * c).astype(np.int64), 1)
    h = np.where(zero, o, h)
    lo = np.where(zero, o, lo)

    # Volume: notional per minute (quote units; COIN-M: USD) scaled by activity and by the move.
    move = np.abs(np.log(c / o)) / sig
    notional = info.liquidity * _PROFILE * np.exp(0.6 * z[3] - 0.18) * (0.6 + 0.4 * move)
    notional = np.minimum(notional, 50.0 * info.liquidity)
    vwap = (lo + u[1] * (h - lo)) / scale  # a price inside [low, high]
    qs = 10.0**info.quote_dec
    if info.market == "cm":
        lots = np.maximum(np.rint(notional / info.contract_size), 1)
        base = lots * info.contract_size
        q = np.rint(base / vwap * qs)
        q = np.clip(q, np.ceil(base / (h / scale) * qs), np.floor(base / (lo / scale) * qs))
        usd = notional
    else:
        step = 10.0**-info.qty_dec
        lots = np.clip(np.rint(notional / ((o + c) / 2 / scale) / step), 1, MAX_LOTS_PER_MINUTE)
        qty = lots * step
        q = np.rint(qty * vwap * qs)
        q = np.clip(q, np.ceil(qty * (lo / scale) * qs), np.maximum(np.floor(qty * (h / scale) * qs), 0))
        usd = notional * (BTC_USD if info.quote == "BTC" else 1.0)
    v = np.where(zero, 0, lots).astype(np.int64)
    q = np.where(zero, 0, np.maximum(q, 0)).astype(np.int64)
    ratio = 0.3 + 0.4 * u[2]
    tb = np.floor(v * ratio).astype(np.int64)
    tq = np.minimum(np.floor(q * (tb / np.maximum(v, 1))), q).astype(np.int64)
    trade_usd = info.trade_size * (BTC_USD if info.quote == "BTC" else 1.0)
    n = np.clip(np.rint(usd / trade_usd * np.exp(0.3 * z[1])), 1, _MAX_TRADES_PER_MINUTE).astype(np.int64)
    n = np.where(zero, 0, n)
    last = day * _TRADE_ID_DAY + np.cumsum(n) - 1
    return Candles(
        t=day * MS_PER_DAY + _MINUTES,
        o=o, h=h, l=lo, c=c, v=v, q=q, n=n, tb=tb, tq=tq,
        f=np.where(n > 0, last - n + 1, -1),
        L=np.where(n > 0, last, -1),
    )  # fmt: skip
