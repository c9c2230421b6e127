"""Fingerprints of each UTC day of a kline series: what tells an offsets build which days changed.

A day's fingerprint is the wrapped uint64 sum of its rows' hashes (every kline value column and the
open time, Polars ``hash_rows`` with a fixed seed) mixed with its row count, stored with the open
time of the day's last candle. A *packed* set is base64 of (day number, fingerprint, last open time
as ms after midnight) records.

Two places compute them with this module, so they compare: the klines writer stores the packed set
of a partition file in the file's footer (``META_KEY``; ``lake.store.parquet_plain.footer_prints``
reads it back), and an offsets build (``lake.transform.planning``) keeps them in its manifest and,
for files without them, computes them from the rows. Reading a footer instead of a month of rows is what makes an appended
day cost about a day.

Fingerprints only ever compare with ones this code made: a Polars upgrade that changes row hashing
makes every day look changed once (a full recompute), never a changed day look unchanged.
"""

from __future__ import annotations

import base64

import numpy as np
import polars as pl

from lake.binance.intervals import MS_PER_DAY
from lake.schema import KLINE_COLUMNS

__all__ = [
    "HASHED_COLUMNS",
    "META_KEY",
    "changed_days",
    "checked",
    "day_prints",
    "last_open",
    "pack_days",
    "partition_prints",
    "row_hashes",
    "unpack_days",
]

META_KEY = "lake.day_prints.v1"
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
    return _records(base64.b64decode(text))


DayRecord = tuple[int, int | None]  # a day's fingerprint and the open time of its last candle


def changed_days(new: str, old: str) -> dict[int, tuple[DayRecord | None, DayRecord | None]]:
    """The days whose fingerprint differs between two packed sets, or that one of them lacks: day →
    (its record in ``new``, in ``old``; ``None`` where absent), as ``unpack_days`` gives them.

    The records both sets hold from the start with the same bytes are not decoded: after an appended
    day that is every old record but the last (an offsets run compares 300 such months, and a dict
    of every day of both took ~15 µs a month)."""
    if new == old:
        return {}
    nb, ob = base64.b64decode(new), base64.b64decode(old)
    size = _REC.itemsize
    k = min(len(nb), len(ob)) // size
    same = np.frombuffer(nb, f"V{size}", k) == np.frombuffer(ob, f"V{size}", k)
    differ = np.flatnonzero(~same)
    skip = int(differ[0]) if len(differ) else k
    n_rest, o_rest = _records(nb[skip * size :]), _records(ob[skip * size :])
    if skip:
        first = int(np.frombuffer(nb, _REC, skip)["d"].max())
        if any(d <= first for d in n_rest.keys() | o_rest.keys()):  # days out of order: compare all
            n_rest, o_rest = _records(nb), _records(ob)
    return {
        d: (n_rest.get(d), o_rest.get(d))
        for d in n_rest.keys() | o_rest.keys()
        if n_rest.get(d, (None,))[0] != o_rest.get(d, (None,))[0]
    }


def _records(raw: bytes) -> dict[int, DayRecord]:
    rec = np.frombuffer(raw, dtype=_REC)
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


def checked(text: str) -> str | None:
    """``text`` if it is packed day fingerprints (base64 of whole records), else ``None``."""
    try:
        rec = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return text if len(rec) % _REC.itemsize == 0 else None
