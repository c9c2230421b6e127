"""Quarterly delivery dates: the last Friday of March, June, September and December at 08:00 UTC."""

from __future__ import annotations

import calendar
import datetime as dt

__all__ = ["quarter_expiries"]


def _expiry(year: int, month: int) -> int:
    last = calendar.monthrange(year, month)[1]
    d = dt.date(year, month, last)
    d -= dt.timedelta(days=(d.weekday() - calendar.FRIDAY) % 7)
    return int(dt.datetime(d.year, d.month, d.day, 8, tzinfo=dt.UTC).timestamp() * 1000)


def quarter_expiries(t_ms: int, *, before: int, after: int) -> list[int]:
    """``before`` expiries at or before ``t_ms`` and ``after`` expiries after it, ascending."""
    year = dt.datetime.fromtimestamp(t_ms / 1000, tz=dt.UTC).year
    cands = [
        _expiry(y, m) for y in range(year - before // 4 - 2, year + after // 4 + 3) for m in (3, 6, 9, 12)
    ]
    past = [c for c in cands if c <= t_ms]
    future = [c for c in cands if c > t_ms]
    return (past[-before:] if before else []) + future[:after]
