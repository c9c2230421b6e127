"""Schema files: one zero-row parquet file per table that the views list first.

When DuckDB plans a query over a glob it reads the footer of the first file, closes it, and reuses
that footer when it scans the file later. If that file was rewritten in between, the scan reads the
new file at the old footer's offsets and fails (a torn read that file leases cannot prevent, since
no handle is open at the time: ``lake.store.swap``). So each view reads a list whose first entry is
a file that never changes:

    _meta/schema/<table>/<key>=_/…/schema.parquet       (the table's hive keys, each ``_``)

It holds no rows and the schema of the table's files (taken from the first file written), and is
created once, never replaced (``LakeFS.create_once``). Its hive values ``_`` never show up in
results, having no rows.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["TABLE_KEYS", "empty_table", "schema_bytes", "schema_file", "table_of"]

# Each file-backed view's table: its hive keys (the directory levels above the files).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "klines": ("trade_type", "interval", "symbol", "date"),
    "klines_tail": ("trade_type", "interval"),
    "offsets": ("trade_type", "interval", "offset", "symbol", "date"),
    "offsets_tail": ("trade_type", "interval"),
    "exchange_info": ("trade_type", "date"),
    "funding": ("trade_type", "symbol"),
}


# A table whose files gained a column gets a new schema directory: the old schema file stays as it
# was (it is never replaced) and a new one is made from a file with the column.
_SCHEMA_DIR = {"klines_tail": "klines_tail.v2"}  # v2: tail_seq (lake.store.tail)


def schema_file(table: str) -> str:
    """The schema file of ``table``, relative to the lake root."""
    keys = "/".join(f"{k}=_" for k in TABLE_KEYS[table])
    return f"_meta/schema/{_SCHEMA_DIR.get(table, table)}/{keys}/schema.parquet"


def table_of(rel: str) -> str | None:
    """The table a data file belongs to (``rel`` relative to the root), or None for other files."""
    if not rel.endswith(".parquet"):
        return None
    parts = rel.strip("/").split("/")
    keys = TABLE_KEYS.get(parts[0])
    if keys is None or len(parts) != len(keys) + 2:
        return None
    if any(not p.startswith(f"{k}=") for k, p in zip(keys, parts[1:], strict=False)):
        return None
    return parts[0]


def schema_bytes(data: bytes | memoryview) -> bytes:
    """A zero-row parquet file with the schema of the parquet file ``data``."""
    schema = pq.read_schema(io.BytesIO(data))
    buf = io.BytesIO()
    pq.write_table(empty_table(schema), buf)
    return buf.getvalue()


def empty_table(schema: pa.Schema) -> pa.Table:
    """A zero-row table of ``schema``. ``Schema.empty_table`` builds its columns with ``pa.array``,
    which imports pandas where it is installed (0.25–0.35 s once per process: the first offsets build
    of a lake paid it, creating the tail's zero-row file)."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
