"""`lake live` against the simulator (in process, sped-up clock): the lake ends equal to the truth for
every closed period, through dropped connections, late and missing closing events, a listing and a
delisting, with a DuckDB reader querying throughout and the watermark never ahead of the data."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lake.live import wait_ready
from lake.live.runner import LiveConfig, LiveRunner
from lake.live.watermark import read_watermark, read_watermarks
from lake.settings import Settings
from lake.sim.config import FaultConfig
from lake.sim.server import SimServer
from lake.sim.testing import sim_server, test_config
from lake.transform.build import build_offsets, scan_offsets

from .helpers import DuckReader, M, WatermarkAuditor, diff_truth, lake_frame, utc

TT, IV = "usdt_perp", "1m"


def _truth(sim: SimServer) -> Any:
    def fn(symbols: list[str], start: int, end: int) -> pl.DataFrame:
        if not symbols:
            return pl.DataFrame(schema={"symbol": pl.String})
        return sim.market.truth(TT, IV, symbols, start, end)

    return fn


async def _wait_periods(runner: LiveRunner, n: int) -> None:
    while True:
        if runner.feeds[0].stats.periods_checked >= n or runner.stopping:
            return
        await asyncio.sleep(0.02)


async def test_live_equals_truth_through_faults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lake")
    faults = FaultConfig(ws_drop_every_s=1.2)
    cfg = test_config(speed=120.0, n_symbols_by_market={"um": 24}, ws_intermediate=True, faults=faults)
    async with sim_server(cfg) as sim:
        live0 = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        skipped = live0[:2]
        sim.faults.update({"ws_skip_close_symbols": skipped})
        settings = Settings(root=str(tmp_path), sim_url=sim.base_url)
        # compaction every second and tail files deleted 3 s after it: both happen many times while
        # the reader queries
        config = LiveConfig(
            trade_types=(TT,),
            intervals=(IV,),
            periods=22,
            grace_s=5.0,
            history=30,
            health_every_s=2.0,
            compact_every_s=1.0,
            tail_grace_s=3.0,
        )
        runner = LiveRunner(settings, config)
        reader = DuckReader(tmp_path)
        auditor = WatermarkAuditor(tmp_path, _truth(sim))
        reader.start()
        auditor.start()
        gone = live0[-1]

        async def scenario() -> None:
            await _wait_periods(runner, 3)
            sim.control_faults({"list": [{"market": "um", "symbol": "NEWXUSDT"}]})
            await _wait_periods(runner, 6)
            sim.control_faults({"delist": [{"market": "um", "symbol": gone}]})
            await _wait_periods(runner, 9)
            sim.faults.update({"ws_close_delay_s": 20.0})  # closing events ~20 s (virtual) late
            await _wait_periods(runner, 14)
            sim.faults.update({"ws_close_delay_s": 0.0})

        consumed: dict[str, Any] = {}

        async def consumer() -> None:
            # a strategy waiting for a period 6 minutes ahead, then reading it: every symbol is there
            target = (sim.clock.now_ms() // M + 6) * M
            got = await wait_ready(tmp_path, TT, IV, utc(target), timeout=60)
            rows = lake_frame(tmp_path).filter(pl.col("t") == target)
            consumed.update(target=target, watermark=got, symbols=set(rows["symbol"]))

        play = asyncio.create_task(scenario())
        consume = asyncio.create_task(consumer())
        try:
            summary = await asyncio.wait_for(runner.run(), timeout=90)
            await asyncio.wait_for(consume, timeout=5)
        finally:
            play.cancel()
            consume.cancel()
            for t in (play, consume):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            reader.stop()
            auditor.stop()
        expected = set(sim.market.truth(TT, IV, live0, consumed["target"], consumed["target"] + M)["symbol"])
        assert consumed["symbols"] >= expected and len(expected) >= len(live0) - 1
        feed = summary["feeds"][0]
        wm = read_watermark(tmp_path, TT, IV)
        assert wm is not None
        wm_ms = wm["watermark_ms"]
        lake = lake_frame(tmp_path)
        # every followed symbol: from its first candle to the watermark, exactly the truth
        assert set(lake["symbol"].unique()) == {*live0, "NEWXUSDT"}
        start = int(lake.filter(pl.col("symbol") == live0[0])["t"].min())
        truth = sim.market.truth(TT, IV, sorted({*live0, "NEWXUSDT"}), start, wm_ms + M)
        d = diff_truth(lake.filter(pl.col("t") <= wm_ms), truth)
        assert d["missing"] == d["extra"] == d["differ"] == 0, d
        assert lake.select("symbol", "t").is_duplicated().sum() == 0
        # the delisted symbol stops at its delisting, the new one starts at its listing
        assert lake.filter(pl.col("symbol") == gone)["t"].max() < wm_ms
        assert lake.filter(pl.col("symbol") == "NEWXUSDT").height > 5
        assert feed["listed"] == 1 and feed["delisted"] == 1
        # the faults really happened and were repaired
        assert feed["ws"]["drops"] >= 3
        assert feed["rest_repaired"] >= 2 * 15  # the two symbols without closing events, every period
        assert feed["appender"]["updates"] > 0 and feed["appender"]["closed"] > 0
        assert not feed["appender"]["bad"]
        assert feed["periods_checked"] >= 22 and wm_ms >= start + 22 * M
        # readers: zero errors, the watermark never ahead of the data and never backwards
        print(
            f"duckdb: {reader.queries} queries ({reader.with_tail} with tail candles), "
            f"{reader.torn} torn reads, {reader.gone} tail files gone, errors {reader.errors}; "
            f"compactions {feed['compactions']}"
        )
        assert reader.queries > 20 and reader.with_tail > 10 and reader.errors == []
        assert feed["compactions"] >= 10 and feed["tail_files_retired"] > 0
        assert auditor.checks >= 5 and auditor.violations == []
        assert [w["trade_type"] for w in read_watermarks(tmp_path)] == [TT]
        assert "symbols ready" in caplog.text and "health" in caplog.text


async def test_live_offsets_equal_a_fresh_build(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    cfg = test_config(speed=120.0, n_symbols_by_market={"um": 12})
    async with sim_server(cfg) as sim:
        sim.faults.update(
            {"ws_skip_close_symbols": sim.market.symbols(TT, trading_at=sim.clock.now_ms())[:1]}
        )
        settings = Settings(root=str(root), sim_url=sim.base_url)
        config = LiveConfig(
            trade_types=(TT,), intervals=(IV,), offsets=("5m",), periods=12, grace_s=5.0, history=23
        )
        runner = LiveRunner(settings, config)
        summary = await asyncio.wait_for(runner.run(), timeout=90)
    stats = summary["feeds"][0]["offsets"]
    assert stats["builds"] >= 5 and stats["errors"] == 0 and stats["written"] > 0
    fresh = tmp_path / "fresh"
    shutil.copytree(root / "klines", fresh / "klines")
    build_offsets(fresh, TT, "5m", base=IV)
    cols = ["symbol", "offset", "candle_begin_time"]
    live = scan_offsets(root, TT, "5m").collect().sort(cols)
    ref = scan_offsets(fresh, TT, "5m").collect().sort(cols)
    assert live.height == ref.height > 0
    assert live.equals(ref)
    assert sorted(live["offset"].unique()) == ["0m", "1m", "2m", "3m", "4m"]


async def test_duration_stops_cleanly(tmp_path: Path) -> None:
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 6})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=(TT,), intervals=(IV,), duration_s=2.5, history=3),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=60)
    assert summary["stop_reason"] == "--duration 2.5s reached"
    assert read_watermark(tmp_path, TT, IV) is not None


async def test_a_dying_batch_write_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches are written by tasks of their own; a bug in one must stop the run loudly, not vanish.
    async def broken(self: LiveRunner, feed: Any, rows: dict[str, Any], source: str) -> dict[str, float]:
        if source == "ws":
            raise RuntimeError("bug in the batch path")
        return await original(self, feed, rows, source)

    original = LiveRunner._store
    monkeypatch.setattr(LiveRunner, "_store", broken)
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 6})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=(TT,), intervals=(IV,), duration_s=20.0, history=3),
        )
        with pytest.raises(RuntimeError, match="bug in the batch path"):
            await asyncio.wait_for(runner.run(), timeout=60)
    assert runner.stop_reason.startswith("task writer")
