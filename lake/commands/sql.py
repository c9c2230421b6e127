"""``lake sql``: query the lake's DuckDB views, or an interactive prompt when no query is given.

Read-only: only queries (``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
``SUMMARIZE``, ``EXPLAIN``) run. ``COPY … TO``, ``EXPORT``, ``ATTACH``, ``CREATE``, ``INSERT``,
``INSTALL``/``LOAD``, ``SET``, ``PRAGMA`` and ``CALL`` are refused before anything runs, so a query
cannot write into the lake (or anywhere else); results are written with ``--output``, outside the lake.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, TextIO

import duckdb
import polars as pl
import typer

from lake.cli_common import ConfigOpt, RootOpt, check_output, get_settings
from lake.errors import ValidationError
from lake.query.connect import VIEWS, connect

FORMATS = ("table", "csv", "json", "parquet")
# Statement types that only read: DESCRIBE, SHOW and SUMMARIZE parse as SELECT.
READ_ONLY = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def sql(
    query: Annotated[
        str | None, typer.Argument(help="SQL to run; without it, read statements from stdin.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the result to this file (not inside the lake).")
    ] = None,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run SQL over the views klines, offsets, exchange_info, funding, coverage, empty_ranges, latest, compare.

    Read-only: queries (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) only; COPY, ATTACH, CREATE,
    INSERT, INSTALL, SET and other statements that could write are refused (exit 2).
    """
    if fmt not in FORMATS:
        raise ValidationError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise ValidationError("--format parquet needs --output FILE")
    settings = get_settings(config, root=root)
    check_output("--output", output, settings.root)
    con = connect(settings.root)
    try:
        if query is not None:
            _run(con, query, fmt, output)
        else:
            _repl(con, sys.stdin, fmt)
    finally:
        con.close()


def _run(con: duckdb.DuckDBPyConnection, query: str, fmt: str, output: Path | None) -> None:
    try:
        statements = con.extract_statements(query)
        for statement in statements:  # all checked before any runs
            if statement.type not in READ_ONLY:
                kind = statement.type.name.lower()
                raise ValidationError(
                    f"lake sql is read-only: {kind} statements are not allowed ({statement.query.strip()[:60]!r})"
                )
        df = None
        for statement in statements:
            rel = con.sql(statement.query)
            df = rel.pl() if rel is not None else None
    except duckdb.Error as exc:
        raise ValidationError(f"SQL error: {str(exc).splitlines()[0]}") from exc
    if df is None:
        return
    _render(df, fmt, output)


def _render(df: pl.DataFrame, fmt: str, output: Path | None) -> None:
    if fmt == "parquet":
        assert output is not None
        df.write_parquet(output)
    elif fmt == "csv":
        text = df.write_csv()
        _emit(text, output)
    elif fmt == "json":
        _emit(df.write_json() + "\n", output)
    else:
        with pl.Config(tbl_rows=200, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
            _emit(f"{df}\n", output)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


def _repl(con: duckdb.DuckDBPyConnection, stream: TextIO, fmt: str) -> None:
    """Read statements (ending with ``;``) from ``stream``; ``.quit`` or end of input stops."""
    interactive = stream.isatty()
    if interactive:
        typer.echo(f"lake sql: views {', '.join(VIEWS)}; end statements with ';', .quit to leave", err=True)
    buf: list[str] = []
    while True:
        if interactive:
            typer.echo("lake> " if not buf else "  ..> ", nl=False, err=True)
        line = stream.readline()
        if not line:
            break
        if not buf and line.strip() in (".quit", ".exit", "\\q"):
            break
        buf.append(line)
        if line.rstrip().endswith(";"):
            statement, buf = "".join(buf), []
            try:
                _run(con, statement, fmt, None)
            except ValidationError as exc:
                if not interactive:
                    raise
                typer.echo(f"error: {exc}", err=True)
    if "".join(buf).strip():
        _run(con, "".join(buf), fmt, None)


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
