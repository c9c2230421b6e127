"""Vectorized decimal formatting with NumPy: many rows of text in a handful of array operations.

Each row is laid out in fixed-width byte slots (the widest value of each field decides the slot) with a
mask saying which bytes are present (leading zeros of integer parts are absent). ``buf[mask]`` in row
order is then exactly the concatenated text, and the per-row mask sums give the row offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Piece", "dec", "integer", "join_rows", "lit"]

Piece = tuple[np.ndarray, np.ndarray]  # (uint8 chars (n, w), bool mask (n, w))


def _width(x: np.ndarray) -> int:
    return max(1, len(str(int(x.max())))) if len(x) else 1


def integer(x: np.ndarray) -> Piece:
    """Decimal digits of integers, without leading zeros."""
    neg = x < 0
    v = np.where(neg, -x, x)
    w = _width(v)
    pows = 10 ** np.arange(w - 1, -1, -1, dtype=np.int64)
    digits = (v[:, None] // pows) % 10
    nz = digits != 0
    nz[:, -1] = True
    keep = np.logical_or.accumulate(nz, axis=1)
    chars = (digits + 48).astype(np.uint8)
    if neg.any():  # a sign slot, present only for negative values
        sign = np.where(neg, 45, 32).astype(np.uint8)[:, None]
        return np.hstack([sign, chars]), np.hstack([neg[:, None], keep])
    return chars, keep


def _fixed(x: np.ndarray, w: int) -> Piece:
    pows = 10 ** np.arange(w - 1, -1, -1, dtype=np.int64)
    chars = ((x[:, None] // pows) % 10 + 48).astype(np.uint8)
    return chars, np.ones(chars.shape, dtype=bool)


def lit(n: int, text: str) -> Piece:
    b = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.broadcast_to(b, (n, len(b))), np.ones((n, len(b)), dtype=bool)


def dec(x: np.ndarray, d: int, pad: int) -> list[Piece | str]:
    """``x / 10**d`` written with ``d`` decimals, right-padded with zeros to ``pad`` decimals."""
    if d == 0:
        return [integer(x), "." + "0" * pad] if pad else [integer(x)]
    p = 10**d
    return [integer(x // p), ".", _fixed(x % p, d), "0" * (pad - d)]


def join_rows(pieces: Sequence[Piece | str], n: int) -> tuple[bytes, np.ndarray]:
    """The text of all ``n`` rows, concatenated, and the ``n + 1`` row offsets.

    ``pieces`` mixes per-row pieces and literal strings (the same in every row; adjacent ones merge).
    """
    merged: list[Piece] = []
    text = ""
    for p in pieces:
        if isinstance(p, str):
            text += p
            continue
        if text:
            merged.append(lit(n, text))
            text = ""
        merged.append(p)
    if text:
        merged.append(lit(n, text))
    buf = np.hstack([p[0] for p in merged])
    mask = np.hstack([p[1] for p in merged])
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=off[1:])
    return buf[mask].tobytes(), off
