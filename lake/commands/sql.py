"""``lake sql``: query the lake's DuckDB views, or an interactive prompt when no query is given.

Read-only: only queries (``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
``SUMMARIZE``, ``EXPLAIN``) run. ``COPY … TO``, ``EXPORT``, ``ATTACH``, ``CREATE``, ``INSERT``,
``INSTALL``/``LOAD``, ``SET``, ``PRAGMA`` and ``CALL`` are refused before anything runs, so a query
cannot write into the lake (or anywhere else); results are written with ``--output``, outside the lake.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, TextIO

import duckdb
import polars as pl
import typer

from lake.cli_common import ConfigOpt, RootOpt, check_output, get_settings
from lake.errors import ValidationError
from lake.query.connect import VIEWS, connect, error_line, retry_torn
from lake.store.fs import write_file_atomic

FORMATS = ("table", "csv", "json", "parquet")
# Statement types that only read: DESCRIBE, SHOW and SUMMARIZE parse as SELECT.
READ_ONLY = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


def sql(
    query: Annotated[
        str | None, typer.Argument(help="SQL to run; without it, read statements from stdin.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or parquet.")] = "table",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Write the result to this file (not into the lake's tables or _meta; a file directly "
            "under the root is allowed). With several statements, the last one's result.",
        ),
    ] = None,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run read-only SQL over the lake's DuckDB views (an interactive prompt without a query).

    Views: klines, offsets, exchange_info, funding, coverage, empty_ranges, latest, segments,
    watermark and compare (also klines_partitions, klines_tail, offsets_partitions, intervals).

    Read-only: queries (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) only; COPY, ATTACH, CREATE,
    INSERT, INSTALL, SET and other statements that could write are refused (exit 2). Read-only is
    not a sandbox: a query can read any file the user can (DuckDB's read_csv, read_parquet, …).
    """
    if fmt not in FORMATS:
        raise ValidationError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise ValidationError("--format parquet needs --output FILE")
    settings = get_settings(config, must_exist=True, root=root)
    check_output("--output", output, settings.root)
    con = connect(settings.root)
    try:
        if query is not None:
            _run(con, query, fmt, output)
        else:
            _repl(con, sys.stdin, fmt, output)
    finally:
        con.close()


def _analyzed(text: str) -> str | None:
    """The statement an ``EXPLAIN ANALYZE`` (or ``EXPLAIN (ANALYZE, …)``) runs, else None.

    Plain EXPLAIN only plans, but with ANALYZE DuckDB executes the statement it explains, so
    ``EXPLAIN ANALYZE COPY … TO`` would write; the explained statement must pass the same check.
    """
    toks = duckdb.tokenize(text)
    words = [
        (text[pos : toks[i + 1][0] if i + 1 < len(toks) else len(text)].strip().upper(), pos)
        for i, (pos, kind) in enumerate(toks)
        if kind != duckdb.token_type.comment
    ]
    if not words or words[0][0] != "EXPLAIN" or len(words) < 2:
        return None
    word, pos = words[1]
    if word in ("ANALYZE", "ANALYSE"):
        return text[pos + len(word) :]
    if word.startswith("("):
        depth = 0
        for j, (w, p) in enumerate(words[1:], start=1):
            depth += w.count("(") - w.count(")")
            if depth <= 0:
                options = {x for x, _p in words[2:j]}
                return text[p + len(w) :] if options & {"ANALYZE", "ANALYSE"} else None
    return None


def _check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> list[duckdb.Statement]:
    statements = con.extract_statements(query)
    for statement in statements:
        if statement.type not in READ_ONLY:
            kind = statement.type.name.lower()
            hint = ""
            if statement.type == duckdb.StatementType.MULTI and "PIVOT" in statement.query.upper():
                # DuckDB runs a PIVOT without an IN list as a CREATE TYPE plus the query
                hint = "; name the pivoted values (PIVOT … ON col IN ('a', 'b') USING …) to make it one query"
            raise ValidationError(
                f"lake sql is read-only: {kind} statements are not allowed "
                f"({statement.query.strip()[:60]!r}){hint}"
            )
        if statement.type == duckdb.StatementType.EXPLAIN:
            inner = _analyzed(statement.query)
            if inner is not None:
                _check_read_only(con, inner)
    return statements


def _run(con: duckdb.DuckDBPyConnection, query: str, fmt: str, output: Path | None) -> None:
    try:
        statements = _check_read_only(con, query)  # all checked before any runs
    except duckdb.Error as exc:
        raise ValidationError(f"SQL error: {error_line(exc)}") from exc
    if not statements:  # blank, or comments only: a script that built an empty query should know
        raise ValidationError("empty query: no SQL statement to run")

    temporal_text = False

    def run() -> pl.DataFrame | None:
        df = None
        for statement in statements:
            rel = con.sql(statement.query)
            df = _portable(rel, fmt, temporal_text).pl() if rel is not None else None
        return df

    try:
        df = retry_torn(run)  # read-only, so a torn read is simply run again
        if df is None:
            return
        try:
            _render(df, fmt, output)
        except pl.exceptions.PanicException:
            # Polars cannot print a date or time outside its range (DuckDB's 'infinity', year
            # 294247): the query again, its dates and times as DuckDB's own text
            temporal_text = True
            df = retry_torn(run)
            assert df is not None
            _render(df, fmt, output)
    except duckdb.Error as exc:
        raise ValidationError(f"SQL error: {error_line(exc)}") from exc


# Types Polars cannot take from DuckDB at all, and types a format cannot hold (nested values in
# CSV, bytes in JSON): such columns are rendered as DuckDB's own text for them.
_NO_POLARS = re.compile(r"\b(INTERVAL|UNION|BIGNUM|VARINT|BIT)\b")
_NOT_IN = {
    "csv": re.compile(r"\[|\b(STRUCT|MAP|BLOB)\b"),
    "json": re.compile(r"\bBLOB\b"),
}


_TEMPORAL = re.compile(r"\b(DATE|TIME|TIMESTAMP\w*)\b")


def _portable(rel: duckdb.DuckDBPyRelation, fmt: str, temporal_text: bool = False) -> duckdb.DuckDBPyRelation:
    """``rel`` with the columns Polars or ``fmt`` cannot take cast to VARCHAR (and, with
    ``temporal_text``, those holding dates or times), and repeated column names made unique (``a``,
    ``a_1``) as Polars needs; ``rel`` itself when nothing needs it."""
    types = [str(t).upper() for t in rel.types]
    names: list[str] = []
    for name in rel.columns:
        unique, k = name, 0
        while unique in names:
            k += 1
            unique = f"{name}_{k}"
        names.append(unique)
    other = _NOT_IN.get(fmt)
    text = [
        bool(_NO_POLARS.search(t) or (other and other.search(t)) or (temporal_text and _TEMPORAL.search(t)))
        for t in types
    ]
    if not any(text) and names == list(rel.columns):
        return rel
    cols = [f"c{k}" for k in range(len(names))]
    exprs = [
        f'{f"CAST({c} AS VARCHAR)" if as_text else c} AS "{n.replace(chr(34), chr(34) * 2)}"'
        for c, n, as_text in zip(cols, names, text, strict=True)
    ]
    # only generated names (c0, c1, …) and the result's own column names, quoted
    sql = f"SELECT {', '.join(exprs)} FROM lake_result AS t({', '.join(cols)})"  # noqa: S608
    out = rel.query("lake_result", sql)
    assert out is not None  # a SELECT always has a result
    return out


def _render(df: pl.DataFrame, fmt: str, output: Path | None) -> None:
    if fmt == "parquet":
        assert output is not None
        write_file_atomic(output, df.write_parquet)
    elif fmt == "csv":
        text = df.write_csv()
        _emit(text, output)
    elif fmt == "json":
        _emit(df.write_json() + "\n", output)
    elif df.columns == ["explain_key", "explain_value"]:  # a plan: DuckDB's drawing, as drawn
        _emit("".join(f"{v}\n" for v in df["explain_value"]), output)
    else:
        with pl.Config(tbl_rows=200, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
            _emit(f"{df}\n", output)


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_file_atomic(output, lambda path: path.write_text(text, encoding="utf-8"))


def _repl(con: duckdb.DuckDBPyConnection, stream: TextIO, fmt: str, output: Path | None = None) -> None:
    """Read statements (ending with ``;``) from ``stream``; ``.quit`` or end of input stops.

    Each result is printed, or written to ``output`` (replacing the one before: the file ends
    holding the last, as with several statements in one query)."""
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
                _run(con, statement, fmt, output)
            except ValidationError as exc:
                if not interactive:
                    raise
                typer.echo(f"error: {exc}", err=True)
    if "".join(buf).strip():
        _run(con, "".join(buf), fmt, output)


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
