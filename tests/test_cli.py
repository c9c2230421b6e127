"""The CLI as a user runs it: a real subprocess, one clear line on error, non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lake.store.fs import LakeFS
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


def test_compact_moves_the_tail_into_partitions(tmp_path) -> None:
    import polars as pl

    from lake.store.klines import scan_klines
    from lake.store.tail import tail_files, write_tail

    opens = [t0_ms() + k * 60_000 for k in range(5)]
    rows = frame(opens, source="ws").with_columns(pl.lit("BTCUSDT").alias("symbol"))
    write_tail(str(tmp_path), "usdt_perp", "1m", rows)
    before = scan_klines(tmp_path, "usdt_perp", "1m").collect()
    assert scan_klines(tmp_path, "usdt_perp", "1m", tail=False).collect().height == 0
    res = run("compact", "--json", "--root", str(tmp_path))
    assert res.returncode == 0, res.stderr
    feeds = json.loads(res.stdout)["feeds"]
    assert feeds == [
        {"trade_type": "usdt_perp", "interval": "1m", "files_compacted": 1, "candles": 5, "symbols": 1,
         "files_deleted": 0, "failed": {}}
    ]  # fmt: skip
    assert scan_klines(tmp_path, "usdt_perp", "1m", tail=False).collect().equals(before)
    assert scan_klines(tmp_path, "usdt_perp", "1m").collect().equals(before)
    assert len(tail_files(LakeFS(tmp_path), "usdt_perp", "1m")) == 1  # deleted only after --grace
    res = run("compact", "--grace", "0", "--root", str(tmp_path))
    assert res.returncode == 0 and "1 old tail files deleted" in res.stdout
    assert tail_files(LakeFS(tmp_path), "usdt_perp", "1m") == []
