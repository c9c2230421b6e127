"""Where the offsets table lives: partition paths and the build manifest.

Layout under the lake root (the klines path policy, with an ``offset=`` level)::

    offsets/trade_type=<tt>/interval=<T>/offset=<k>/symbol=<SYM>/date=<YYYY-MM-DD>/data.parquet
    _meta/offsets/trade_type=<tt>/interval=<T>.json        the build manifest

One file holds one (offset, symbol) series for one period; ``date`` is the period's first day:

    T < 1h    one file per month   (15m: 2,880 rows)
    T ≥ 1h    one file per year    (1h: 8,760 rows, 4h: 2,190, 1d: 365)

Yearly files for 1h keep a 300-symbol lake at 3,600 files per year for all 12 offsets (monthly files
would be 43,200, and their per-file costs double a full build). So that appending a day does not
rewrite a year, the most recent bins of every series live in the offsets *tail*
(``offsets_tail/…``, lake/transform/tail.py: a few files of many series each) until a run folds
them into the period files. Lakes written before the tail kept them in a ``tail.parquet`` per period
directory; readers still take those, and the next build of the series folds them away.
Components are validated (trade type, interval, offset name, symbol) before they become a path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import ValidationError
from lake.store.paths import DATA_FILE, period_floor, period_next
from lake.transform.offsets import format_offset, parse_duration_ms

__all__ = [
    "LEGACY_TAIL_FILE",
    "TABLE",
    "OffsetPartition",
    "manifest_path",
    "offsets_period",
    "period_end",
    "period_start",
    "series_dir",
    "table_dir",
]

TABLE = "offsets"
# The per-period tail of lakes written before lake/transform/tail.py: read, and folded by the next build.
LEGACY_TAIL_FILE = "tail.parquet"
_HOUR_MS = 3_600_000


def offsets_period(target: Interval) -> str:
    """``"month"`` or ``"year"``: how much time one offsets file holds for target interval ``target``."""
    return "month" if target.ms is not None and target.ms < _HOUR_MS else "year"


def period_start(target: Interval, ts_ms: int) -> dt.date:
    """``date=`` of the file holding the bin that opens at ``ts_ms``."""
    return period_floor(offsets_period(target), dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC).date())


def period_end(target: Interval, start: dt.date) -> dt.date:
    """First day after the period that starts on ``start``."""
    return period_next(offsets_period(target), start)


def table_dir(trade_type: str, interval: str) -> str:
    """``offsets/trade_type=<tt>/interval=<T>``, validated."""
    get_trade_type(trade_type)
    parse_interval(interval)
    return f"{TABLE}/trade_type={trade_type}/interval={interval}"


def manifest_path(trade_type: str, interval: str) -> str:
    get_trade_type(trade_type)
    parse_interval(interval)
    return f"_meta/{TABLE}/trade_type={trade_type}/interval={interval}.json"


@dataclass(frozen=True, slots=True)
class OffsetPartition:
    """One offsets file. Construction validates every component."""

    trade_type: str
    interval: str
    offset: str
    symbol: str
    date: dt.date

    def __post_init__(self) -> None:
        _validate(self.trade_type, self.interval, self.offset, self.symbol)
        if period_start(parse_interval(self.interval), _ms(self.date)) != self.date:
            raise ValidationError(f"{self.date} does not start an offsets period of {self.interval}")

    @property
    def series_dir(self) -> str:
        return _series_dir(self.trade_type, self.interval, self.offset, self.symbol)

    @property
    def path(self) -> str:
        return f"{self.series_dir}/date={self.date.isoformat()}/{DATA_FILE}"

    @property
    def legacy_tail_path(self) -> str:
        return f"{self.series_dir}/date={self.date.isoformat()}/{LEGACY_TAIL_FILE}"

    @property
    def start_ms(self) -> int:
        return _ms(self.date)

    @property
    def end_ms(self) -> int:
        return _ms(period_end(parse_interval(self.interval), self.date))


def series_dir(trade_type: str, interval: str, offset: str, symbol: str) -> str:
    """Directory of one (offset, symbol) series, all components validated."""
    _validate(trade_type, interval, offset, symbol)
    return _series_dir(trade_type, interval, offset, symbol)


def _series_dir(trade_type: str, interval: str, offset: str, symbol: str) -> str:
    return f"{TABLE}/trade_type={trade_type}/interval={interval}/offset={offset}/symbol={symbol}"


def _validate(trade_type: str, interval: str, offset: str, symbol: str) -> None:
    tt = get_trade_type(trade_type)
    parse_interval(interval, spot=tt.is_spot)
    ms = parse_duration_ms(offset)
    if offset != format_offset(ms) and not (ms == 0 and offset in ("0s", "0m", "0h", "0d")):
        raise ValidationError(f"offset {offset!r} is not in canonical form ({format_offset(ms)})")
    validate_symbol(symbol)


def _ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
