"""The CLI as a user runs it: a real subprocess, one clear line on error, non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lake.store.klines import write_klines
from tests.store.helpers import frame, t0_ms


def run(*args: str, env_root: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--interval", "7m"], "unknown interval '7m'; valid: 1s, 1m"),
        (["status", "--type", "usdt_future"], "unknown trade type 'usdt_future'; valid: usdt_spot"),
        (["status", "--symbols", "../etc"], "invalid symbol '../etc'"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(tmp_path, args: list[str], message: str) -> None:
    res = run(*args, "--root", str(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("lake: error: ") and message in lines[0]
    assert "Traceback" not in res.stderr


def test_bad_config_file_is_a_clear_error(tmp_path) -> None:
    cfg = tmp_path / "lake.toml"
    cfg.write_text("rooot = 'x'\n")
    res = run("status", "--config", str(cfg))
    assert res.returncode == 2 and "unknown setting 'rooot'" in res.stderr


def test_status_reports_rows_and_holes_as_json(tmp_path) -> None:
    kept = [i for i in range(50) if i not in (7, 8, 30)]
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms() + i * 300_000 for i in kept]))
    res = run("status", "--root", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (s,) = doc["series"]
    assert (s["symbol"], s["rows"], s["expected"], s["missing"]) == ("ETHUSDT", 47, 50, 3)
    assert [h["missing"] for h in s["holes"]] == [2, 1]
    table = run("status", "--root", str(tmp_path), "--holes")
    assert table.returncode == 0 and "ETHUSDT" in table.stdout and "missing 2 candles" in table.stdout
