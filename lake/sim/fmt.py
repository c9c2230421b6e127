"""Wire formats: REST kline rows, archive CSV lines and websocket kline events.

Integers become decimal strings (spot: always 8 decimals, like Binance; futures: the symbol's
precision). REST rows are formatted in bulk with Polars into one byte blob per (symbol, interval, day)
plus row offsets, so answering a request is slicing and joining bytes, not ``json.dumps`` per row.

Row layout (12 fields; 0, 6 and 8 are JSON integers): open time, open, high, low, close, volume,
close time, quote volume, trades, taker-buy volume, taker-buy quote volume, "0". On COIN-M field 5 is
contracts and field 7 the base-asset volume (that is what ``Candles.v``/``q`` hold there).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from lake.binance.intervals import Interval
from lake.sim.candles import Candles
from lake.sim.universe import SymbolInfo

__all__ = ["Block", "close_times", "csv_bytes", "dec_str", "json_block", "json_row", "ws_kline_event"]

_SPOT_DECIMALS = 8
Layout = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (decimals, padded width) x price/qty/quote


@dataclass(frozen=True, slots=True)
class Block:
    """Formatted REST rows: row ``i`` is ``blob[off[i]:off[i+1]]`` and ends with a comma."""

    t: np.ndarray
    off: np.ndarray
    blob: bytes

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def slice(self, i: int, j: int) -> bytes:
        return self.blob[int(self.off[i]) : int(self.off[j])]

    @property
    def nbytes(self) -> int:
        return len(self.blob) + 16 * len(self)


def close_times(iv: Interval, t: np.ndarray) -> np.ndarray:
    """Binance closeTime of each candle: next open − 1 ms."""
    if iv.ms is not None:
        return t + (iv.ms - 1)
    months = t.astype("datetime64[ms]").astype("datetime64[M]") + 1
    return months.astype("datetime64[ms]").astype(np.int64) - 1


def _decimals(info: SymbolInfo) -> Layout:
    """(decimals, padded width) for price, quantity and quote-volume fields."""
    spot = info.market == "spot"

    def pad(d: int) -> tuple[int, int]:
        return d, (_SPOT_DECIMALS if spot else d)

    return pad(info.price_dec), pad(info.qty_dec), pad(info.quote_dec)


def dec_str(x: int, d: int, pad: int) -> str:
    """``dec_str(123456, 2, 8) == "1234.56000000"``."""
    if d == 0:
        s = str(x)
        return s + "." + "0" * pad if pad else s
    p = 10**d
    return f"{x // p}.{x % p:0{d}d}" + "0" * (pad - d)


def _dec_expr(col: str, d: int, pad: int) -> pl.Expr:
    x = pl.col(col)
    if d == 0:
        s = x.cast(pl.String)
        return s + ("." + "0" * pad) if pad else s
    p = 10**d
    s = (x // p).cast(pl.String) + "." + (x % p).cast(pl.String).str.zfill(d)
    return s + "0" * (pad - d) if pad > d else s


def _frame(c: Candles, iv: Interval, micro: bool) -> pl.DataFrame:
    t, close = c.t, close_times(iv, c.t)
    if micro:
        t, close = t * 1000, close * 1000 + 999
    cols = {"t": t, "T": close, "o": c.o, "h": c.h, "l": c.l, "c": c.c, "v": c.v, "q": c.q, "n": c.n, "tb": c.tb, "tq": c.tq}
    return pl.DataFrame([pl.Series(k, v) for k, v in cols.items()])


def _strs(layout: Layout) -> list[pl.Expr]:
    (pd, pp), (vd, vp), (qd, qp) = layout
    return [
        _dec_expr("o", pd, pp), _dec_expr("h", pd, pp), _dec_expr("l", pd, pp), _dec_expr("c", pd, pp),
        _dec_expr("v", vd, vp), _dec_expr("q", qd, qp), _dec_expr("tb", vd, vp), _dec_expr("tq", qd, qp),
    ]  # fmt: skip


@functools.lru_cache(maxsize=256)
def _json_expr(layout: Layout) -> pl.Expr:
    """The row expression of one decimal layout, built once (building costs more than running it)."""
    o, h, lo, cl, v, q, tb, tq = _strs(layout)
    t, big_t, n = (pl.col(k).cast(pl.String) for k in ("t", "T", "n"))
    return pl.concat_str(
        [pl.lit("["), t, pl.lit(',"'), o, pl.lit('","'), h, pl.lit('","'), lo, pl.lit('","'), cl,
         pl.lit('","'), v, pl.lit('",'), big_t, pl.lit(',"'), q, pl.lit('",'), n, pl.lit(',"'), tb,
         pl.lit('","'), tq, pl.lit('","0"],')],
    ).alias("r")  # fmt: skip


@functools.lru_cache(maxsize=256)
def _csv_expr(layout: Layout) -> pl.Expr:
    o, h, lo, cl, v, q, tb, tq = _strs(layout)
    return pl.concat_str(
        [pl.col("t").cast(pl.String), o, h, lo, cl, v, pl.col("T").cast(pl.String), q,
         pl.col("n").cast(pl.String), tb, tq, pl.lit("0")],
        separator=",",
    ).alias("r")  # fmt: skip


def json_block(info: SymbolInfo, iv: Interval, c: Candles, *, micro: bool = False) -> Block:
    """REST rows of ``c`` as one blob: ``[t,"o","h","l","c","v",T,"q",n,"V","Q","0"],`` per row."""
    if not len(c):
        return Block(c.t, np.zeros(1, dtype=np.int64), b"")
    rows: list[str] = _frame(c, iv, micro).select(_json_expr(_decimals(info))).to_series().to_list()
    off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=off[1:])
    return Block(c.t, off, "".join(rows).encode("ascii"))


def json_row(info: SymbolInfo, iv: Interval, c: Candles, i: int, *, micro: bool = False) -> bytes:
    """One REST row (with its trailing comma), formatted in plain Python: cheaper than a Polars frame."""
    (pd, pp), (vd, vp), (qd, qp) = _decimals(info)
    t = int(c.t[i])
    close = int(close_times(iv, c.t[i : i + 1])[0])
    if micro:
        t, close = t * 1000, close * 1000 + 999
    p = [dec_str(int(getattr(c, k)[i]), pd, pp) for k in ("o", "h", "l", "c")]
    v, q = dec_str(int(c.v[i]), vd, vp), dec_str(int(c.q[i]), qd, qp)
    tb, tq = dec_str(int(c.tb[i]), vd, vp), dec_str(int(c.tq[i]), qd, qp)
    row = f'[{t},"{p[0]}","{p[1]}","{p[2]}","{p[3]}","{v}",{close},"{q}",{int(c.n[i])},"{tb}","{tq}","0"],'
    return row.encode("ascii")


def csv_bytes(info: SymbolInfo, iv: Interval, c: Candles, *, micro: bool, header: bool) -> bytes:
    """Archive CSV: the 12 REST fields per line (timestamps in µs when ``micro``), optional header."""
    head = (
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
        "taker_buy_volume,taker_buy_quote_volume,ignore\n"
        if header
        else ""
    )
    if not len(c):
        return head.encode()
    lines: list[str] = _frame(c, iv, micro).select(_csv_expr(_decimals(info))).to_series().to_list()
    return (head + "\n".join(lines) + "\n").encode("ascii")


def rest_rows(info: SymbolInfo, iv: Interval, c: Candles, *, micro: bool = False) -> list[list[Any]]:
    """REST rows as Python lists (what ``json.loads`` of a response gives)."""
    blk = json_block(info, iv, c, micro=micro)
    return list(json.loads(b"[" + blk.blob[:-1] + b"]")) if len(blk) else []


def ws_kline_event(info: SymbolInfo, iv: Interval, c: Candles, i: int, *, closed: bool, event_ms: int) -> dict[str, Any]:
    """The websocket kline event for candle ``i`` of ``c``."""
    (pd, pp), (vd, vp), (qd, qp) = _decimals(info)
    t = int(c.t[i])
    return {
        "e": "kline",
        "E": int(event_ms),
        "s": info.symbol,
        "k": {
            "t": t,
            "T": int(close_times(iv, c.t[i : i + 1])[0]),
            "s": info.symbol,
            "i": iv.name,
            "f": int(c.f[i]),
            "L": int(c.L[i]),
            "o": dec_str(int(c.o[i]), pd, pp),
            "c": dec_str(int(c.c[i]), pd, pp),
            "h": dec_str(int(c.h[i]), pd, pp),
            "l": dec_str(int(c.l[i]), pd, pp),
            "v": dec_str(int(c.v[i]), vd, vp),
            "n": int(c.n[i]),
            "x": closed,
            "q": dec_str(int(c.q[i]), qd, qp),
            "V": dec_str(int(c.tb[i]), vd, vp),
            "Q": dec_str(int(c.tq[i]), qd, qp),
            "B": "0",
        },
    }
