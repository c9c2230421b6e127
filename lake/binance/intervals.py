"""Binance kline intervals: parsing, validation and calendar arithmetic.

Every interval Binance serves is declared once in ``INTERVALS``. Fixed-length intervals carry their
length in milliseconds; ``1M`` is a calendar month and is handled by month arithmetic. Weekly candles
open on Monday 00:00 UTC (the Unix epoch was a Thursday, so plain epoch flooring would be wrong).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from lake.errors import ValidationError

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

__all__ = [
    "INTERVALS",
    "MS_PER_DAY",
    "Interval",
    "parse_interval",
]

MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
# 1970-01-05 was the first Monday after the epoch; weekly bins are anchored there.
_MONDAY_ANCHOR_MS = 4 * MS_PER_DAY
# many open times (ms) at once: a NumPy array, a Polars Series or a Polars expression
_Opens = TypeVar("_Opens", "np.ndarray", "pl.Series", "pl.Expr")


@dataclass(frozen=True, slots=True)
class Interval:
    """One kline interval.

    ``ms`` is the fixed length in milliseconds, or ``None`` for the calendar month ``1M``.
    ``archive_name`` is how data.binance.vision spells it (``1mo`` for ``1M``).
    """

    name: str
    ms: int | None
    spot_only: bool = False

    @property
    def archive_name(self) -> str:
        return "1mo" if self.name == "1M" else self.name

    @property
    def is_monthly(self) -> bool:
        return self.ms is None

    @property
    def approx_ms(self) -> int:
        """Length in ms; 1M counts as 30 days (for sizing, never for alignment)."""
        return self.ms if self.ms is not None else 30 * MS_PER_DAY

    @property
    def polars_every(self) -> str:
        """The duration string Polars understands for this interval."""
        if self.ms is None:
            return "1mo"
        return f"{self.ms}ms"

    def floor(self, ts_ms: int) -> int:
        """Open time of the candle that contains ``ts_ms``."""
        if self.ms is None:
            d = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
            return _ms(dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC))
        if self.name == "1w":
            return ts_ms - (ts_ms - _MONDAY_ANCHOR_MS) % self.ms
        return ts_ms - ts_ms % self.ms

    def floor_many(self, opens_ms: _Opens) -> _Opens:
        """``floor`` of many times at once (a fixed-length interval; not ``1M``): the open of the slot
        each candle fills. Binance's 2018 history has candles opening off the grid (09:28:14.789);
        stored as published, each counts for the slot it falls in."""
        if self.ms is None:
            raise ValueError("floor_many needs a fixed-length interval, not 1M")
        anchor = _MONDAY_ANCHOR_MS if self.name == "1w" else 0
        return opens_ms - (opens_ms - anchor) % self.ms

    def next_open(self, open_ms: int) -> int:
        """Open time of the candle after the one opening at ``open_ms``."""
        if self.ms is None:
            d = dt.datetime.fromtimestamp(open_ms / 1000, tz=dt.UTC)
            y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return _ms(dt.datetime(y, m, 1, tzinfo=dt.UTC))
        return open_ms + self.ms

    def close_time(self, open_ms: int) -> int:
        """Binance's closeTime for a candle: the next open minus one millisecond."""
        return self.next_open(open_ms) - 1

    def opens(self, start_ms: int, end_ms: int) -> list[int]:
        """Aligned open times in ``[start_ms, end_ms)``."""
        out: list[int] = []
        t = self.floor(start_ms)
        if t < start_ms:
            t = self.next_open(t)
        while t < end_ms:
            out.append(t)
            t = self.next_open(t)
        return out

    def count(self, start_ms: int, end_ms: int) -> int:
        """Number of aligned candles opening in ``[start_ms, end_ms)``."""
        if self.ms is None:
            return len(self.opens(start_ms, end_ms))
        first = self.floor(start_ms)
        if first < start_ms:
            first += self.ms
        if first >= end_ms:
            return 0
        return (end_ms - 1 - first) // self.ms + 1

    def __str__(self) -> str:
        return self.name


def _ms(d: dt.datetime) -> int:
    return int(d.timestamp() * 1000)


_DEFS: list[tuple[str, int | None, bool]] = [
    ("1s", 1000, True),
    ("1m", MS_PER_MINUTE, False),
    ("3m", 3 * MS_PER_MINUTE, False),
    ("5m", 5 * MS_PER_MINUTE, False),
    ("15m", 15 * MS_PER_MINUTE, False),
    ("30m", 30 * MS_PER_MINUTE, False),
    ("1h", MS_PER_HOUR, False),
    ("2h", 2 * MS_PER_HOUR, False),
    ("4h", 4 * MS_PER_HOUR, False),
    ("6h", 6 * MS_PER_HOUR, False),
    ("8h", 8 * MS_PER_HOUR, False),
    ("12h", 12 * MS_PER_HOUR, False),
    ("1d", MS_PER_DAY, False),
    ("3d", 3 * MS_PER_DAY, False),
    ("1w", 7 * MS_PER_DAY, False),
    ("1M", None, False),
]

INTERVALS: dict[str, Interval] = {name: Interval(name, ms, spot) for name, ms, spot in _DEFS}


def parse_interval(value: str | Interval, *, spot: bool = True) -> Interval:
    """Return the ``Interval`` named ``value`` or raise a ``ValidationError`` listing valid names.

    ``1mo`` (the archive's spelling) is accepted for ``1M``. With ``spot=False`` the spot-only
    ``1s`` is rejected, because futures markets do not serve it.
    """
    if isinstance(value, Interval):
        iv = value
    else:
        name = "1M" if value == "1mo" else value
        found = INTERVALS.get(name)
        if found is None:
            valid = ", ".join(INTERVALS)
            raise ValidationError(f"unknown interval {value!r}; valid: {valid}")
        iv = found
    if iv.spot_only and not spot:
        raise ValidationError(f"interval {iv.name!r} is only served by spot markets")
    return iv
