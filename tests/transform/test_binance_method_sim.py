"""``--method binance`` at offset 0 equals the exchange's own higher-interval candles.

The simulator derives every interval from 1m the way Binance does (zero-volume candles do not move
open/high/low), and its illiquid symbol has many zero-volume minutes, so the seed rule differs there.
"""

from __future__ import annotations

import polars as pl
import pytest

from lake.sim import SimMarket
from lake.sim.testing import test_config
from lake.transform.offsets import offset_plan, resample_offsets

DAY = 86_400_000


@pytest.fixture(scope="module")
def market() -> SimMarket:
    return SimMarket(test_config())


@pytest.mark.parametrize("trade_type", ["usdt_perp", "usdt_spot"])
@pytest.mark.parametrize("target", ["5m", "15m", "1h"])
def test_offset_zero_is_binances_own_candle(market: SimMarket, trade_type: str, target: str) -> None:
    symbol = "BNBUSDT"  # the simulator's illiquid symbol
    assert symbol in market.awkward.illiquid[market.resolve(trade_type)[0]]
    now = market.clock.now_ms()
    base = market.truth(trade_type, "1m", symbol, start=now - DAY)
    assert (base["volume"] == 0).sum() > 50
    truth = market.truth(trade_type, target, symbol, start=now - DAY)
    ohlc = ["open", "high", "low", "close", "trade_num"]
    for method in ("binance", "seed"):
        ours = resample_offsets(base, offset_plan(target, "1m", "0m", method=method))
        joined = ours.join(truth, on=["symbol", "candle_begin_time"], how="left", suffix="_b")
        assert joined.height == truth.height and joined["open_b"].null_count() == 0
        differ = joined.filter(pl.any_horizontal(pl.col(c) != pl.col(f"{c}_b") for c in ohlc)).height
        rel = joined.select((pl.col("volume") / pl.col("volume_b") - 1).abs().max()).item()
        assert rel is None or rel <= 1e-12
        if method == "binance":
            assert differ == 0
        else:
            assert differ > 0  # the seed rule lets zero-volume candles set the open (or high/low)
