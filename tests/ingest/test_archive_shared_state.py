"""Two `lake backfill --source auto` processes sharing one state (download) directory and one lake."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import polars as pl

from lake.schema import KLINE_COLUMNS
from lake.sim import SimServer
from tests.ingest.test_archive_sim import IV, START, TT, lake_frame, settings_for, sim_config, truth


async def test_two_processes_share_downloads_and_lake(tmp_path: Path) -> None:
    async with SimServer(sim_config()) as sim:
        s = settings_for(sim, tmp_path)
        cmd = [
            sys.executable, "-m", "lake.cli", "backfill", "--type", TT, "--interval", IV,
            "--start", "2024-01-20", "--end", "2024-03-09", "--source", "auto",
            "--sim-url", sim.base_url, "--root", s.root,
        ]  # fmt: skip
        env = {"LAKE_STATE_DIR": str(tmp_path / "state")}
        import os

        procs = [
            await asyncio.create_subprocess_exec(
                *cmd,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **env},
            )
            for _ in range(2)
        ]
        results = [await p.communicate() for p in procs]
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err.decode()[-2000:]
        symbols = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        got = lake_frame(s, symbols)
        want = truth(sim, symbols, got["candle_begin_time"].min())  # type: ignore[arg-type]
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        end = pl.col("candle_begin_time") < pl.datetime(2024, 3, 9, time_zone="UTC")
        assert got.filter(end).select(cols).equals(want.filter(end).select(cols))
        assert got["candle_begin_time"].min() <= START
