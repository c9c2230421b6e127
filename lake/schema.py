"""Column schemas shared by every layer (no imports from the rest of lake)."""

from __future__ import annotations

import polars as pl

__all__ = [
    "KLINE_COLUMNS",
    "KLINE_SCHEMA",
    "OFFSET_SCHEMA",
    "SOURCES",
    "VALUE_COLUMNS",
    "empty_klines",
]

TIME = pl.Datetime("ms", "UTC")

# The seed's 10 columns, plus provenance.
KLINE_SCHEMA: dict[str, pl.DataType] = {
    "candle_begin_time": TIME,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "quote_volume": pl.Float64(),
    "trade_num": pl.Int64(),
    "taker_buy_base_asset_volume": pl.Float64(),
    "taker_buy_quote_asset_volume": pl.Float64(),
    "source": pl.String(),
}
KLINE_COLUMNS = list(KLINE_SCHEMA)
VALUE_COLUMNS = [c for c in KLINE_COLUMNS if c not in ("candle_begin_time", "source")]
SOURCES = ("archive", "rest", "ws")

OFFSET_SCHEMA: dict[str, pl.DataType] = {
    **{k: v for k, v in KLINE_SCHEMA.items() if k != "source"},
    "n_base": pl.Int64(),
}


def empty_klines() -> pl.DataFrame:
    return pl.DataFrame(schema=KLINE_SCHEMA)
