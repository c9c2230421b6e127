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


@pytest.mark.parametrize(
    ("args", "words"),
    [
        # lake live upper-cased --symbols where every other command refuses lower case (README: a
        # path is never derived from a string other than the one validated)
        (["live", "--type", "usdt_perp", "--symbols", "btcusdt", "--rest-url", "http://127.0.0.1:9"],
         ["invalid symbol 'btcusdt'"]),
        (["sim", "--port", "99999"], ["--port", "65535"]),  # was an OverflowError traceback
        (["sim", "--port", "0", "--set", "weight_limits=notjson"], ["weight_limits takes a JSON object"]),
        (["sim", "--port", "0", "--set", 'speed="fast"'], ["speed takes a JSON number"]),
        (["demo", "--days", "-1"], ["--days must be a whole number >= 1, got -1"]),
        (["demo", "--periods", "0"], ["--periods must be a whole number >= 1, got 0"]),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_before_anything_starts(
    tmp_path, monkeypatch, capsys, args: list[str], words: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli(*args, *(["--root", str(tmp_path / "lake")] if args[0] == "live" else []))
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2 and all(w in line for w in words), line
    assert captured.out == ""  # (the demo used to start its simulator and print a step first)
    assert list(tmp_path.iterdir()) == []


def test_a_reader_closing_the_pipe_ends_the_command_quietly(tmp_path) -> None:
    # `lake sim truth … | head -1` printed a Polars OSError traceback (broken pipe); a command whose
    # reader went away now stops as a tool killed by SIGPIPE does: no output on stderr, exit 141.
    import subprocess
    import sys

    args = ["sim", "truth", "--type", "usdt_perp", "--interval", "5m", "--symbols", "BTCUSDT",
            "--sim-start", "2024-03-01", "--start", "2024-01-01", "--end", "2024-01-15"]  # fmt: skip
    p = subprocess.Popen(
        [sys.executable, "-m", "lake.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b"symbol,candle_begin_time,")
    p.stdout.close()  # ~500 kB were to follow: more than a pipe holds
    with p.stderr:
        err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141, err
    assert err == ""


def test_cli_reference_calls_no_one_per_run_option_repeatable() -> None:
    # docs/cli.md said "(repeatable)" after "(one per run)" for backfill --interval and offsets --type
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    rows = [ln for ln in text.splitlines() if "one per run" in ln]
    assert rows and not [r for r in rows if "(repeatable)" in r]


@pytest.mark.parametrize("root", ["memory://lake", "ftp://127.0.0.1:9/lake"])
def test_a_root_the_readers_cannot_read_is_refused(capsys, root: str) -> None:
    # README promised "a path or an fsspec URL": `--root memory://x` let a backfill write, then
    # Polars failed with a FileNotFoundError traceback; ftp:// failed with a resolver message
    code = cli("status", "--root", root)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and f"{root.split('://')[0]}:// is not supported" in line and "s3://" in line, line
