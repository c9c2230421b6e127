"""Fingerprints of each UTC day of a kline series: what tells an offsets build which days changed.

A day's fingerprint is the wrapped uint64 sum of its rows' hashes (every kline value column and the
open time, Polars ``hash_rows`` with a fixed seed) mixed with its row count, stored with the open
time of the day's last candle. A *packed* set is base64 of (day number, fingerprint, last open time
as ms after midnight) records.

Two places compute them with this module, so they compare: the klines writer stores the packed set
of a partition file that spans several days in the file's footer (``META_KEY``), and an offsets
build (``lake.transform.planning``) keeps them in its manifest and, for files without them,
computes them from the rows. Reading a footer instead of a month of rows is what makes an appended
day cost about a day.

Fingerprints only ever compare with ones this code made: a Polars upgrade that changes row hashing
makes every day look changed once (a full recompute), never a changed day look unchanged.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from lake.binance.intervals import MS_PER_DAY
from lake.schema import KLINE_COLUMNS

__all__ = [
    "CREATED_BY",
    "HASHED_COLUMNS",
    "META_KEY",
    "day_prints",
    "footer_prints",
    "last_open",
    "pack_days",
    "partition_prints",
    "row_hashes",
    "unpack_days",
]

META_KEY = "lake.day_prints.v1"
CREATED_BY = "lake plain kline writer (parquet format 2.6)"  # lake.store.parquet_plain's files
HASHED_COLUMNS = [c for c in KLINE_COLUMNS if c != "source"]
_SEED = 17
# day number; fingerprint; open time of the day's last candle, ms after midnight (-1: not known)
_REC = np.dtype([("d", "<i4"), ("p", "<i8"), ("l", "<i4")])
_MASK63 = np.uint64((1 << 63) - 1)


def row_hashes(df: pl.DataFrame) -> np.ndarray:
    """The uint64 hash of each row of ``df`` over ``HASHED_COLUMNS`` (which it must have, with the
    lake's kline dtypes)."""
    return df.select(HASHED_COLUMNS).hash_rows(seed=_SEED).to_numpy()


def day_prints(hash_sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Fingerprints (int64) of days from the wrapped uint64 sums of their rows' hashes and their row
    counts."""
    mixed = hash_sums.astype(np.uint64) ^ (counts.astype(np.uint64) << np.uint64(1))
    return (mixed & _MASK63).astype(np.int64)


def partition_prints(times_ms: np.ndarray, hashes: np.ndarray) -> str:
    """The packed day fingerprints of one series' rows: open times (ms, ascending) and their hashes."""
    day = times_ms // MS_PER_DAY
    starts = np.flatnonzero(np.diff(day, prepend=day[0] - 1))
    ends = np.append(starts[1:], len(day))
    sums = np.add.reduceat(hashes, starts)
    return pack_days(day[starts], day_prints(sums, ends - starts), times_ms[ends - 1])


def pack_days(days: np.ndarray, prints: np.ndarray, lasts: np.ndarray) -> str:
    """Day fingerprints of one base partition: days since the epoch (ascending), fingerprints, and
    the open time (ms since the epoch) of each day's last candle (or -1)."""
    rec = np.empty(len(days), dtype=_REC)
    rec["d"], rec["p"] = days, prints
    rec["l"] = np.where(lasts < 0, -1, lasts - days.astype(np.int64) * MS_PER_DAY)
    return base64.b64encode(rec.tobytes()).decode("ascii")


def unpack_days(text: str) -> dict[int, tuple[int, int | None]]:
    """``pack_days`` reversed: day number → (fingerprint, open time of its last candle or ``None``)."""
    rec = np.frombuffer(base64.b64decode(text), dtype=_REC)
    return {
        d: (p, None if last < 0 else d * MS_PER_DAY + last)
        for d, p, last in zip(rec["d"].tolist(), rec["p"].tolist(), rec["l"].tolist(), strict=True)
    }


def last_open(text: str) -> tuple[int, int | None] | None:
    """The last day in ``pack_days`` output and the open time of its last candle (``None``: not
    known); ``None`` when it holds no day."""
    rec = np.frombuffer(base64.b64decode(text), dtype=_REC)
    if len(rec) == 0:
        return None
    i = int(rec["d"].argmax())
    d, last = int(rec["d"][i]), int(rec["l"][i])
    return d, None if last < 0 else d * MS_PER_DAY + last


def footer_prints(source: Any) -> str | None:
    """The packed day fingerprints the klines writer stored in a parquet file's footer, or ``None``
    (a file of one day, or one written by something else). ``source``: a path or a binary file
    object; only the footer is read.

    Only lake's own kline writer (``lake.store.parquet_plain``) stores them, always as the single
    key-value pair of the footer, followed by its ``created_by``. So the footer is searched for
    exactly those bytes of the Thrift compact encoding (field 5, a list of one KeyValue struct whose
    key is ``META_KEY``; then field 6): no generic parse of the row groups before them, which costs
    more than the rest of an offsets run's planning for an appended day (~0.1 ms a file)."""
    if isinstance(source, (str, os.PathLike)):
        fd = os.open(source, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            footer = _footer(size, lambda n, at: os.pread(fd, n, at))
        finally:
            os.close(fd)
    else:
        size = source.seek(0, os.SEEK_END)
        footer = _footer(size, lambda n, at: (source.seek(at), source.read(n))[1])
    if footer is None:
        return None
    at = footer.rfind(_KV_HEAD)
    if at < 0:
        return None
    value, end = _binary(footer, at + len(_KV_HEAD))
    if value is None or footer[end : end + len(_KV_END)] != _KV_END:
        return None
    try:
        text = value.decode("ascii")
        rec = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return text if len(rec) % _REC.itemsize == 0 else None


def _footer(size: int, read: Callable[[int, int], bytes]) -> bytes | None:
    """The FileMetaData bytes of a parquet file of ``size`` bytes; ``read(n, at)`` reads its bytes."""
    if size < 12:
        return None
    tail = read(8, size - 8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 12 > size:
        return None
    return read(length, size - 8 - length)


def _binary(buf: bytes, at: int) -> tuple[bytes | None, int]:
    """A Thrift compact binary at ``buf[at:]`` (varint length, bytes) and the offset after it."""
    n = shift = 0
    while at < len(buf):
        b = buf[at]
        at += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (buf[at : at + n], at + n) if at + n <= len(buf) else (None, at)
        shift += 7
    return None, at


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# FileMetaData field 5 (delta 1 from field 4, a list: 0x19) of one struct (0x1c); KeyValue field 1
# (binary: 0x18) = META_KEY; field 2 (0x18) = the value, read by ``_binary``; then the end of the
# struct (0x00) and FileMetaData field 6 (0x18), created_by, as the plain writer writes it.
_KV_HEAD = b"\x19\x1c\x18" + _varint(len(META_KEY)) + META_KEY.encode() + b"\x18"
_KV_END = b"\x00\x18" + _varint(len(CREATED_BY)) + CREATED_BY.encode()
