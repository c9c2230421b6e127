"""The real `lake live` process: SIGKILL mid-run and restart leaves no hole; SIGTERM flushes and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from lake.live.watermark import read_watermark
from lake.sim.config import FaultConfig
from lake.sim.testing import start_sim, test_config

from .helpers import DuckReader, M, diff_truth, lake_frame

TT, IV = "usdt_perp", "1m"
pytestmark = pytest.mark.slow


def _spawn(root: Path, url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "lake.cli", "live", "--type", TT, "--interval", IV, "--root", str(root)]
    cmd += ["--sim-url", url, "--grace", "5", "--history", "20", "--health-every", "2", *extra]
    with log.open("ab") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=dict(os.environ))


def _watermark(root: Path) -> int | None:
    doc = read_watermark(root, TT, IV)
    return doc["watermark_ms"] if doc else None


def _wait_watermark(root: Path, at_least: int | None, timeout: float, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wm = _watermark(root)
        if wm is not None and (at_least is None or wm >= at_least):
            return wm
        if proc.poll() is not None:
            log = root.parent / "live.log"
            raise AssertionError(f"lake live exited early with {proc.returncode}:\n{log.read_text()[-5000:]}")
        time.sleep(0.05)
    raise AssertionError(f"watermark did not reach {at_least} in {timeout}s (now {_watermark(root)})")


def test_sigkill_restart_then_sigterm(tmp_path: Path) -> None:
    root, log = tmp_path / "lake", tmp_path / "live.log"
    cfg = test_config(
        speed=120.0,
        n_symbols_by_market={"um": 20},
        ws_intermediate=True,
        faults=FaultConfig(ws_drop_every_s=2.0),
    )
    with start_sim(cfg) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        gone = live[-1]
        sim.faults.update({"ws_skip_close_symbols": live[:1]})
        reader = DuckReader(root)
        reader.start()
        try:
            first = _spawn(root, sim.base_url, log)
            try:
                wm0 = _wait_watermark(root, None, 60, first)
                _wait_watermark(root, wm0 + 2 * M, 60, first)
                sim.server.control_faults({"delist": [{"market": "um", "symbol": gone}]})
                _wait_watermark(root, wm0 + 7 * M, 60, first)
            finally:
                first.send_signal(signal.SIGKILL)
                first.communicate(timeout=10)
            assert first.returncode == -signal.SIGKILL
            killed_at = _watermark(root)
            assert killed_at is not None
            # while nobody listens: a listing, and a delisting (its last candles must still be fetched)
            sim.server.control_faults({"list": [{"market": "um", "symbol": "DOWNXUSDT"}]})
            sim.server.control_faults({"delist": [{"market": "um", "symbol": live[-2]}]})
            time.sleep(1.5)  # three virtual minutes pass
            second = _spawn(root, sim.base_url, log)
            try:
                _wait_watermark(root, killed_at + 4 * M, 60, second)
                sim.server.control_faults({"list": [{"market": "um", "symbol": "LATEXUSDT"}]})
                listed = sim.clock.now_ms()  # start-up alone spans minutes of virtual time at 120x
                _wait_watermark(root, max(killed_at + 14 * M, listed + 5 * M), 60, second)
                second.send_signal(signal.SIGTERM)
                out, _ = second.communicate(timeout=30)
            finally:
                if second.poll() is None:
                    second.kill()
                second.communicate(timeout=10)
            assert second.returncode == 0, log.read_text()[-3000:]
            assert b"watermark" in out
        finally:
            reader.stop()
        wm = _watermark(root)
        assert wm is not None and wm >= killed_at + 14 * M and wm >= wm0 + 20 * M
        lake = lake_frame(root)
        followed = sorted({*live, "DOWNXUSDT", "LATEXUSDT"})
        assert sorted(lake["symbol"].unique()) == followed, log.read_text()[-6000:]
        start = int(lake["t"].min())
        truth = sim.market.truth(TT, IV, followed, start, wm + M)
        d = diff_truth(lake.filter(pl.col("t") <= wm), truth)
        assert d["missing"] == d["extra"] == d["differ"] == 0, d
        assert lake.filter(pl.col("symbol") == gone)["t"].max() < killed_at
        assert lake.filter(pl.col("symbol") == live[-2])["t"].max() > killed_at  # finished after restart
        assert "stopped trading since the last run" in log.read_text()
        assert lake.select("symbol", "t").is_duplicated().sum() == 0
        text = log.read_text()
        assert "catch-up done" in text and "stopping: signal SIGTERM" in text
        print(f"duckdb: {reader.queries} queries, {reader.torn} torn reads")
        assert reader.errors == [] and reader.queries > 20
