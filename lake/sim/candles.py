"""Integer candle arrays and Binance's derivation rule.

Values are held as integers in units of the symbol's tick (prices), lot step (volumes) and quote-volume
decimal (quote volumes), so sums are exact and every value prints as a short decimal string whose
``float()`` equals ``int / 10**decimals`` exactly (both are the correctly rounded value of the same
decimal number, as long as the integer is below 2**53, which generation guarantees).

Derivation (``aggregate``): open/high/low come only from sub-candles with volume > 0; the close is the
last sub-candle's close; volumes, quote volumes, trade counts and taker volumes are sums. When every
sub-candle has zero volume, open = high = low = close = the last close (a zero-volume sub-candle already
carries the previous close in all four prices). A target candle exists iff it has a sub-candle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

__all__ = ["FIELDS", "Candles", "aggregate", "partial"]

FIELDS = ("t", "o", "h", "l", "c", "v", "q", "n", "tb", "tq", "f", "L")
_BIG = np.iinfo(np.int64).max


@dataclass(slots=True)
class Candles:
    """Parallel int64 arrays, one element per candle, sorted by open time ``t`` (ms).

    ``o h l c`` in ticks, ``v tb`` in lots (COIN-M: contracts), ``q tq`` in quote-volume units (COIN-M:
    base-asset units), ``n`` trades, ``f``/``L`` first/last trade id (-1 when there were no trades).
    """

    t: np.ndarray
    o: np.ndarray
    h: np.ndarray
    l: np.ndarray  # noqa: E741 - Binance's own field letter
    c: np.ndarray
    v: np.ndarray
    q: np.ndarray
    n: np.ndarray
    tb: np.ndarray
    tq: np.ndarray
    f: np.ndarray
    L: np.ndarray

    def __len__(self) -> int:
        return int(self.t.shape[0])

    @classmethod
    def empty(cls) -> Candles:
        return cls(*(np.zeros(0, dtype=np.int64) for _ in FIELDS))

    def take(self, idx: np.ndarray | slice) -> Candles:
        return Candles(*(getattr(self, k)[idx] for k in FIELDS))

    def copy(self) -> Candles:
        return Candles(*(getattr(self, k).copy() for k in FIELDS))

    @classmethod
    def concat(cls, parts: Sequence[Candles]) -> Candles:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in FIELDS))

    def between(self, start: int, end: int) -> Candles:
        """Candles with open time in ``[start, end)``."""
        i, j = np.searchsorted(self.t, [start, end], side="left")
        return self.take(slice(int(i), int(j)))

    def row(self, i: int) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)[i]) for f in fields(self)}


def aggregate(sub: Candles, bucket: np.ndarray) -> Candles:
    """Combine sub-candles into candles; ``bucket[i]`` is the target open time of ``sub[i]`` (sorted)."""
    n = len(sub)
    if n == 0:
        return Candles.empty()
    starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
    ends = np.concatenate((starts[1:], [n])) - 1
    traded = sub.v > 0
    close = sub.c[ends]
    high = np.maximum.reduceat(np.where(traded, sub.h, -1), starts)
    low = np.minimum.reduceat(np.where(traded, sub.l, _BIG), starts)
    first = np.minimum.reduceat(np.where(traded, np.arange(n), n), starts)
    quiet = first >= n  # no sub-candle traded: all four prices are the last close
    opn = np.where(quiet, close, sub.o[np.minimum(first, n - 1)])
    f = np.minimum.reduceat(np.where(sub.n > 0, sub.f, _BIG), starts)
    return Candles(
        t=bucket[starts],
        o=opn,
        h=np.where(quiet, close, high),
        l=np.where(quiet, close, low),
        c=close,
        v=np.add.reduceat(sub.v, starts),
        q=np.add.reduceat(sub.q, starts),
        n=np.add.reduceat(sub.n, starts),
        tb=np.add.reduceat(sub.tb, starts),
        tq=np.add.reduceat(sub.tq, starts),
        f=np.where(f == _BIG, -1, f),
        L=np.maximum.reduceat(sub.L, starts),
    )


def partial(c: Candles, frac: float) -> Candles:
    """The candles as they look ``frac`` (0..1) of the way through: the forming candle's partial values.

    Prices move linearly from open towards close, high/low span what has been seen, volumes and counts
    grow proportionally. Used for REST's forming candle and websocket ``x: false`` updates.
    """
    frac = min(max(frac, 0.0), 1.0)
    cp = c.o + np.rint((c.c - c.o) * frac).astype(np.int64)
    v = np.floor(c.v * frac).astype(np.int64)
    traded = v > 0
    share = np.where(c.v > 0, v / np.maximum(c.v, 1), 0.0)
    q = np.floor(c.q * share).astype(np.int64)
    n = np.where(traded, np.maximum(np.floor(c.n * frac).astype(np.int64), 1), 0)
    return Candles(
        t=c.t,
        o=c.o,
        h=np.where(traded, np.maximum(c.o, cp), c.o),
        l=np.where(traded, np.minimum(c.o, cp), c.o),
        c=np.where(traded, cp, c.o),
        v=v,
        q=q,
        n=n,
        tb=np.minimum(np.floor(c.tb * frac).astype(np.int64), v),
        tq=np.minimum(np.floor(c.tq * frac).astype(np.int64), q),
        f=np.where(traded, c.f, -1),
        L=np.where(traded, c.f + n - 1, -1),
    )
