"""Pure parsers from Binance kline payloads (REST rows, websocket events) to the lake schema.

A REST kline row (12 fields; open time, close time and trade count are JSON integers, the rest
strings)::

    [1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100", "148976.11427815",
     1499644799999, "2434.19055334", 308, "1756.87402397", "28.46694368", "0"]

A websocket kline event::

    {"e": "kline", "E": 1638747660000, "s": "BTCUSDT",
     "k": {"t": 1638747600000, "T": 1638747659999, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200,
           "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100,
           "x": true, "q": "1.0000", "V": "500", "Q": "0.500", "B": "123456"}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from lake.errors import DataError
from lake.schema import KLINE_SCHEMA

__all__ = ["REST_FLOAT_FIELDS", "WsKline", "klines_from_rest", "parse_ws_kline"]

_REST_FIELDS = 12
# kline column → its index in a REST row (the row layout of GET /klines), for the float columns
REST_FLOAT_FIELDS = {
    "open": 1,
    "high": 2,
    "low": 3,
    "close": 4,
    "volume": 5,
    "quote_volume": 7,
    "taker_buy_base_asset_volume": 9,
    "taker_buy_quote_asset_volume": 10,
}
_FLOATS = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)


def klines_from_rest(rows: Sequence[Sequence[Any]], source: str = "rest") -> pl.DataFrame:
    """Turn REST kline rows into a DataFrame with the lake's kline schema.

    Raises ``DataError`` on a row that does not have 12 fields or whose values do not parse.
    """
    if not rows:
        return pl.DataFrame(schema=KLINE_SCHEMA)
    for r in rows:
        if not isinstance(r, (list, tuple)) or len(r) < _REST_FIELDS - 1:
            raise DataError(f"malformed kline row: {r!r:.200}")
    cols = list(zip(*(r[:11] for r in rows), strict=True))
    try:
        df = pl.DataFrame(
            {
                "candle_begin_time": pl.Series(cols[0], dtype=pl.Int64),
                "open": pl.Series(cols[1], dtype=pl.String),
                "high": pl.Series(cols[2], dtype=pl.String),
                "low": pl.Series(cols[3], dtype=pl.String),
                "close": pl.Series(cols[4], dtype=pl.String),
                "volume": pl.Series(cols[5], dtype=pl.String),
                "quote_volume": pl.Series(cols[7], dtype=pl.String),
                "trade_num": pl.Series(cols[8], dtype=pl.Int64),
                "taker_buy_base_asset_volume": pl.Series(cols[9], dtype=pl.String),
                "taker_buy_quote_asset_volume": pl.Series(cols[10], dtype=pl.String),
            },
            strict=False,
        )
        return df.with_columns(
            pl.col("candle_begin_time").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            *(pl.col(c).cast(pl.Float64, strict=True) for c in _FLOATS),
            pl.lit(source, dtype=pl.String).alias("source"),
        ).select(list(KLINE_SCHEMA))
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise DataError(f"malformed kline rows: {exc}") from exc


class WsKline(tuple):
    """A parsed websocket kline: (symbol, interval, closed, row) where ``row`` is a REST-shaped row."""

    __slots__ = ()

    def __new__(cls, symbol: str, interval: str, closed: bool, row: tuple[Any, ...]) -> WsKline:
        return super().__new__(cls, (symbol, interval, closed, row))

    @property
    def symbol(self) -> str:
        return str(self[0])

    @property
    def interval(self) -> str:
        return str(self[1])

    @property
    def closed(self) -> bool:
        return bool(self[2])

    @property
    def row(self) -> tuple[Any, ...]:
        return tuple(self[3])

    @property
    def open_time(self) -> int:
        return int(self[3][0])


def parse_ws_kline(event: Mapping[str, Any]) -> WsKline:
    """Parse one kline event (unwrapped from the combined-stream ``{"stream","data"}`` envelope).

    Returns a ``WsKline`` whose ``row`` has the REST row layout, so one code path (``klines_from_rest``)
    turns both into lake rows. Raises ``DataError`` for anything that is not a well-formed kline event.
    """
    try:
        if event.get("e") != "kline":
            raise DataError(f"not a kline event: {str(event)[:200]}")
        k = event["k"]
        row = (
            int(k["t"]),
            str(k["o"]),
            str(k["h"]),
            str(k["l"]),
            str(k["c"]),
            str(k["v"]),
            int(k["T"]),
            str(k["q"]),
            int(k["n"]),
            str(k["V"]),
            str(k["Q"]),
            "0",
        )
        for v in (*row[1:6], row[7], row[9], row[10]):
            float(v)
        closed = k["x"]
        if not isinstance(closed, bool):
            raise DataError(f"kline 'x' is not a bool: {closed!r}")
        return WsKline(str(k["s"]), str(k["i"]), closed, row)
    except DataError:
        raise
    # OverflowError: an integer field of 1e400, valid JSON that Python reads as inf (int(inf))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise DataError(f"malformed kline event: {exc!r}") from exc
