"""What README.md and docs/ promise about the command line, checked on the in-process CLI.

README: "Errors are one line on stderr with a non-zero exit code (2 for bad input or settings …)";
`lake sql`'s QUERY "without it, read statements from stdin", and `--output` writes the result.
"""

from __future__ import annotations

import io
import socket

import polars as pl
import pytest

from lake.cli import main


def cli(*args: str) -> int:
    """Run ``lake ARGS`` in this process; its exit code."""
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lake: error: "), err
    return lines[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_sql_reading_stdin_writes_output(tmp_path, monkeypatch, capsys, fmt: str) -> None:
    # Statements from stdin ignored --output (csv went to stdout) and --format parquet failed with
    # an AssertionError traceback.
    (tmp_path / "lake").mkdir()
    out = tmp_path / f"result.{fmt}"
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT 1 AS x;\nSELECT 42 AS x;\n"))
    code = cli("sql", "--root", str(tmp_path / "lake"), "--format", fmt, "--output", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == ""
    got = pl.read_csv(out) if fmt == "csv" else pl.read_parquet(out)
    assert got.to_dicts() == [{"x": 42}]  # the last result, as with several statements in QUERY


def test_a_port_in_use_is_one_line(capsys) -> None:
    # `lake sim --port 8765` while another simulator runs printed an OSError traceback.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli("sim", "--port", str(port), "--symbols", "3", "--history-days", "1")
    line = one_error_line(capsys.readouterr().err)
    assert code == 2
    assert str(port) in line and "in use" in line


@pytest.mark.parametrize("root", ["", "file://"])
def test_an_empty_root_is_refused(tmp_path, monkeypatch, capsys, root: str) -> None:
    # `--root ''` was the current directory: status reported it, backfill would have filled it.
    monkeypatch.chdir(tmp_path)
    code = cli("status", "--root", root)
    assert code == 2
    assert "lake root is empty" in one_error_line(capsys.readouterr().err)


def test_backfill_help_names_the_archive(capsys) -> None:
    # The help said "Backfill klines over REST", while the default --source auto takes published
    # days from the archive, which stores whole days (a window's edges are not cut).
    assert cli("backfill", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "over REST for one or more" not in text
    assert "archive" in text.split("Options")[0]
    assert "whole" in text


def test_cli_reference_tables_have_two_cells() -> None:
    # `--source`'s help "archive | rest | auto" split its row of docs/cli.md into five cells.
    from lake.clidoc import render

    rows = [line for line in render().splitlines() if line.startswith("|")]
    bad = [row for row in rows if row.count("|") - row.count("\\|") != 3]
    assert rows and not bad, bad
