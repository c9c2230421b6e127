"""``lake sql``: one query in any format, or statements from stdin."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from lake.commands import sql as sql_command
from lake.errors import ValidationError
from lake.store.klines import write_klines
from tests.transform.helpers import random_candles


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    sql_command.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps `sql` a named subcommand
    return app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 30, hole_rate=0.0))
    return tmp_path


Q = "SELECT symbol, count(*) AS n FROM klines GROUP BY symbol"


def test_formats(app: typer.Typer, root: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["sql", Q, "--root", str(root)])
    assert r.exit_code == 0 and "BTCUSDT" in r.output and "30" in r.output
    r = CliRunner().invoke(app, ["sql", Q, "--format", "csv", "--root", str(root)])
    assert r.output.splitlines() == ["symbol,n", "BTCUSDT,30"]
    r = CliRunner().invoke(app, ["sql", Q, "--format", "json", "--root", str(root)])
    assert json.loads(r.stdout) == [{"symbol": "BTCUSDT", "n": 30}]
    out = tmp_path / "out.parquet"
    r = CliRunner().invoke(app, ["sql", Q, "--format", "parquet", "--output", str(out), "--root", str(root)])
    assert r.exit_code == 0 and pl.read_parquet(out).rows() == [("BTCUSDT", 30)]


def test_statements_from_stdin(app: typer.Typer, root: Path) -> None:
    stdin = "SELECT 41 + 1 AS answer;\nSELECT count(*) AS n\n  FROM klines;\n.quit\nSELECT 'never';\n"
    r = CliRunner().invoke(app, ["sql", "--format", "csv", "--root", str(root)], input=stdin)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == ["answer", "42", "n", "30"]


def test_errors(app: typer.Typer, root: Path) -> None:
    r = CliRunner().invoke(app, ["sql", "SELECT * FROM nope", "--root", str(root)])
    assert isinstance(r.exception, ValidationError) and "SQL error" in str(r.exception)
    r = CliRunner().invoke(app, ["sql", Q, "--format", "parquet", "--root", str(root)])
    assert isinstance(r.exception, ValidationError) and "--output" in str(r.exception)
    r = CliRunner().invoke(app, ["sql", Q, "--format", "xml", "--root", str(root)])
    assert isinstance(r.exception, ValidationError)
