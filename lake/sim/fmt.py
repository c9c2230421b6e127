"""Wire formats: REST kline rows, archive CSV lines and websocket kline events.

Integers become decimal strings (spot: always 8 decimals, like Binance; futures: the symbol's
precision). REST rows are formatted in bulk with NumPy (``npfmt``) into one byte blob per (symbol,
interval, day) plus row offsets, so answering a request is slicing and joining bytes, not ``json.dumps`` per row.

Row layout (12 fields; 0, 6 and 8 are JSON integers): open time, open, high, low, close, volume,
close time, quote volume, trades, taker-buy volume, taker-buy quote volume, "0" (non-zero on
USDⓈ-M REST, see ``_ignore_nonzero``). On COIN-M field 5 is contracts and field 7 the base-asset volume (that is what ``Candles.v``/``q`` hold there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from lake.binance.intervals import Interval
from lake.sim import npfmt
from lake.sim.candles import Candles
from lake.sim.universe import SymbolInfo

__all__ = ["Block", "close_times", "csv_bytes", "dec_str", "json_block", "json_row", "ws_kline_event"]

_SPOT_DECIMALS = 8
Layout = tuple[
    tuple[int, int], tuple[int, int], tuple[int, int]
]  # (decimals, padded width) x price/qty/quote


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


def _ignore_nonzero(info: SymbolInfo, csv: bool) -> bool:
    """USDⓈ-M REST rows carry a non-zero last ("ignore") field, as in the docs' example
    (``"17928899.62484339"``); the simulator repeats the quote volume there. Archive CSVs keep "0"."""
    return info.market == "um" and not csv


def _row_pieces(
    info: SymbolInfo, iv: Interval, c: Candles, micro: bool, csv: bool
) -> list[npfmt.Piece | str]:
    """REST row (``csv=False``) or archive CSV line pieces for every candle of ``c``."""
    t, close = c.t, close_times(iv, c.t)
    if micro:
        t, close = t * 1000, close * 1000 + 999
    (pd, pp), (vd, vp), (qd, qp) = _decimals(info)
    fields: list[tuple[bool, list[npfmt.Piece | str]]] = [  # (quoted in JSON, pieces)
        (False, [npfmt.integer(t)]),
        (True, npfmt.dec(c.o, pd, pp)), (True, npfmt.dec(c.h, pd, pp)), (True, npfmt.dec(c.l, pd, pp)),
        (True, npfmt.dec(c.c, pd, pp)), (True, npfmt.dec(c.v, vd, vp)),
        (False, [npfmt.integer(close)]),
        (True, npfmt.dec(c.q, qd, qp)),
        (False, [npfmt.integer(c.n)]),
        (True, npfmt.dec(c.tb, vd, vp)), (True, npfmt.dec(c.tq, qd, qp)),
        (True, npfmt.dec(c.q, qd, qp) if _ignore_nonzero(info, csv) else ["0"]),
    ]  # fmt: skip
    out: list[npfmt.Piece | str] = [] if csv else ["["]
    for i, (quoted, parts) in enumerate(fields):
        if i:
            out.append(",")
        q = '"' if quoted and not csv else ""
        out += [q, *parts, q]
    out.append("\n" if csv else "],")
    return out


def json_block(info: SymbolInfo, iv: Interval, c: Candles, *, micro: bool = False) -> Block:
    """REST rows of ``c`` as one blob: ``[t,"o","h","l","c","v",T,"q",n,"V","Q","0"],`` per row."""
    if not len(c):
        return Block(c.t, np.zeros(1, dtype=np.int64), b"")
    blob, off = npfmt.join_rows(_row_pieces(info, iv, c, micro, csv=False), len(c))
    return Block(c.t, off, blob)


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
    ign = q if _ignore_nonzero(info, False) else "0"
    row = (
        f'[{t},"{p[0]}","{p[1]}","{p[2]}","{p[3]}","{v}",{close},"{q}",{int(c.n[i])},"{tb}","{tq}","{ign}"],'
    )
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
    blob, _ = npfmt.join_rows(_row_pieces(info, iv, c, micro, csv=True), len(c))
    return head.encode() + blob


def rest_rows(info: SymbolInfo, iv: Interval, c: Candles, *, micro: bool = False) -> list[list[Any]]:
    """REST rows as Python lists (what ``json.loads`` of a response gives)."""
    blk = json_block(info, iv, c, micro=micro)
    return list(json.loads(b"[" + blk.blob[:-1] + b"]")) if len(blk) else []


def ws_kline_event(
    info: SymbolInfo, iv: Interval, c: Candles, i: int, *, closed: bool, event_ms: int
) -> dict[str, Any]:
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
