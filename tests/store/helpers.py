"""Synthetic kline frames for storage tests (independent of the simulator)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from lake.schema import KLINE_SCHEMA

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def frame(opens_ms: list[int], base: float = 100.0, source: str = "rest") -> pl.DataFrame:
    n = len(opens_ms)
    v = [base + (t // 60_000) % 97 for t in opens_ms]
    return (
        pl.DataFrame(
            {
                "candle_begin_time": opens_ms,
                "open": v,
                "high": [x + 1 for x in v],
                "low": [x - 1 for x in v],
                "close": [x + 0.5 for x in v],
                "volume": [float(i % 7) for i in range(n)],
                "quote_volume": [float(i % 7) * 100 for i in range(n)],
                "trade_num": [i % 11 for i in range(n)],
                "taker_buy_base_asset_volume": [float(i % 3) for i in range(n)],
                "taker_buy_quote_asset_volume": [float(i % 3) * 100 for i in range(n)],
                "source": [source] * n,
            }
        )
        .with_columns(pl.col("candle_begin_time").cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"))
        .cast(KLINE_SCHEMA)
    )


def opens(start_ms: int, count: int, step_ms: int = 300_000) -> list[int]:
    return [start_ms + i * step_ms for i in range(count)]


def t0_ms() -> int:
    return int(T0.timestamp() * 1000)
