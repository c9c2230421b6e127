"""``lake backfill`` as a user runs it: real subprocesses against a simulator in a thread."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from lake.sim.testing import start_sim
from lake.store.klines import scan_klines

LIMITS_BIG = {"spot": 1_000_000, "um": 1_000_000, "cm": 1_000_000}


def lake_cmd(*args: str) -> list[str]:
    """``lake backfill --source rest …`` (the REST path of issue #4; ``auto`` adds the archive)."""
    return [sys.executable, "-m", "lake.cli", "backfill", "--source", "rest", *args]


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lake_cmd(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def one_line_error(res: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if "lake: error:" in ln]
    assert len(lines) == 1, res.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--type", "usdt_future", "--days", "1"], "unknown trade type 'usdt_future'"),
        (["--type", "usdt_perp", "--days", "0"], "--days must be a number > 0, got 0"),
        (["--type", "usdt_perp", "--interval", "7m", "--days", "1"], "unknown interval '7m'"),
        (["--type", "usdt_perp", "--days", "1", "--symbols", "../x"], "invalid symbol '../x'"),
    ],
)
def test_input_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    one_line_error(run(*args, "--root", str(tmp_path), "--rest-url", "http://127.0.0.1:9"), 2, message)


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    t0 = time.monotonic()
    res = run(
        "--type", "usdt_perp", "--days", "1", "--root", str(tmp_path), "--rest-url", "http://127.0.0.1:9"
    )
    one_line_error(res, 3, "cannot reach http://127.0.0.1:9/fapi/v1/time")
    assert time.monotonic() - t0 < 15


def test_archive_list_url_flag_moves_the_listing(tmp_path: Path) -> None:
    # --archive-url moves the files only; the listing (an S3 bucket) has its own flag. Without it a
    # mirror user silently listed the real bucket. (A path the simulator does not serve answers 404
    # at once; an unreachable port would be retried for 7.5 s.)
    with start_sim() as sim:
        elsewhere = f"{sim.base_url}/elsewhere/bucket"
        res = subprocess.run(
            [sys.executable, "-m", "lake.cli", "backfill", "--source", "archive", "--type", "usdt_perp",
             "--days", "1", "--symbols", "BTCUSDT", "--root", str(tmp_path), "--sim-url", sim.base_url,
             "--archive-list-url", elsewhere],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    one_line_error(
        res, 2, f"archive listing {elsewhere}?prefix=data%2Ffutures%2Fum%2Fdaily%2Fklines%2FBTCUSDT"
    )


def test_unknown_symbol_names_it_and_json_summary(tmp_path: Path) -> None:
    with start_sim() as sim:
        res = run(
            "--type",
            "usdt_perp",
            "--days",
            "1",
            "--symbols",
            "BTCUSDT,NOPEUSDT",
            "--root",
            str(tmp_path),
            "--sim-url",
            sim.base_url,
        )
        one_line_error(res, 2, "unknown usdt_perp symbol: NOPEUSDT")
        res = run(
            "--type",
            "usdt_perp",
            "--type",
            "usdt_spot",
            "--days",
            "1",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--root",
            str(tmp_path),
            "--sim-url",
            sim.base_url,
            "--json",
        )
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["symbols"] == 4 and doc["candles"] == 4 * 288 and doc["missing"] == []
        assert set(doc["markets"]) == {"um", "spot"}


def _equal_truth(sim: object, root: Path, tt: str, iv: str, start_ms: int, end_ms: int) -> None:
    got = scan_klines(root, tt, iv).collect().sort("symbol", "candle_begin_time")
    syms = sorted(set(got["symbol"]))
    truth = sim.market.truth(tt, iv, syms, start_ms, end_ms, now=end_ms)  # type: ignore[attr-defined]
    assert got.select("symbol", "candle_begin_time").is_duplicated().sum() == 0
    assert got.height == truth.height
    assert got.select(truth.columns).equals(truth.sort("symbol", "candle_begin_time"))


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_completes(tmp_path: Path) -> None:
    rng = random.Random(4)
    with start_sim(weight_limits=LIMITS_BIG) as sim:
        args = (
            "--type",
            "usdt_perp",
            "--interval",
            "1m",
            "--days",
            "12",
            "--root",
            str(tmp_path),
            "--sim-url",
            sim.base_url,
            "--json",
        )
        killed = 0
        for _ in range(3):
            proc = subprocess.Popen(lake_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # a whole run takes ~2.2 s here (~1 s of it starting Python): kills after 1.2-3.0 s could
            # all come after it ended (CI saw that once), so they land in 0.5-1.8 s, start-up included
            time.sleep(rng.uniform(0.5, 1.8))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            _, err = proc.communicate(timeout=60)
            assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
        assert killed >= 1
        res = run(*args)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        s0 = doc["series"][0]
        start_ms = int(pl.Series([s0["start"]]).str.to_datetime().dt.epoch("ms")[0])
        end_ms = int(pl.Series([s0["end"]]).str.to_datetime().dt.epoch("ms")[0])
        _equal_truth(sim, tmp_path, "usdt_perp", "1m", start_ms, end_ms)
        final = run(*args)
        assert json.loads(final.stdout)["fetched"] == 0


@pytest.mark.slow
def test_two_processes_share_one_budget(tmp_path: Path) -> None:
    limits = {"spot": 6000, "um": 240, "cm": 2400}
    with start_sim(speed=60.0, weight_limits=limits) as sim:
        env = {"LAKE_STATE_DIR": str(tmp_path / "state")}
        procs = [
            subprocess.Popen(
                lake_cmd(
                    "--type",
                    "usdt_perp",
                    "--interval",
                    "1m",
                    "--days",
                    "10",
                    "--root",
                    str(tmp_path / f"r{i}"),
                    "--sim-url",
                    sim.base_url,
                    "--json",
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
        weights = [json.loads(out)["markets"]["um"]["weight"] for out, _ in outs]
        rest = sim.stats.snapshot()["rest"]["um"]
        assert sum(weights) > 2 * limits["um"]  # the two runs needed several windows
        assert rest["max_used_weight"] <= limits["um"]
        assert sim.stats.status_count("um", 429) == 0 and sim.stats.status_count("um", 418) == 0
