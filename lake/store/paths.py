"""The one path policy: (table, trade type, interval, symbol, date) ⇄ partition path.

Every reader and writer (and the DuckDB views) derives paths here, so the layout is changed in one
place. Layout under the lake root::

    klines/trade_type=<tt>/interval=<iv>/symbol=<SYM>/date=<YYYY-MM-DD>/data.parquet

``date`` is the first day of the partition's period. The period depends on the interval so that a
file holds roughly a thousand to tens of thousands of rows (lessons: neither hundreds of thousands of
288-row files, which make every scan slow, nor one giant file, which makes every append slow):

    1s, 1m               one partition per UTC day    (1m: 1,440 rows; 1s: 86,400)
    3m … 30m             one partition per month      (5m: 8,640 rows; 30m: 1,440)
    1h and longer        one partition per year       (1h: 8,760 rows; 1d: 365)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import ValidationError

__all__ = [
    "DATA_FILE",
    "PERIODS",
    "PartitionKey",
    "is_date_dir",
    "partition_end",
    "partition_period",
    "partition_start",
    "period_floor",
    "period_next",
    "series_dir",
]

DATA_FILE = "data.parquet"
_HOUR_MS = 3_600_000
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


PERIODS = ("day", "month", "year")


def is_date_dir(name: str) -> bool:
    """``date=YYYY-MM-DD`` with a real date: anything else in a series directory (a stray
    ``date=garbage``) is not a partition, and every reader skips it."""
    if not name.startswith("date=") or len(name) != 15:
        return False
    try:
        dt.date.fromisoformat(name[5:])
    except ValueError:
        return False
    return True


def partition_period(interval: Interval) -> str:
    """``"day"``, ``"month"`` or ``"year"``: how much time one partition file holds."""
    if interval.ms is not None and interval.ms <= 60_000:
        return "day"
    if interval.ms is not None and interval.ms < _HOUR_MS:
        return "month"
    return "year"


def period_floor(period: str, d: dt.date) -> dt.date:
    """First day of the ``period`` (day, month or year) containing ``d``."""
    if period == "day":
        return d
    if period == "month":
        return d.replace(day=1)
    if period == "year":
        return d.replace(month=1, day=1)
    raise ValueError(f"unknown period {period!r}")


def period_next(period: str, start: dt.date) -> dt.date:
    """First day after the ``period`` starting on ``start``."""
    if period == "day":
        return start + dt.timedelta(days=1)
    if period == "month":
        return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    if period == "year":
        return start.replace(year=start.year + 1)
    raise ValueError(f"unknown period {period!r}")


def partition_start(interval: Interval, ts_ms: int) -> dt.date:
    """The ``date=`` value of the partition holding the candle opening at ``ts_ms``."""
    d = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).date()
    return period_floor(partition_period(interval), d)


def partition_end(interval: Interval, start: dt.date) -> dt.date:
    """First day after the partition that starts on ``start``."""
    return period_next(partition_period(interval), start)


def series_dir(table: str, trade_type: str, interval: str, symbol: str) -> str:
    """Relative directory of one (trade type, interval, symbol) series, all inputs validated."""
    return PartitionKey(table, trade_type, interval, symbol, dt.date(1970, 1, 1)).series_dir


@dataclass(frozen=True, slots=True)
class PartitionKey:
    """Identifies one partition file. Construction validates every component."""

    table: str
    trade_type: str
    interval: str
    symbol: str
    date: dt.date

    def __post_init__(self) -> None:
        if self.table not in ("klines",):
            raise ValidationError(f"unknown table {self.table!r}")
        tt = get_trade_type(self.trade_type)
        parse_interval(self.interval, spot=tt.is_spot)
        validate_symbol(self.symbol)

    @property
    def series_dir(self) -> str:
        return f"{self.table}/trade_type={self.trade_type}/interval={self.interval}/symbol={self.symbol}"

    @property
    def dir(self) -> str:
        return f"{self.series_dir}/date={self.date.isoformat()}"

    @property
    def path(self) -> str:
        return f"{self.dir}/{DATA_FILE}"

    @property
    def interval_obj(self) -> Interval:
        return parse_interval(self.interval)

    @property
    def start_ms(self) -> int:
        return _date_ms(self.date)

    @property
    def end_ms(self) -> int:
        return _date_ms(partition_end(self.interval_obj, self.date))

    @classmethod
    def for_candle(cls, table: str, trade_type: str, interval: str, symbol: str, ts_ms: int) -> PartitionKey:
        return cls(table, trade_type, interval, symbol, partition_start(parse_interval(interval), ts_ms))

    @classmethod
    def parse(cls, path: str) -> PartitionKey:
        """Inverse of ``path``: accepts the relative path (with or without the file name)."""
        parts = [p for p in path.strip("/").split("/") if p]
        if parts and parts[-1] == DATA_FILE:
            parts = parts[:-1]
        if len(parts) < 5:
            raise ValidationError(f"not a partition path: {path!r}")
        table, *kv = parts[-5:]
        values: dict[str, str] = {}
        for item, name in zip(kv, ("trade_type", "interval", "symbol", "date"), strict=True):
            key, sep, value = item.partition("=")
            if key != name or not sep:
                raise ValidationError(f"not a partition path: {path!r}")
            values[name] = value
        if not _DATE_RE.fullmatch(values["date"]):
            raise ValidationError(f"bad partition date in {path!r}")
        date = dt.date.fromisoformat(values["date"])
        pkey = cls(table, values["trade_type"], values["interval"], values["symbol"], date)
        if partition_start(pkey.interval_obj, pkey.start_ms) != date:
            raise ValidationError(
                f"partition date {date} is not a {partition_period(pkey.interval_obj)} start"
            )
        return pkey


def _date_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
