"""Entry points: the thread runner, the extra-routes hook, ``lake sim`` serve and truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web
from typer.testing import CliRunner

from lake.sim import SimMarket, VirtualClock, run_in_thread
from lake.sim.cli import sim_app
from lake.sim.testing import TEST_START, start_sim, test_config


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_thread_runner_and_extra_routes() -> None:
    def extra(app: web.Application, market: SimMarket, clock: VirtualClock) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"now": clock.now_ms(), "n": len(market.symbols("usdt_perp"))})

        app.router.add_get("/quantclass/hello", hello)

    with start_sim(extra_routes=extra, n_symbols=12) as sim:
        assert sim.endpoints.quantclass == f"{sim.base_url}/quantclass"
        assert _get(f"{sim.base_url}/quantclass/hello") == {"now": sim.clock.now_ms(), "n": 7}
        assert _get(f"{sim.base_url}/fapi/v1/time") == {"serverTime": sim.clock.now_ms()}
        sim.clock.advance(60_000)
        assert sim.market.truth("usdt_perp", "1m", ["BTCUSDT"], TEST_START).height == 1
        port = sim.server.port
        with pytest.raises(OSError):
            run_in_thread(test_config(port=port))
    sim.stop()  # idempotent


def test_truth_command(tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    args = ["truth", "--type", "coin_perp", "--interval", "4h", "--symbols", "BTCUSD_PERP,ETHUSD_PERP",
            "--start", "2025-03-01", "--end", "2025-03-02", "--sim-start", TEST_START, "--history-days", "150",
            "--output", str(out)]  # fmt: skip
    r = CliRunner().invoke(sim_app, args)
    assert r.exit_code == 0, r.output
    want = SimMarket(test_config()).truth(
        "coin_perp", "4h", ["BTCUSD_PERP", "ETHUSD_PERP"], "2025-03-01", "2025-03-02"
    )
    assert pl.read_parquet(out).equals(want) and want.height == 12
    r = CliRunner().invoke(sim_app, [*args[:-2]])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("symbol,candle_begin_time,open")
    r = CliRunner().invoke(
        sim_app, ["truth", "--type", "coin_perp", "--interval", "1s", "--sim-start", TEST_START]
    )
    assert r.exit_code == 2 and "1s" in r.output and r.output.startswith("lake: error: ")
    bad = tmp_path / "t.json"
    r = CliRunner().invoke(sim_app, [*args[:-1], str(bad)])
    assert r.exit_code == 2 and "--output must end in .parquet or .csv" in r.output and not bad.exists()


def test_serve_is_the_default_command() -> None:
    code = "from lake.sim.cli import sim_app; sim_app()"
    args = ["--port", "0", "--json", "--speed", "0", "--start", TEST_START, "--symbols", "5",
            "--set", 'weight_limits={"spot": 6000, "um": 7, "cm": 2400}', "--set", 'faults={"force_429": 1}']  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        assert urls["ws"]["um"].endswith("/ws-um/market") and urls["archive"].endswith("/archive")
        info = _get(f"{urls['rest']}/_sim/info")
        assert isinstance(info, dict) and len(info["symbols"]["usdt_spot"]) == 3
        assert info["weight_limits"]["um"] == 7
        with pytest.raises(urllib.error.HTTPError) as forced:
            _get(f"{urls['rest']}/dapi/v1/time")
        assert forced.value.code == 429
        forced.value.close()
        assert _get(f"{urls['rest']}/dapi/v1/time") == {"serverTime": 1742040000000}
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    r = CliRunner().invoke(sim_app, ["serve", "--help"])
    assert r.exit_code == 0 and "--speed" in r.output
    r = CliRunner().invoke(sim_app, ["serve", "--set", "no_such_knob=1"])
    assert r.exit_code == 2 and "no_such_knob" in r.output
