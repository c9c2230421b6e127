"""Deterministic 1s candles of a (symbol, day), made from that day's final 1m candles.

The 1m series stays the base truth: ``generate_seconds`` splits each existing minute into its 60
seconds so that ``aggregate(seconds, seconds.t - seconds.t % 60_000)`` gives the minutes back exactly,
in every field. Minutes that do not exist (not listed, maintenance) have no seconds; every minute that
exists has all 60. Per minute, with integer arithmetic only where sums must be exact:

* a zero-volume minute: 60 zero-volume seconds at its price (o = h = l = c = its close);
* a traded minute: ``k`` traded seconds (``1 <= k <= min(60, n, v)``, random) at random positions; the
  other seconds have zero volume and carry the last price: the previous minute's close before the
  first traded second (the minute's own open for the first minute of the day, which generation makes
  the previous day's last close), the last traded second's close after it;
* volume, trades, taker volume and both quote volumes are split with every traded second getting
  ``v >= 1`` and ``n >= 1``, ``tb <= v`` and ``tq <= q`` per second, and exact sums. Each split is the
  difference of ``floor(total * F)`` over a cumulative fraction ``F`` that rises from 0 to exactly 1.0
  (float products are monotone, and ``total * 1.0`` is exact below 2**53), so no product can overflow:
  taker volume and taker quote volume are split on their own and added to the maker parts, which
  is what keeps them below the totals per second; quote volume follows the volume's fractions;
* prices: the first traded second opens at the minute's open, the last closes at its close, the
  others close on a noisy path from open to close inside [low, high]; each traded second opens at
  the previous traded second's close; wicks stay inside [low, high], and one traded second reaches the
  minute's high, one its low;
* trade ids: contiguous runs of the minute's ``[f, L]``, in time order.

Random draws are seeded by (symbol key, day) and laid out by minute of the day, so any day is
generated on its own and masking or correcting one minute leaves the other minutes' seconds as they
were. Everything is vectorized over a (minutes, 60) matrix; a full day takes ~10 ms.
"""

from __future__ import annotations

import numpy as np

from lake.sim.candles import Candles
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE
from lake.sim.universe import SymbolInfo

__all__ = ["MS_PER_SECOND", "generate_seconds"]

MS_PER_SECOND = 1000
_S = 60
_OFFSETS = np.arange(_S, dtype=np.int64) * MS_PER_SECOND
_SALT = 0x15EC  # keeps the seconds' stream apart from the minutes' generator


def _rng(info: SymbolInfo, day: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([info.key, day % 2**32, _SALT])))


def _split(total: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Integer parts of ``total`` (per row) along a row's cumulative fraction ``frac`` (0 → 1.0)."""
    cum = np.floor(total.astype(np.float64)[:, None] * frac).astype(np.int64)
    return np.diff(cum, axis=1, prepend=0)


def _cumfrac(w: np.ndarray) -> np.ndarray:
    """Cumulative share of non-negative row weights: 0 before the first weight, exactly 1.0 from the last."""
    cum = np.cumsum(w, axis=1, dtype=np.float64)
    tot = cum[:, -1:]
    return np.divide(cum, tot, out=np.zeros_like(cum), where=tot > 0)


def generate_seconds(info: SymbolInfo, day: int, m: Candles) -> Candles:
    """The 1s candles of ``day`` (days since the epoch) from its final 1m candles ``m`` (all of that day)."""
    n_min = len(m)
    if n_min == 0:
        return Candles.empty()
    rng = _rng(info, day)
    draws = rng.random((7, 1440, _S))
    pick = rng.random(1440)
    mod = (m.t - day * MS_PER_DAY) // MS_PER_MINUTE
    if mod.min() < 0 or mod.max() >= 1440:
        raise ValueError("minutes outside the day")
    u = draws[:, mod]  # (7, M, 60)
    traded_min = m.v > 0
    kmax = np.minimum(np.minimum(m.n, m.v), _S)
    k = np.where(traded_min, 1 + np.floor(pick[mod] * kmax).astype(np.int64), 0)
    k = np.minimum(k, kmax)  # pick < 1, but keep the bound explicit

    # Which seconds trade: the k smallest of a random key per minute (rank 0..59 is a random order).
    rank = np.argsort(np.argsort(u[0], axis=1), axis=1)
    traded = rank < k[:, None]
    order = np.cumsum(traded, axis=1) - 1  # 0..k-1 in time order on traded seconds
    kk = k[:, None]

    # Volumes, trades and taker parts.
    frac = _cumfrac(np.where(traded, 0.2 + u[1], 0.0))
    one = traded.astype(np.int64)
    reserved_taker = traded & (rank < np.minimum(m.tb, k)[:, None])  # the 1 lot each second has
    tb_rest = m.tb - np.minimum(m.tb, k)
    y = _split(tb_rest, frac)
    z = _split(m.v - k - tb_rest, frac)
    v = one + y + z
    tb = reserved_taker.astype(np.int64) + y
    n = one + _split(m.n - k, frac)
    vfrac = _cumfrac(v.astype(np.float64))
    tq = _split(m.tq, vfrac)
    q = tq + _split(m.q - m.tq, vfrac)

    # Trade ids: contiguous runs in time order.
    last_id = m.f[:, None] + np.cumsum(n, axis=1) - 1
    L = np.where(traded, last_id, -1)
    f = np.where(traded, last_id - n + 1, -1)

    # Prices.
    op, H, Lo, C = m.o[:, None], m.h[:, None], m.l[:, None], m.c[:, None]
    span = H - Lo
    path = op + (C - op) * (order + 1) / np.maximum(kk, 1) + (u[2] - 0.5) * span * 0.6
    close = np.clip(np.rint(path).astype(np.int64), Lo, H)
    close = np.where(traded & (order == kk - 1), C, close)
    prev = np.concatenate((m.o[:1], m.c[:-1]))  # last price before each minute
    start = np.where(traded_min, prev, m.c)  # a quiet minute carries its own price throughout
    # Last price at each second: forward fill of traded closes, from the minute's start price.
    idx = np.where(traded, np.arange(_S)[None, :], -1)
    last = np.maximum.accumulate(idx, axis=1)
    carried = np.where(last >= 0, np.take_along_axis(close, np.maximum(last, 0), axis=1), start[:, None])
    before = np.concatenate((start[:, None], carried[:, :-1]), axis=1)  # last price before each second
    opn = np.where(traded & (order == 0), op, before)
    top, bot = np.maximum(opn, close), np.minimum(opn, close)
    hi = top + np.floor(u[3] ** 3 * (H - top)).astype(np.int64)
    lo = bot - np.floor(u[4] ** 3 * (bot - Lo)).astype(np.int64)
    # One traded second reaches the minute's high, one its low.
    rows = np.flatnonzero(traded_min)
    at_h = np.argmax(np.where(traded, u[5], -1.0), axis=1)[rows]
    at_l = np.argmax(np.where(traded, u[6], -1.0), axis=1)[rows]
    hi[rows, at_h] = m.h[rows]
    lo[rows, at_l] = m.l[rows]
    hi = np.where(traded, hi, carried)
    lo = np.where(traded, lo, carried)
    opn = np.where(traded, opn, carried)
    close = np.where(traded, close, carried)

    return Candles(
        t=(m.t[:, None] + _OFFSETS).ravel(),
        o=opn.ravel(), h=hi.ravel(), l=lo.ravel(), c=close.ravel(),
        v=v.ravel(), q=q.ravel(), n=n.ravel(), tb=tb.ravel(), tq=tq.ravel(),
        f=f.ravel(), L=L.ravel(),
    )  # fmt: skip
