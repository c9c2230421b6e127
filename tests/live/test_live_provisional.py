"""`lake live` against Binance's behaviour (simulator runs): REST candles given before they
were final must be asked again however often the period check runs, and also across a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lake.ingest.rest_client import RestClient
from lake.live.repair import read_provisional
from lake.live.runner import LiveConfig, LiveRunner
from lake.live.watermark import read_watermark
from lake.settings import Settings
from lake.sim.config import FaultConfig
from lake.sim.testing import sim_server, test_config
from lake.store.fs import LakeFS
from tests.live.helpers import until

from .helpers import M, diff_truth, lake_frame, run_while

SPOT = "usdt_spot"
PERP = "usdt_perp"


def _halved(row: list[Any]) -> list[Any]:
    """A REST kline row as REST may give it before the candle is final: its volumes halved."""
    row = list(row)
    for i in (5, 7, 9, 10):
        row[i] = repr(float(row[i]) / 2)
    return row


def _provisional_rest(monkeypatch: pytest.MonkeyPatch, young_ms: int = 15_000) -> None:
    """REST answers a candle closed less than ``young_ms`` ago (server time) with its volumes halved
    (less than the runner's 30 s: a candle asked again once settled gets its final values)."""
    real = RestClient.klines

    async def klines(self: RestClient, symbol: str, interval: str, **kw: Any) -> list[list[Any]]:
        rows = await real(self, symbol, interval, **kw)
        now = self.clock.now_ms()
        return [_halved(r) if int(r[6]) + young_ms > now else r for r in rows]

    monkeypatch.setattr(RestClient, "klines", klines)


async def test_1s_provisional_rest_candles_are_all_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spot 1s feed with the default 10 s grace: the period check runs every ~10 s, i.e. once per
    # ten periods. BTCUSDT's closing events never come, so its candles are repaired over REST within
    # seconds of their close, before they are final. Every one of them must be asked again once
    # settled; giving up on a candle after five *periods* (not five checks that asked for it) left
    # about half of them never asked, with their provisional values for good.
    _provisional_rest(monkeypatch, young_ms=25_000)  # every repair (10-20 s after the close)
    symbols = ("BTCUSDT", "ETHUSDT")
    faults = FaultConfig(ws_skip_close_symbols=("BTCUSDT",))
    async with sim_server(test_config(speed=30.0, faults=faults)) as sim:
        config = LiveConfig(
            trade_types=(SPOT,),
            intervals=("1s",),
            symbols=symbols,
            periods=120,
            grace_s=10.0,
            history=30,
        )
        summary = await asyncio.wait_for(
            LiveRunner(Settings(root=str(tmp_path), sim_url=sim.base_url), config).run(), timeout=90
        )
        wm = read_watermark(tmp_path, SPOT, "1s", list(symbols))
        assert wm is not None
        # candles settled 10 s before the last check: each has been asked again by then
        settled = wm["watermark_ms"] - 45_000
        lake = lake_frame(tmp_path, SPOT, "1s").filter(pl.col("t") <= settled)
        truth = sim.market.truth(SPOT, "1s", list(symbols), int(lake["t"].min()), settled + 1)
    d = diff_truth(lake, truth)
    assert d["missing"] == d["extra"] == d["differ"] == 0, d
    btc = lake.filter(pl.col("symbol") == "BTCUSDT")
    assert btc.height == truth.filter(pl.col("symbol") == "BTCUSDT").height >= 60
    feed = summary["feeds"][0]
    assert feed["rest_reconfirmed"] >= 10  # halved ones, rewritten with REST's final values


async def test_a_provisional_rest_candle_is_asked_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BTCUSDT's closing events never come: its candle is repaired over REST seconds after its close,
    # before it is final, and the watermark covers it at once. The run is stopped (SIGTERM) before
    # that candle is old enough to be asked again. The next run must ask for it: it is under the
    # watermark and its catch-up starts after it, so nothing else ever would.
    _provisional_rest(monkeypatch)
    faults = FaultConfig(ws_skip_close_symbols=("BTCUSDT",))
    async with sim_server(test_config(speed=120.0, n_symbols_by_market={"um": 6}, faults=faults)) as sim:
        live = sim.market.symbols(PERP, trading_at=sim.clock.now_ms())
        settings = Settings(root=str(tmp_path), sim_url=sim.base_url)

        def config(periods: int | None) -> LiveConfig:
            return LiveConfig(trade_types=(PERP,), intervals=("1m",), periods=periods, grace_s=5.0, history=5)

        first = LiveRunner(settings, config(None))
        stopped: dict[str, int] = {}

        async def stop_with_a_provisional_candle() -> None:
            feed = first.feeds[0]

            def provisional() -> bool:
                wm = feed.published
                return (
                    feed.stats.periods_checked >= 2
                    and wm is not None
                    and ("BTCUSDT", wm) in feed.recent_rest
                    and sim.clock.now_ms() < wm + M + 20_000
                )

            await until(provisional, 60)
            stopped["period"] = feed.published or 0
            first.stop("SIGTERM (test)")

        await run_while(first, stop_with_a_provisional_candle(), 90)
        period = stopped["period"]
        row = lake_frame(tmp_path, PERP, "1m").filter(pl.col("symbol") == "BTCUSDT", pl.col("t") == period)
        truth = sim.market.truth(PERP, "1m", ["BTCUSDT"], period, period + M)
        assert row["volume"].to_list() == [truth["volume"][0] / 2]  # REST's early answer

        second = LiveRunner(settings, config(2))
        await asyncio.wait_for(second.run(), timeout=90)
        wm = read_watermark(tmp_path, PERP, "1m")
        assert wm is not None and wm["watermark_ms"] >= period + 2 * M
        lake = lake_frame(tmp_path, PERP, "1m")
        # what the second run itself repaired early and was stopped before asking again is listed
        # for the next run, as the first run's candle was for this one
        left = read_provisional(LakeFS(tmp_path), PERP, "1m")
        assert left and all(t > period for _s, t in left)
        early = pl.DataFrame(
            {"symbol": [s for s, _t in left], "t": [t for _s, t in left]},
            schema={"symbol": pl.String, "t": pl.Int64},
        )
        truth_all = sim.market.truth(PERP, "1m", live, int(lake["t"].min()), wm["watermark_ms"] + 1)
        truth_all = truth_all.with_columns(pl.col("candle_begin_time").dt.epoch("ms").alias("t"))
        d = diff_truth(
            lake.filter(pl.col("t") <= wm["watermark_ms"]).join(early, on=["symbol", "t"], how="anti"),
            truth_all.join(early, on=["symbol", "t"], how="anti"),
        )
    assert d["missing"] == d["extra"] == d["differ"] == 0, d
    row = lake.filter(pl.col("symbol") == "BTCUSDT", pl.col("t") == period)
    assert row["volume"].to_list() == [truth["volume"][0]] and row["source"].to_list() == ["rest"]
