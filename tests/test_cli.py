"""The CLI as a user runs it: a real subprocess, one clear line on error, non-zero exit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import polars as pl
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
        # click's own usage errors: one line too, not typer's boxed panel
        (["status", "--bogus"], "No such option: --bogus"),
        (["backfill", "--days", "abc"], "Invalid value for '--days'"),
        (["nosuch"], "No such command 'nosuch'"),
        # a repeated --type silently built only the last one
        (["offsets", "--type", "usdt_perp", "--type", "usdt_spot", "--interval", "1h"], "one --type per"),
        (["sql", "SELECT 1", "--output", "s3://bucket/out.csv"], "must be a local file path, got s3://"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(tmp_path, args: list[str], message: str) -> None:
    res = run(*args, "--root", str(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("lake: error: ") and message in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("cmd", [["status"], ["audit"], ["sql", "SELECT count(*) FROM klines"], ["compact"]])
def test_a_mistyped_root_is_an_error_not_an_empty_lake(tmp_path, cmd: list[str]) -> None:
    # Reading commands used to report an empty lake (exit 0) for a root that does not exist, and
    # must not create it either.
    missing = tmp_path / "lake-dat"
    res = run(*cmd, "--root", str(missing))
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"no lake at {missing}" in res.stderr and not missing.exists()
    missing.mkdir()  # an empty lake that exists is fine
    assert run(*cmd, "--root", str(missing)).returncode == 0


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
    # a filter that matches nothing says so (it read "no klines under <root>" on a full lake)
    none = run("status", "--root", str(tmp_path), "--symbols", "NOPEUSDT")
    assert none.returncode == 0 and "matching --symbols NOPEUSDT" in none.stdout, none.stdout


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
         "files_retired": 0, "failed": {}}
    ]  # fmt: skip
    assert scan_klines(tmp_path, "usdt_perp", "1m", tail=False).collect().equals(before)
    assert scan_klines(tmp_path, "usdt_perp", "1m").collect().equals(before)
    assert len(tail_files(LakeFS(tmp_path), "usdt_perp", "1m")) == 1  # retired only after --grace
    res = run("compact", "--grace", "0", "--root", str(tmp_path))
    assert res.returncode == 0 and "1 old tail files retired" in res.stdout
    assert tail_files(LakeFS(tmp_path), "usdt_perp", "1m") == []


# -- bad input leaves the lake as it was ----------------------------------------------------------


def _snapshot(root) -> dict[str, bytes]:
    """Every file of the lake but its (empty) lock files and local state."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file())
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in files
        if p.relative_to(root).parts[0] not in (".locks", ".state")
    }


@pytest.fixture
def small_lake(tmp_path):
    root = tmp_path / "lake"
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", frame([t0_ms() + i * 300_000 for i in range(24)]))
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill", "--type", "usdt_perp", "--days", "1e9"], "--days must be at most 36500"),
        (["backfill", "--type", "usdt_perp", "--days", "nan"], "--days must be a number > 0"),
        (["backfill", "--type", "usdt_perp", "--days", "0"], "--days must be a number > 0"),
        (["backfill", "--type", "usdt_perp", "--start", ""], "invalid --start ''"),
        (
            ["backfill", "--type", "usdt_perp", "--start", "2024-02-01", "--end", "2024-01-01", "--source", "rest"],
            "--start 2024-02-01 is not before --end 2024-01-01",
        ),
        (["live", "--type", "usdt_perp", "--interval", ""], "--interval is empty"),
        (["live", "--type", "usdt_perp", "--duration", "nan"], "--duration must be a number > 0"),
        (["live", "--type", "usdt_perp", "--health-every", "0"], "--health-every must be a number > 0"),
        (["live", "--type", "usdt_perp", "--exchange-info-every", "-1"], "--exchange-info-every must be"),
        (["offsets", "--type", "usdt_perp", "--interval", "1M"], "offsets of 1M are not supported"),
        (["offsets", "--type", "usdt_perp", "--interval", "1h", "--base", "1m"], "no stored usdt_perp 1m klines"),
        (["compact", "--grace", "nan"], "--grace must be a number >= 0"),
        (["status", "--interval", ""], "unknown interval ''"),
        (["status", "--symbols", ""], "empty symbol list"),
        (["audit", "--type", ""], "unknown trade type ''"),
        (["backfill", "--type", "usdt_perp", "--interval", "1m", "--interval", "1h", "--days", "1"],
         "one --interval per backfill run (got 1m, 1h)"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_and_leave_the_lake(small_lake, args: list[str], message: str) -> None:
    before = _snapshot(small_lake)
    # An unreachable endpoint: every one of these must fail before any request.
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", *args, "--root", str(small_lake)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LAKE_SIM_URL": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [res.stderr.splitlines()[0]] and message in res.stderr, res.stderr
    assert _snapshot(small_lake) == before


@pytest.mark.parametrize(
    "query",
    [
        "COPY (SELECT 1 AS a) TO '{root}/klines/evil.parquet'",
        "SELECT 1; COPY klines TO '{root}/klines/evil.csv'",
        "EXPORT DATABASE '{root}/klines/db'",
        "ATTACH '{root}/evil.duckdb' AS e",
        "CREATE TABLE t AS SELECT 1",
        "SET enable_external_access = false",
        "PRAGMA enable_profiling",
        # EXPLAIN ANALYZE runs the statement it explains
        "EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{root}/klines/evil.parquet'",
        "explain /* x */ (format json, analyse) CREATE TABLE t AS SELECT 1",
    ],
)
def test_sql_is_read_only(small_lake, query: str) -> None:
    before = _snapshot(small_lake)
    res = run("sql", query.format(root=small_lake), "--root", str(small_lake))
    assert res.returncode == 2 and "lake sql is read-only" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
    assert _snapshot(small_lake) == before
    ok = run("sql", "DESCRIBE klines", "--root", str(small_lake))  # queries of any shape still run
    assert ok.returncode == 0 and "candle_begin_time" in ok.stdout


@pytest.mark.parametrize("query", ["", "   ", "/* nothing */ ;"])
def test_an_empty_query_is_an_error(small_lake, query: str) -> None:
    res = run("sql", query, "--root", str(small_lake))
    assert res.returncode == 2 and "empty query" in res.stderr, (res.returncode, res.stderr)


def test_sql_explain_and_pivot(small_lake) -> None:
    ok = run("sql", "EXPLAIN ANALYZE SELECT count(*) FROM klines", "--root", str(small_lake))
    # the plan is printed as DuckDB draws it, not squeezed into a table cell
    assert ok.returncode == 0 and "Total Time" in ok.stdout, ok.stdout
    assert "explain_value" not in ok.stdout and "…" not in ok.stdout
    res = run("sql", "PIVOT klines ON symbol USING count(*)", "--root", str(small_lake))
    assert res.returncode == 2 and "ON col IN (" in res.stderr, res.stderr


QUERY_OF_AWKWARD_TYPES = (
    "SELECT INTERVAL 3 DAY AS span, [1, 2] AS xs, [3] AS xs, {'k': 1} AS st, MAP {'a': 1} AS m, "
    "'\\xAA'::BLOB AS b, union_value(n := 1) AS u"
)


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_sql_renders_every_type(small_lake, tmp_path, fmt: str) -> None:
    """Intervals (a difference of timestamps), nested values, bytes and unions: every format gives
    a result, never a traceback; repeated column names are made unique."""
    out = tmp_path / f"r.{fmt}"
    res = run("sql", QUERY_OF_AWKWARD_TYPES, "--format", fmt, "--output", str(out), "--root", str(small_lake))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    if fmt == "parquet":
        df = pl.read_parquet(out)
        assert df.columns == ["span", "xs", "xs_1", "st", "m", "b", "u"]
        assert df["span"].to_list() == ["3 days"] and df["xs"].to_list() == [[1, 2]]
    elif fmt == "csv":
        assert out.read_text().splitlines() == [
            "span,xs,xs_1,st,m,b,u",
            "3 days,\"[1, 2]\",[3],{'k': 1},{a=1},\\xAA,1",
        ]
    elif fmt == "json":
        (row,) = json.loads(out.read_text())
        assert row == {
            "span": "3 days",
            "xs": [1, 2],
            "xs_1": [3],
            "st": {"k": 1},
            "m": {"a": 1},
            "b": "\\xAA",
            "u": "1",
        }
    else:
        assert "3 days" in out.read_text() and "xs_1" in out.read_text()


def test_sql_output_is_checked_before_running(small_lake, tmp_path) -> None:
    before = _snapshot(small_lake)
    for output, message in [
        (small_lake / "klines" / "x.parquet", "inside the lake's tables or state"),
        (tmp_path / "nodir" / "x.csv", "does not exist"),
        (small_lake, "is a directory"),
    ]:
        res = run(
            "sql", "SELECT 1", "--format", "parquet", "--output", str(output), "--root", str(small_lake)
        )
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert _snapshot(small_lake) == before


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["sql", "SELECT 1"],
        ["offsets", "--type", "usdt_perp", "--interval", "1h"],
        ["backfill", "--type", "usdt_perp", "--days", "1"],
        ["live", "--type", "usdt_perp", "--duration", "1"],
    ],
)
def test_root_that_is_a_file(tmp_path, args: list[str]) -> None:
    root = tmp_path / "lake"
    root.write_text("not a lake")
    res = run(*args, "--root", str(root))
    assert res.returncode == 2 and res.stderr.strip() == f"lake: error: lake root {root} is not a directory"
    assert root.read_text() == "not a lake"


def test_unwritable_root(tmp_path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    locked = subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode == 0
    if not locked:
        root.chmod(0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("cannot make a directory unwritable here")
        for args in (
            ["backfill", "--type", "usdt_perp", "--days", "1"],
            ["offsets", "--type", "usdt_perp", "--interval", "1h"],
            ["live", "--type", "usdt_perp", "--duration", "1"],
        ):
            res = run(*args, "--root", str(root))
            assert res.returncode == 2 and "is not writable" in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1
        assert run("status", "--root", str(root)).returncode == 0  # reading needs no write permission
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        root.chmod(0o755)


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ("DIR", {}, "cannot be read"),
        (b"\xff\xfe", {}, "is not UTF-8"),
        (b"[a]\nroot = 'x'\n[b]\nroot = 'y'\n", {}, "setting 'root' appears twice"),
        (None, {"LAKE_MAX_CONCURRENCY": "0"}, "expected an int >= 1"),
        (None, {"LAKE_HTTP_TIMEOUT": "nan"}, "expected seconds > 0"),
        (None, {"LAKE_SIM_URL": "notaurl"}, "expected an http(s):// URL"),
    ],
)
def test_bad_settings_are_exit_2(tmp_path, config: object, env: dict[str, str], message: str) -> None:
    cfg = tmp_path
    if isinstance(config, bytes):
        cfg = tmp_path / "lake.toml"
        cfg.write_bytes(config)
    extra = {"LAKE_CONFIG": str(cfg)} if config is not None else {}
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", "backfill", "--type", "usdt_perp", "--days", "1", "--source", "rest",
         "--root", str(tmp_path / "lake")],
        capture_output=True, text=True, timeout=120, env={**os.environ, **extra, **env},
    )  # fmt: skip
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "lake").exists()


def test_plain_progress_says_stopped_not_done_when_a_run_fails(caplog: pytest.LogCaptureFixture) -> None:
    from lake.progress import Progress

    caplog.set_level(logging.INFO, logger="lake")
    with pytest.raises(RuntimeError), Progress(enabled=False) as progress:
        task = progress.add("backfill usdt_perp", total=10)
        progress.advance(task, 3)
        raise RuntimeError("upstream gone")
    assert "backfill usdt_perp stopped: 3/10" in caplog.text and " done:" not in caplog.text
    with Progress(enabled=False) as progress:
        progress.add("offsets", total=None)
    assert "offsets done: 0" in caplog.text


def test_a_damaged_partition_file_is_named_with_exit_4(tmp_path) -> None:
    """A partition file that is not parquet (disk damage, a stray write): lake status, lake sql and
    lake offsets name it on one line and exit 4 (bad data), without a traceback."""
    from lake.store.klines import write_klines
    from tests.transform.helpers import random_candles

    for i, sym in enumerate(("BTCUSDT", "ETHUSDT")):
        write_klines(tmp_path, "usdt_perp", "5m", sym, random_candles(i, 300_000, 20, hole_rate=0.0))
    bad = next((tmp_path / "klines").rglob("symbol=BTCUSDT/*/data.parquet"))
    bad.write_bytes(b"garbage")
    for args in (
        ["status"],
        ["sql", "SELECT count(*) FROM klines"],
        ["offsets", "--type", "usdt_perp", "--interval", "1h"],
    ):
        res = run(*args, "--root", str(tmp_path))
        assert res.returncode == 4, res.stderr
        assert "symbol=BTCUSDT/date=" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_no_command_prints_the_help_not_an_error() -> None:
    res = run()
    assert res.returncode == 2  # click's code for a group run without a command
    assert "Usage: lake" in res.stdout and "backfill" in res.stdout
    assert "error" not in res.stderr, res.stderr


def test_json_output_is_standard_json(capsys: pytest.CaptureFixture[str]) -> None:
    # `lake compare --json` printed Infinity (a relative error against a zero reference), which
    # strict JSON parsers refuse: non-finite numbers are null.
    from lake.cli_common import print_json

    print_json({"volume": float("inf"), "rows": [float("nan"), 1.5, (2, -float("inf"))], "n": 3})
    out = capsys.readouterr().out.strip()
    assert out == '{"volume":null,"rows":[null,1.5,[2,null]],"n":3}'
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))["n"] == 3


def _two_days(root) -> None:  # type: ignore[no-untyped-def]
    write_klines(root, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms() + i * 300_000 for i in range(576)]))


def test_damaged_and_foreign_files_in_the_lake_are_one_line_errors(tmp_path) -> None:
    # A truncated partition or another table's file under klines/ made offsets/backfill print a
    # 100-line Polars traceback (exit 1); a stray date=garbage directory crashed offsets.
    from lake.store.klines import list_partitions

    _two_days(tmp_path)
    series = tmp_path / "klines/trade_type=usdt_perp/interval=5m/symbol=ETHUSDT"
    (series / "date=garbage").mkdir()
    offsets = ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(tmp_path)]
    assert run(*offsets).returncode == 0, "a stray directory is skipped"
    part = tmp_path / list_partitions(tmp_path, "usdt_perp", "5m", "ETHUSDT")[0].path
    part.write_bytes(part.read_bytes()[:-100])  # truncated
    for args in ([*offsets, "--rebuild"], ["status", "--root", str(tmp_path)]):
        res = run(*args)
        assert res.returncode == 4, res.stderr
        assert "Traceback" not in res.stderr and res.stderr.count("lake: error:") == 1, res.stderr


def test_a_partition_of_other_column_types_is_named_not_a_traceback(tmp_path) -> None:
    # Another tool's file with a column of another type (open as text): the views failed to bind
    # and `lake sql` printed a 53-line traceback (DuckDB's exceptions live in `_duckdb`, which the
    # read-error test did not recognise); offsets and audit named no file; a write merged nothing
    # and raised a SchemaError inside backfill's task group (a traceback).
    import polars as pl

    from lake.errors import DataError
    from lake.store.klines import list_partitions

    _two_days(tmp_path)
    write_klines(tmp_path, "usdt_perp", "5m", "XRPUSDT", frame([t0_ms() + i * 300_000 for i in range(576)]))
    part = tmp_path / list_partitions(tmp_path, "usdt_perp", "5m", "ETHUSDT")[0].path  # the first file
    before = pl.read_parquet(part).with_columns(pl.col("open").cast(pl.String))
    before.write_parquet(part)
    for args, named in (
        (["offsets", "--type", "usdt_perp", "--interval", "1h"], True),
        (["audit", "--type", "usdt_perp"], True),
        (["sql", "SELECT count(*) FROM klines"], False),
    ):
        res = run(*args, "--root", str(tmp_path))
        assert res.returncode == 4, res.stderr
        assert "Traceback" not in res.stderr and res.stderr.count("lake: error:") == 1, res.stderr
        assert (str(part) in res.stderr) == named, res.stderr
    with pytest.raises(DataError, match=r"is not lake's: column open String \(not Float64\)"):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms()]))
    assert pl.read_parquet(part).equals(before)  # untouched


def test_an_error_inside_a_task_group_is_one_line() -> None:
    from lake.cli import _first_known
    from lake.errors import DataError

    err = DataError("bad file")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("inner", [err])])
    assert _first_known(group) is err
    bug = ExceptionGroup("unhandled errors in a TaskGroup", [KeyError("x")])
    assert _first_known(bug) is bug  # a bug stays a traceback


def test_damaged_json_state_is_rebuilt_not_a_traceback(tmp_path) -> None:
    # _meta files are caches of what the exchange answered or what was built: a damaged one is
    # ignored with a warning (and rewritten by the next run), not a JSONDecodeError traceback.
    opens = [t0_ms() + i * 300_000 for i in range(576) if not 100 <= i < 110]
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", frame(opens))
    empty = tmp_path / "_meta/empty/klines/trade_type=usdt_perp/interval=5m/symbol=ETHUSDT.json"
    empty.parent.mkdir(parents=True)
    empty.write_text("{not json")
    res = run("status", "--root", str(tmp_path), "--json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "ignoring damaged confirmed-empty record" in res.stderr
    assert json.loads(res.stdout)["series"][0]["missing"] == 10
    offsets = ["offsets", "--type", "usdt_perp", "--interval", "1h", "--root", str(tmp_path)]
    assert run(*offsets).returncode == 0
    damaged = list(tmp_path.glob("_meta/offsets/**/*.json"))
    assert damaged
    for m in damaged:
        m.write_text("")  # damaged offsets manifest: everything is rebuilt
    res = run(*offsets)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr


def test_error_line_and_torn_read() -> None:
    # DuckDB wraps a Python traceback from an fsspec file system: the message's first line was all
    # `lake sql` printed ("SQL error: Traceback (most recent call last):").
    import duckdb

    from lake.query.connect import error_line, torn_read

    wrapped = duckdb.Error(
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "FileNotFoundError: The specified key does not exist."
    )
    assert error_line(wrapped) == "FileNotFoundError: The specified key does not exist."
    assert torn_read(wrapped)
    binder = duckdb.BinderException('Binder Error: Referenced column "nope" not found')
    assert error_line(binder) == 'Binder Error: Referenced column "nope" not found' and not torn_read(binder)
