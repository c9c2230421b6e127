"""``lake offsets`` as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lake.commands import offsets as offsets_command
from lake.errors import DataError, ValidationError
from lake.store.klines import scan_klines, write_klines
from tests.transform.helpers import T0_MS, random_candles


def _app() -> typer.Typer:
    app = typer.Typer()
    offsets_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    return app


def test_build_then_nothing_to_do(tmp_path: Path) -> None:
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 600))
    args = ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(tmp_path)]
    r = CliRunner().invoke(_app(), [*args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["base"] == "5m" and len(doc["offsets"]) == 12 and doc["written"] == 12
    stored = scan_klines(tmp_path, "usdt_perp", "5m").collect().height
    assert doc["base_rows_read"] == stored > 0
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0 and "0 files written" in r.output and "(0 candles read)" in r.output
    # a later day goes to the tail (one file); --fold moves it into the period files
    write_klines(
        tmp_path,
        "usdt_perp",
        "5m",
        "BTCUSDT",
        random_candles(2, 300_000, 288, start_ms=T0_MS + 600 * 300_000),
    )
    r = CliRunner().invoke(_app(), [*args, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] == 1 and json.loads(r.stdout)["tail_bins"] > 0
    r = CliRunner().invoke(_app(), [*args, "--fold"])
    assert r.exit_code == 0 and "1 tails folded" in r.output, r.output


def test_invalid_combination_is_a_validation_error(tmp_path: Path) -> None:
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 12))
    r = CliRunner().invoke(
        _app(),
        ["offsets", "--type", "usdt_perp", "--interval", "1h", "--base", "7m", "--root", str(tmp_path)],
    )
    assert isinstance(r.exception, ValidationError) and "unknown interval '7m'" in str(r.exception)
    r = CliRunner().invoke(
        _app(),
        ["offsets", "--type", "usdt_perp", "--interval", "1h", "--offsets", "7m", "--root", str(tmp_path)],
    )
    assert isinstance(r.exception, ValidationError) and "multiple of 5m" in str(r.exception)


def test_a_damaged_base_partition_stops_an_appended_day_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appended day's month file, damaged as other readers would not notice (its LZ4 pages
    inflate short: made here by a compressor that drops each page's last value): ``lake offsets``
    names the file and exits with the bad-data code, and the offsets table is left as it was."""
    from lake.store import parquet_plain

    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 5 * 288, hole_rate=0.0))
    args = ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(tmp_path)]
    cli = [sys.executable, "-m", "lake.cli"]
    assert subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120).returncode == 0
    before = sorted(
        (p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "offsets").rglob("*.parquet")
    )
    real = parquet_plain._LZ4

    class Short:
        def compress(self, body: bytes, asbytes: bool = True) -> bytes:
            return real.compress(body[:-8], asbytes=True)

    monkeypatch.setattr(parquet_plain, "_LZ4", Short())
    write_klines(
        tmp_path,
        "usdt_perp",
        "5m",
        "BTCUSDT",
        random_candles(2, 300_000, 288, start_ms=T0_MS + 5 * 86_400_000),
    )
    monkeypatch.undo()
    res = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == DataError.exit_code, res.stderr
    assert (
        "corrupt kline partition" in res.stderr and "BTCUSDT" in res.stderr and "Traceback" not in res.stderr
    )
    after = sorted(
        (p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "offsets").rglob("*.parquet")
    )
    assert after == before


def test_a_root_or_symbol_the_lake_does_not_hold(tmp_path: Path) -> None:
    from lake.errors import NotFoundError

    missing = tmp_path / "nolake"
    r = CliRunner().invoke(
        _app(), ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(missing)]
    )
    assert isinstance(r.exception, NotFoundError) and "no lake at" in str(r.exception)
    assert not missing.exists()  # a mistyped root is not created (it left .locks/ behind)
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 24))
    r = CliRunner().invoke(
        _app(),
        [
            "offsets",
            "--type",
            "usdt_perp",
            "--interval",
            "1h",
            "--symbols",
            "NOPEUSDT",
            "--root",
            str(tmp_path),
        ],
    )
    assert isinstance(r.exception, NotFoundError)
    assert "klines of NOPEUSDT" in str(r.exception) and "of any usdt_perp symbol: 5m" in str(r.exception)
    # with the base named, or next to a symbol the lake holds, a typo is still an error, and
    # nothing is built (it exited 0 reporting 1 symbol and 0 bins)
    base = ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(tmp_path), "--json"]
    for extra in (["--base", "5m", "--symbols", "NOPEUSDT"], ["--symbols", "NOPEUSDT,BTCUSDT"]):
        r = CliRunner().invoke(_app(), [*base, *extra])
        assert isinstance(r.exception, NotFoundError), r.output
        assert "5m klines of NOPEUSDT" in str(r.exception) and "(1 symbols hold them)" in str(r.exception)
    assert not (tmp_path / "offsets").exists()
    r = CliRunner().invoke(_app(), [*base, "--symbols", "BTCUSDT"])
    assert r.exit_code == 0 and json.loads(r.stdout)["written"] > 0
