"""Random base candles for the offsets tests (deterministic in a seed)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from lake.schema import KLINE_SCHEMA, OFFSET_SCHEMA

# A Monday, so weekly bins are not trivially aligned with the data start only by accident.
T0_MS = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
EXACT = ["candle_begin_time", "open", "high", "low", "close", "trade_num", "n_base"]
FLOAT_SUMS = ["volume", "quote_volume", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]


def random_candles(
    seed: int,
    b_ms: int,
    count: int,
    *,
    start_ms: int = T0_MS,
    hole_rate: float = 0.1,
    zero_rate: float = 0.2,
    source: str = "rest",
) -> pl.DataFrame:
    """``count`` base slots from ``start_ms`` with random holes and zero-volume candles (kline schema)."""
    rng = np.random.default_rng(seed)
    t = start_ms + b_ms * np.arange(count, dtype=np.int64)
    keep = rng.random(count) >= hole_rate
    o = np.round(rng.uniform(1, 100, count), 2)
    c = np.round(rng.uniform(1, 100, count), 2)
    h = np.maximum(o, c) + np.round(rng.uniform(0, 5, count), 2)
    lo = np.minimum(o, c) - np.round(rng.uniform(0, 0.9, count), 2)
    vol = np.round(rng.lognormal(1, 1, count), 3)
    zero = rng.random(count) < zero_rate
    vol[zero] = 0.0
    df = pl.DataFrame(
        {
            "candle_begin_time": t,
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": vol,
            "quote_volume": vol * c,
            "trade_num": np.where(zero, 0, rng.integers(1, 1000, count)),
            "taker_buy_base_asset_volume": np.round(vol * 0.4, 3),
            "taker_buy_quote_asset_volume": vol * 0.4 * c,
            "source": [source] * count,
        }
    ).filter(pl.Series(keep))
    return df.with_columns(pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC"))).cast(KLINE_SCHEMA)


def assert_bins_equal(got: pl.DataFrame, want: pl.DataFrame) -> None:
    """Exact for times, OHLC, counts; 1e-12 relative for float sums (summation order differs)."""
    cols = list(OFFSET_SCHEMA)
    got, want = got.select(cols), want.select(cols)
    assert_frame_equal(got.select(EXACT), want.select(EXACT), check_exact=True)
    assert_frame_equal(got.select(FLOAT_SUMS), want.select(FLOAT_SUMS), rel_tol=1e-12, abs_tol=1e-9)


def missing_runs(times: list[int], start: int, end: int, b_ms: int) -> list[tuple[int, int]]:
    """The runs of base slots (``b_ms`` apart) of ``[start, end)`` with no open time in ``times``,
    as half-open ``(start_ms, end_ms)`` ranges."""
    held = set(times)
    runs: list[tuple[int, int]] = []
    for s in range(start, end, b_ms):
        if s in held:
            continue
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + b_ms)
        else:
            runs.append((s, s + b_ms))
    return runs
