"""DuckDB over the lake: a connection with every view of ``sql/`` registered.

    con = lake.connect("/data/lake")              # or connect() for the configured root
    con.sql("SELECT symbol, count(*) FROM klines GROUP BY ALL").pl()

The root is bound as a value, never pasted into SQL: ``SET VARIABLE lake_root = ?`` with a prepared
parameter, and every view reads ``getvariable('lake_root')``. Glob metacharacters in the root are
escaped (``[`` → ``[[]``) so a directory named ``data [old]`` or ``it's`` still works. Views are bound
again at each query, so files written after ``connect`` show up (locally; on an object store
every query lists the files anew).

A root whose path holds a backslash or a ``key=value`` directory is refused (DuckDB's globs
match no path with a backslash, and it reads ``key=value`` directories as partition columns).

``klines`` includes the candles ``lake live`` keeps in its tail when the tail holds any at
connect time (the anti-join that makes that exact is not free); a connection opened while no live
tail exists reads the partitions only: reconnect after starting ``lake live``.

A table without any file yet (``funding`` before the first funding run, ``offsets`` before the first
``lake offsets``) is registered as an empty view with the table's columns, so ``connect`` never
fails on a young lake; reconnect (or call ``register_views`` again) once the files exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.utils import glob_translate

from lake.errors import DataError, LakeError, ValidationError
from lake.schema import KLINE_SCHEMA, OFFSET_SCHEMA
from lake.settings import load_settings
from lake.store.fs import LakeFS
from lake.store.klines import require_lake, to_lakefs
from lake.store.schema_files import schema_file
from lake.store.tables import EXCHANGE_INFO_SCHEMA, FUNDING_SCHEMA
from lake.store.tail import SETTLED_S, tail_feeds, tail_files, upgrade_tail

__all__ = ["VIEWS", "connect", "glob_escape", "register_views", "view_sql"]

# In dependency order: coverage reads klines, intervals and empty_ranges, latest klines,
# compare offsets.
VIEWS = (
    "intervals",
    "klines_partitions",
    "klines_tail",
    "klines",
    "offsets_partitions",
    "offsets_tail",
    "offsets",
    "exchange_info",
    "funding",
    "watermark",
    "empty_ranges",
    "coverage",
    "latest",
    "segments",
    "compare",
)

_S = pl.String()
_T = pl.Datetime("ms", "UTC")


@dataclass(frozen=True)
class _Files:
    """Where a file-backed view reads (directory, levels down to the files, suffix) and the columns of
    its empty stand-in."""

    directory: str
    depth: int
    suffix: str
    columns: dict[str, pl.DataType]


_FILE_TABLES = {
    "klines_partitions": _Files(
        "klines", 5, ".parquet", {"trade_type": _S, "interval": _S, "symbol": _S, **KLINE_SCHEMA}
    ),
    "klines_tail": _Files(
        "klines_tail", 3, ".parquet", {"trade_type": _S, "interval": _S, "symbol": _S, **KLINE_SCHEMA}
    ),
    "offsets_partitions": _Files(
        "offsets",
        6,
        ".parquet",
        {"trade_type": _S, "interval": _S, "offset": _S, "symbol": _S, **OFFSET_SCHEMA},
    ),
    "offsets_tail": _Files(
        "offsets_tail",
        3,
        ".parquet",
        {"trade_type": _S, "interval": _S, "offset": _S, "symbol": _S, **OFFSET_SCHEMA},
    ),
    "exchange_info": _Files(
        "exchange_info", 3, ".parquet", {**EXCHANGE_INFO_SCHEMA, "trade_type": _S, "date": _S}
    ),
    "funding": _Files("funding", 3, ".parquet", {**FUNDING_SCHEMA, "trade_type": _S, "symbol": _S}),
    "empty_ranges": _Files(
        "_meta/empty/klines",
        3,
        ".json",
        {"trade_type": _S, "interval": _S, "symbol": _S, "range_start": _T, "range_end": _T},
    ),
    "watermark": _Files(
        "_meta/live",
        2,
        ".json",
        {
            "trade_type": _S,
            "interval": _S,
            "watermark": _T,
            "next_open": _T,
            "symbols": pl.Int64(),
            "updated_at": _T,
            "watermark_ms": pl.Int64(),
        },
    ),
}
_DUCKDB_TYPES = {
    pl.String(): "VARCHAR",
    pl.Float64(): "DOUBLE",
    pl.Int64(): "BIGINT",
    pl.Datetime("ms", "UTC"): "TIMESTAMPTZ",
    pl.Date(): "DATE",
}


def view_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` as shipped with the package."""
    if name not in VIEWS:
        raise KeyError(name)
    return (resources.files("lake") / "sql" / f"{name}.sql").read_text(encoding="utf-8")


_ESCAPED = re.compile(r"\[[\[*?]\]")  # a metacharacter made literal by glob_escape


def glob_escape(path: str) -> str:
    """``path`` with DuckDB glob metacharacters made literal (``[`` ``*`` ``?`` → ``[[]`` ``[*]`` ``[?]``)."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in path)


def connect(
    root: str | os.PathLike[str] | LakeFS | None = None,
    *,
    database: str = ":memory:",
    config: dict[str, str | bool | int | float | list[str]] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's views (``VIEWS``) registered; ``root`` defaults to settings.

    The session's time zone is UTC, Binance's: ``hour()``, ``::DATE`` and the text of a
    ``TIMESTAMPTZ`` do not depend on the machine's zone, and a naive timestamp (Quantclass's CSV
    times) is read as UTC when compared with the lake's. ``SET TimeZone = '…'`` changes it.

    A local root that does not exist is a ``NotFoundError`` (a mistyped path, or a notebook started
    in another directory, would otherwise give empty views)."""
    if root is None:
        root = load_settings().root
    lfs = to_lakefs(root)
    require_lake(lfs)
    if lfs.is_local and "\\" in lfs.url_root:
        # DuckDB's globs match no path holding one, escaped or not: every view would read nothing
        raise ValidationError(
            f"DuckDB cannot read a lake whose path holds a backslash ({lfs.url_root}); "
            "move or link it elsewhere (lake.scan_klines reads it)"
        )

    def attempt() -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(database, config=config or {})
        try:
            # after connecting: DuckDB refuses the setting in config before ICU is loaded
            con.execute("SET TimeZone = 'UTC'")
            register_views(con, root)
        except BaseException:
            con.close()
            raise
        return con

    try:
        return retry_torn(attempt)
    except (duckdb.IOException, duckdb.InvalidInputException) as exc:
        # a view is bound when created, reading its first file: a damaged file (DuckDB names it)
        raise DataError(f"cannot read the lake: {exc}") from exc


_R = TypeVar("_R")


def retry_torn(run: Callable[[], _R], attempts: int = 4) -> _R:
    """``run()``, again (with a short backoff) while DuckDB fails with a torn read: a file replaced
    or deleted between its listing and its reading (compaction while ``lake live`` runs, much
    likelier on an object store). Only for reads, which are safe to repeat. A torn read on every
    attempt is a damaged file: ``DataError``. Other DuckDB errors propagate at once."""
    for k in range(attempts):
        try:
            return run()
        except duckdb.Error as exc:
            if not torn_read(exc):
                raise
            if k == attempts - 1:
                raise DataError(f"cannot read the lake: {error_line(exc)}") from exc
            time.sleep(0.05 * 2**k)
    raise AssertionError("unreachable")


# What DuckDB says when a file it listed was replaced or deleted before it read it: on a local disk
# (a partition replaced between its footer and page reads, a tail file deleted) and through an
# fsspec object store (the key gone, or its ETag changed: FileExpired).
_TORN = (
    "FileNotFoundError",
    "FileExpired",
    "No such file",
    "specified key does not exist",
    "TProtocolException",
    "Could not read enough bytes",
    "don't know what type",
    "Invalid thrift",
    "out of specification",
    "Prefetch registered for bytes outside file",
    "invalid TType",
    "Could not convert Timestamp(",  # garbage bytes decoded as a timestamp
    "too small to be a Parquet file",  # a file caught mid-swap, or damaged (then every retry fails)
    "No magic bytes found",
)


def torn_read(exc: BaseException) -> bool:
    """Whether a DuckDB error looks like the race with a concurrent rewrite (docs/architecture.md):
    worth running the read-only query again. A damaged file fails the same way every time, so
    callers retry a few times, then report it as bad data."""
    if not isinstance(exc, duckdb.Error) or isinstance(
        exc, (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException)
    ):
        return False  # the query's own mistakes
    text = str(exc)
    return any(t in text for t in _TORN)


def error_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (DuckDB wraps Python tracebacks from
    fsspec file systems: their first line is "Traceback …")."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Traceback") or (len(lines) > 1 and lines[0].endswith(":")):
        return lines[-1][:300]
    return lines[0][:300]


def register_views(con: duckdb.DuckDBPyConnection, root: str | os.PathLike[str] | LakeFS) -> list[str]:
    """Bind ``lake_root`` on ``con`` and (re)create every view; returns the file tables still empty."""
    lfs = root if isinstance(root, LakeFS) else LakeFS(root)
    hive_like = [p for p in lfs.root.split("/") if "=" in p]
    if hive_like:
        # DuckDB's hive partitioning reads every key=value directory of a file's path, the root's
        # too, and the first one wins: under /x/symbol=ETHUSDT/lake every candle was ETHUSDT's
        raise ValidationError(
            f"DuckDB would read the directory {hive_like[0]!r} of the lake's path ({lfs.url_root}) as "
            "a partition column (key=value) and mislabel the views' rows; move or link the lake to a "
            "path without '='"
        )
    if not lfs.is_local:
        # DuckDB reads object stores through an fsspec file system (s3fs …) of the lake's own
        # settings, so no httpfs extension download is needed and credentials come from the same
        # place. Its own instance, which lists afresh at every glob (see _duckdb_filesystem).
        fs = _duckdb_filesystem(lfs)
        con.register_filesystem(fs)
    if lfs.is_local:
        for tt, iv in tail_feeds(lfs):
            # Tail files of an older lake lack the tail_seq column the view orders by. On a
            # read-only lake they stay so, and the view fails naming one.
            with contextlib.suppress(LakeError, OSError):
                upgrade_tail(lfs, tt, iv)
    con.execute("SET VARIABLE lake_root = ?", [glob_escape(lfs.url_root)])
    con.execute("SET VARIABLE tail_settled_s = ?", [SETTLED_S])
    empty = []
    for name in VIEWS:
        spec = _FILE_TABLES.get(name)
        if name == "klines" and ("klines_tail" in empty or not _tail_has_candles(lfs)):
            # No candles in a live tail: the partitions alone. The anti-join with even an empty
            # tail costs a full scan ~80% more (DuckDB hashes every row's key regardless).
            con.execute(_PLAIN_KLINES)
            continue
        first = _first_file(lfs, spec) if spec is not None else None
        if spec is not None and first is None:
            con.execute(_empty_view(name, spec.columns))
            empty.append(name)
        elif (
            first is not None
            and name in _VIEW_TABLE
            and (not lfs.is_local or not _schema_file_ready(lfs, _VIEW_TABLE[name], first))
        ):
            # An object store gets no torn-read guard (lake.store.swap is local), and listing the
            # schema file would cost a request per query.
            con.execute(_SCHEMA_LINE.sub("", view_sql(name)))
        else:
            con.execute(view_sql(name))
    return empty


# The views that list their table's schema file first (lake.store.schema_files), by table.
_VIEW_TABLE = {
    "klines_partitions": "klines",
    "klines_tail": "klines_tail",
    "offsets_partitions": "offsets",
    "offsets_tail": "offsets_tail",
    "exchange_info": "exchange_info",
    "funding": "funding",
}
_SCHEMA_LINE = re.compile(r"\n[^\n]*/_meta/schema/[^\n]*")


def _schema_file_ready(lfs: LakeFS, table: str, first: str) -> bool:
    """Whether ``table``'s schema file exists and matches the data file ``first`` (made from it if
    missing). A lake written before schema files existed, opened read-only, has none, and a schema
    file of other columns would make the view fail to bind: such views list the data files alone."""
    try:
        if not lfs.exists(schema_file(table)):
            lfs.ensure_schema_file(table, lfs.read_bytes(first))
        made = pq.read_schema(lfs.full(schema_file(table)))
        return bool(made.equals(pq.read_schema(lfs.full(first)), check_metadata=False))
    except (OSError, LakeError, ValueError, pa.ArrowException):
        return False


def _duckdb_filesystem(lfs: LakeFS) -> fsspec.AbstractFileSystem:
    """A new fsspec instance for the lake's object store whose every ``glob`` lists anew.

    DuckDB globs each view's files when a query starts, then opens them. s3fs's listing cache never
    expires, so a connection sharing it missed every object written after its first query; with an
    expiry instead, a query outliving it asked S3 for each file's size again as it opened the files
    (~6 requests per file on moto). Dropped at each glob, a query lists what exists now and finds
    the sizes of its files in that listing.
    """
    fs, _ = fsspec.core.url_to_fs(lfs.url_root, skip_instance_cache=True, **lfs.storage_options)
    # On the instance: an async file system's sync ``glob`` is an attribute set when it is made.
    walk_glob = fs.glob

    def glob(path: str, **kwargs: Any) -> Any:
        fs.invalidate_cache()
        stripped = fs._strip_protocol(path)
        parts = stripped.split("/")
        # the first component with a wildcard; one of a root escaped by glob_escape is literal
        fixed = next((i for i, p in enumerate(parts) if any(c in _ESCAPED.sub("", p) for c in "*?[")), None)
        if kwargs or fixed is None or "**" in stripped:
            return walk_glob(path, **kwargs)
        # fsspec globs a pattern of fixed depth by listing each directory (a LIST per symbol and
        # per partition directory); one listing of everything under the pattern's fixed prefix,
        # matched here, takes a request per 1,000 objects instead.
        match = re.compile(glob_translate(stripped)).match
        prefix = _ESCAPED.sub(lambda m: m.group(0)[1], "/".join(parts[:fixed]))
        return sorted(p for p in fs.find(prefix) if match(p))

    fs.glob = glob
    return fs


_PLAIN_KLINES = "CREATE OR REPLACE VIEW klines AS SELECT * FROM klines_partitions"


def _tail_has_candles(lfs: LakeFS) -> bool:
    """Whether any live tail holds a data file (not only its zero-row marker)."""
    return any(tail_files(lfs, tt, iv) for tt, iv in tail_feeds(lfs))


def _empty_view(name: str, columns: dict[str, pl.DataType]) -> str:
    cols = ", ".join(f'NULL::{_DUCKDB_TYPES[t]} AS "{c}"' for c, t in columns.items())
    return f'CREATE OR REPLACE VIEW "{name}" AS SELECT {cols} WHERE false'


def _first_file(lfs: LakeFS, spec: _Files) -> str | None:
    """A file the view reads (the walk stops at the first), or None when it has none."""

    def walk(rel: str, level: int) -> str | None:
        for entry in lfs.listdir(rel):
            if entry.startswith("."):
                continue
            if level == spec.depth:
                if entry.endswith(spec.suffix):
                    return f"{rel}/{entry}"
            elif (found := walk(f"{rel}/{entry}", level + 1)) is not None:
                return found
        return None

    return walk(spec.directory, 1)
