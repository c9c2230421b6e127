"""Spot 1s end to end: the lake's own clients (``lake backfill`` over REST and the archive, ``lake
offsets``, ``lake live``) against the simulator, the lake checked against its ground truth exactly."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import lake.transform.build as build_module
from lake.live.runner import LiveConfig, LiveRunner
from lake.live.watermark import read_watermark
from lake.schema import KLINE_COLUMNS
from lake.settings import Settings
from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.server import SimHandle
from lake.sim.testing import TEST_START, sim_server, start_sim, test_config
from lake.store.klines import list_partitions, scan_klines, write_klines
from lake.transform.build import build_offsets, scan_offsets
from tests.live.helpers import diff_truth, lake_frame
from tests.transform.helpers import random_candles

TT = "usdt_spot"
NOW = to_ms(TEST_START)  # 2025-03-15 12:00, frozen
VALUES = [c for c in KLINE_COLUMNS if c != "source"]


def lake(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "LAKE_PROGRESS": "0"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res


def stored(root: Path, interval: str, symbols: list[str]) -> pl.DataFrame:
    return scan_klines(root, TT, interval, symbols).collect().sort("symbol", "candle_begin_time")


def assert_lake_is_truth(
    sim: SimHandle, root: Path, symbols: list[str], start: int, end: int
) -> pl.DataFrame:
    got = stored(root, "1s", symbols)
    want = sim.market.truth(TT, "1s", symbols, start, end)
    assert got.height == want.height > 0
    assert got.select("symbol", *VALUES).equals(want.select("symbol", *VALUES))
    return got


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with start_sim() as handle:
        yield handle


def test_rest_backfill_then_offsets_1m_from_1s(sim: SimHandle, tmp_path: Path) -> None:
    symbols = ["BTCUSDT", "BNBUSDT"]  # BNBUSDT: illiquid, most of its seconds have no trades
    res = lake(
        "backfill", "--source", "rest", "--type", TT, "--interval", "1s", "--days", "1",
        "--symbols", ",".join(symbols), "--root", str(tmp_path), "--sim-url", sim.base_url, "--json",
    )  # fmt: skip
    doc = json.loads(res.stdout)
    start, end = NOW - MS_PER_DAY, NOW
    got = assert_lake_is_truth(sim, tmp_path, symbols, start, end)
    assert got.height == 2 * 86_400
    # 1000-row pages at weight 2 (plus exchangeInfo 20 and time 1), one UTC day per partition
    series = {s["symbol"]: s for s in doc["series"]}
    assert [series[s]["requests"] for s in symbols] == [87, 87]
    assert doc["markets"]["spot"]["weight"] == 2 * 2 * 87 + 20 + 1
    for s in symbols:
        days = [k.date.isoformat() for k in list_partitions(tmp_path, TT, "1s", s)]
        assert days == ["2025-03-14", "2025-03-15"]
        per_day = stored(tmp_path, "1s", [s])["candle_begin_time"].dt.date().value_counts()
        assert per_day["count"].to_list() == [43_200, 43_200]
    # lake offsets: 1m from 1s (Binance's rule) at offset 0 is the exchange's own 1m candle
    res = lake(
        "offsets", "--type", TT, "--interval", "1m", "--base", "1s", "--method", "binance", "--offsets", "0s",
        "--root", str(tmp_path), "--json",
    )  # fmt: skip
    off = scan_offsets(tmp_path, TT, "1m", "0s").collect().sort("symbol", "candle_begin_time")
    want = sim.market.truth(TT, "1m", symbols, start, end)
    assert off.height == want.height == 2 * 1440
    assert (off["n_base"] == 60).all()
    exact = ["symbol", "candle_begin_time", "open", "high", "low", "close", "trade_num"]
    assert off.select(exact).equals(want.select(exact))
    # Volumes are float64 sums of 60 decimals: equal to the 1m strings' values to the last decimal
    # (8 on spot), within an ulp or two before rounding.
    sums = [c for c in VALUES if c not in exact]
    assert off.select(pl.col(sums).round(8)).equals(want.select(pl.col(sums).round(8)))
    rel = off.select(((pl.col(c) - want[c]).abs() / want[c].abs().clip(1e-300)).max() for c in sums)
    assert max(rel.row(0)) <= 1e-15


def test_archive_backfill_daily_and_monthly_1s(sim: SimHandle, tmp_path: Path) -> None:
    # Daily files (µs timestamps) of a day with a maintenance window (06:05-08:40): 1s has holes too.
    symbols = ["ETHUSDT", "BNBUSDT"]
    res = lake(
        "backfill", "--source", "archive", "--type", TT, "--interval", "1s", "--start", "2025-03-11",
        "--end", "2025-03-12", "--symbols", ",".join(symbols), "--root", str(tmp_path), "--sim-url", sim.base_url,
        "--json",
    )  # fmt: skip
    (arch,) = json.loads(res.stdout)["archive"]
    assert (arch["files_downloaded"], arch["partitions_written"]) == (2, 2)
    got = assert_lake_is_truth(sim, tmp_path, symbols, to_ms("2025-03-11"), to_ms("2025-03-12"))
    assert got.height == 2 * (86_400 - 155 * 60) and set(got["source"]) == {"archive"}
    before = sim.server.archive.built
    # A monthly file: DOGEUSDT was relisted on 2025-01-29 06:00, its January 1s file (streamed by the
    # simulator, chunked) holds 2.75 days.
    res = lake(
        "backfill", "--source", "archive", "--type", TT, "--interval", "1s", "--start", "2025-01-01",
        "--end", "2025-02-01", "--symbols", "DOGEUSDT", "--root", str(tmp_path), "--sim-url", sim.base_url,
        "--json",
    )  # fmt: skip
    (arch,) = json.loads(res.stdout)["archive"]
    assert (arch["files_planned"], arch["files_downloaded"], arch["partitions_written"]) == (1, 1, 3)
    assert sim.server.archive.built == before + 2  # the .CHECKSUM's pass and the download's
    got = assert_lake_is_truth(sim, tmp_path, ["DOGEUSDT"], to_ms("2025-01-01"), to_ms("2025-02-01"))
    assert got.height == (2 * 1440 + 18 * 60) * 60


async def test_live_1s_closed_candles_equal_truth(tmp_path: Path) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    async with sim_server(test_config(speed=30.0, ws_intermediate=True)) as sim:
        settings = Settings(root=str(tmp_path), sim_url=sim.base_url)
        config = LiveConfig(
            trade_types=(TT,),
            intervals=("1s",),
            symbols=symbols,
            offsets=("1m",),
            periods=150,
            grace_s=3.0,
            history=60,
        )
        t0 = sim.clock.now_ms()
        summary = await asyncio.wait_for(LiveRunner(settings, config).run(), timeout=40)
        wm = read_watermark(tmp_path, TT, "1s", list(symbols))  # a --symbols run has its own
        assert wm is not None
        wm_ms = wm["watermark_ms"]
        got = lake_frame(tmp_path, TT, "1s")
        start = int(got.select(pl.col("t").min()).item())
        want = sim.market.truth(TT, "1s", list(symbols), start, wm_ms + 1000)
    assert start <= t0 - 50_000  # the history fetched by REST first
    assert wm_ms >= t0 + 140_000  # a few virtual minutes followed
    d = diff_truth(got.filter(pl.col("t") <= wm_ms), want)
    assert d["missing"] == d["extra"] == d["differ"] == 0, d
    feed = summary["feeds"][0]
    assert feed["periods_checked"] >= 150 and not feed["appender"]["bad"]
    assert feed["appender"]["updates"] > 0 and feed["appender"]["closed"] >= 3 * 100  # x:false and x:true
    assert set(got["source"]) >= {"ws"}
    # live offsets (1m from 1s, built while candles land every second) equal a build from scratch
    assert feed["offsets"]["builds"] > 5 and feed["offsets"]["errors"] == 0
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "klines", fresh / "klines")
    build_offsets(fresh, TT, "1m", base="1s")
    cols = ["symbol", "offset", "candle_begin_time"]
    live = scan_offsets(tmp_path, TT, "1m").collect().sort(cols)
    assert live.select(cols).is_duplicated().sum() == 0
    assert live.equals(scan_offsets(fresh, TT, "1m").collect().sort(cols)) and live.height > 0


def test_offsets_build_leaves_candles_appended_meanwhile_to_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build recomputing a range (an edited candle) reads the base after planning; a live 1s feed
    appends meanwhile. The appended candles completed bins in the period files while the manifest
    recorded the base as planned, so the next build's tail layer held those bins again: scan_offsets
    returned them twice (live 1s feeds with --offsets met it every few builds)."""
    root, sym = tmp_path / "lake", "BTCUSDT"
    rows = random_candles(3, 1000, 260, hole_rate=0.0)
    first, late = rows.head(200), rows.slice(200, 30)
    write_klines(root, TT, "1s", sym, first)
    build_offsets(root, TT, "1m", base="1s", method="binance")
    edited = first.slice(50, 1).with_columns(pl.col("close") + 1.0, pl.col("high") + 1.0)
    write_klines(root, TT, "1s", sym, edited)
    real = build_module._read_base

    def racing(*args: Any, **kwargs: Any) -> pl.DataFrame:
        monkeypatch.setattr(build_module, "_read_base", real)
        write_klines(root, TT, "1s", sym, late)  # between planning and the build's read
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "_read_base", racing)
    build_offsets(root, TT, "1m", base="1s", method="binance")
    build_offsets(root, TT, "1m", base="1s", method="binance")  # takes the appended candles
    cols = ["symbol", "offset", "candle_begin_time"]
    got = scan_offsets(root, TT, "1m").collect().sort(cols)
    assert got.select(cols).is_duplicated().sum() == 0
    fresh = tmp_path / "fresh"
    write_klines(fresh, TT, "1s", sym, scan_klines(root, TT, "1s").collect())
    build_offsets(fresh, TT, "1m", base="1s", method="binance")
    assert got.equals(scan_offsets(fresh, TT, "1m").collect().sort(cols))
    assert got.filter(pl.col("offset") == "0s").height == 3  # 00:00, 00:01 and 00:02 (to 00:03:49)
