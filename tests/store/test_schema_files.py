"""Zero-row schema files: the exact schema of the table's files, written without importing pandas."""

from __future__ import annotations

import io
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from lake.store.schema_files import empty_table, schema_bytes


def _schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("symbol", pa.dictionary(pa.int32(), pa.string())),
            pa.field("candle_begin_time", pa.timestamp("ms", "UTC"), nullable=False),
            pa.field("open", pa.float64()),
            pa.field("trade_num", pa.int64()),
            pa.field("tags", pa.list_(pa.string())),
        ],
        metadata={b"k": b"v"},
    )


def test_empty_table_has_the_schema_and_no_rows() -> None:
    t = empty_table(_schema())
    assert t.num_rows == 0
    assert t.schema.equals(_schema(), check_metadata=True)


def test_schema_bytes_round_trip() -> None:
    schema = _schema()
    rows = pa.table(
        {
            "symbol": pa.array(["BTCUSDT"]).dictionary_encode(),
            "candle_begin_time": pa.array([0], pa.timestamp("ms", "UTC")),
            "open": pa.array([1.5]),
            "trade_num": pa.array([7]),
            "tags": pa.array([["a"]]),
        },
        schema=schema,
    )
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    back = pq.read_table(io.BytesIO(schema_bytes(buf.getvalue())))
    assert back.num_rows == 0
    assert back.schema.equals(pq.read_schema(io.BytesIO(buf.getvalue())), check_metadata=True)


def test_zero_row_files_do_not_import_pandas() -> None:
    # pyarrow's Schema.empty_table imports pandas where it is installed (it is, for the tests):
    # ~0.3 s of the first offsets build of a lake
    code = (
        "import sys\n"
        "from lake.transform import tail\n"
        "from lake.store.schema_files import schema_bytes\n"
        "data = tail._empty_bytes()\n"
        "assert schema_bytes(data)\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
