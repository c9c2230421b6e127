"""Archive rows into the lake: split into partitions, files every reader agrees on, reruns write nothing."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import duckdb
import polars as pl
import pytest

from lake.errors import DataError
from lake.ingest.archive.parse import parse_kline_csv, parse_kline_zip, read_zip_member
from lake.schema import KLINE_SCHEMA
from lake.store.klines import encode_parquet, scan_klines, write_klines
from tests.ingest.archive_fakes import DAY_MS, MIN_MS, csv, day_opens, zip_bytes

D0 = int(dt.datetime(2024, 2, 27, tzinfo=dt.UTC).timestamp() * 1000)  # a leap month's end


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("data.parquet")}


def _from_duckdb(df: pl.DataFrame) -> pl.DataFrame:
    """DuckDB hands TIMESTAMPTZ to Polars in µs and 'Etc/UTC': the same instants, the lake's dtype."""
    t = pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    return df.with_columns(t)


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date().isoformat()


def test_monthly_file_with_gaps_lands_in_its_day_partitions(tmp_path: Path) -> None:
    # Days 0, 1 and 4 of the span (2024-02-27, -28, 03-02); 02-29 and 03-01 have no rows.
    opens = day_opens(D0) + day_opens(D0 + DAY_MS)[:700] + day_opens(D0 + 4 * DAY_MS)[5:]
    df = parse_kline_csv(csv(opens), start_ms=D0, end_ms=D0 + 5 * DAY_MS)
    res = write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", df)
    assert (res.partitions_written, res.rows_added) == (3, len(opens))
    sdir = "klines/trade_type=usdt_perp/interval=1m/symbol=BTCUSDT"
    assert sorted(_files(tmp_path)) == [
        f"{sdir}/date={d}/data.parquet" for d in ("2024-02-27", "2024-02-28", "2024-03-02")
    ]
    for d, n in (("2024-02-27", 1440), ("2024-02-28", 700), ("2024-03-02", 1435)):
        part = pl.read_parquet(tmp_path / f"{sdir}/date={d}/data.parquet")
        assert part.schema == pl.Schema(KLINE_SCHEMA)
        assert part.height == n
        assert part["candle_begin_time"].dt.date().unique().to_list() == [dt.date.fromisoformat(d)]
        assert part["candle_begin_time"].is_sorted()
    stored = scan_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT").collect()
    assert stored.drop("symbol").sort("candle_begin_time").equals(df)
    # DuckDB reads the same rows with the same types.
    con = duckdb.connect()
    rel = con.read_parquet(f"{tmp_path}/{sdir}/*/data.parquet", hive_partitioning=False)
    got = _from_duckdb(rel.order("candle_begin_time").pl())
    assert got.schema == pl.Schema(KLINE_SCHEMA)
    assert got.equals(df)
    # A rerun of the same file writes nothing.
    before = _files(tmp_path)
    again = write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", df)
    assert (again.partitions_written, again.partitions_unchanged, again.rows_added) == (0, 3, 0)
    assert _files(tmp_path) == before


def test_unsorted_rows_with_repeats_across_years_newest_wins(tmp_path: Path) -> None:
    # 1h partitions are yearly: rows around a new year, out of order, one open time given twice.
    t = int(dt.datetime(2024, 12, 31, 22, tzinfo=dt.UTC).timestamp() * 1000)
    hours = [t + i * 3_600_000 for i in (3, 0, 2, 1)]
    df = parse_kline_csv(csv(hours, step_ms=3_600_000), start_ms=t, end_ms=t + 4 * 3_600_000)
    shuffled = pl.concat([df[2:], df[:2], df[1:2].with_columns(pl.lit(7.0).alias("close"))])
    res = write_klines(tmp_path, "usdt_perp", "1h", "BTCUSDT", shuffled)
    assert res.partitions_written == 2
    stored = scan_klines(tmp_path, "usdt_perp", "1h", "BTCUSDT").collect().sort("candle_begin_time")
    assert stored["candle_begin_time"].dt.epoch("ms").to_list() == sorted(hours)
    closes = dict(zip(stored["candle_begin_time"].dt.epoch("ms").to_list(), stored["close"], strict=True))
    assert closes[df["candle_begin_time"].dt.epoch("ms")[1]] == 7.0  # the later of the two rows
    assert {p.parent.name for p in tmp_path.rglob("data.parquet")} == {"date=2024-01-01", "date=2025-01-01"}


def test_upsert_into_existing_day_partitions(tmp_path: Path) -> None:
    first = parse_kline_csv(csv(day_opens(D0)[:100]), start_ms=D0, end_ms=D0 + DAY_MS)
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", first)
    # The full two days: the first 100 rows of day 0 are unchanged, everything else is added.
    full = parse_kline_csv(csv(day_opens(D0) + day_opens(D0 + DAY_MS)), start_ms=D0, end_ms=D0 + 2 * DAY_MS)
    res = write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", full)
    assert (res.partitions_written, res.rows_added) == (2, 2 * 1440 - 100)
    stored = scan_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT").collect()
    assert stored.drop("symbol").sort("candle_begin_time").equals(full)


def test_encoded_file_keeps_schema_and_values(tmp_path: Path) -> None:
    df = parse_kline_csv(csv(day_opens(D0)), start_ms=D0, end_ms=D0 + DAY_MS)
    path = tmp_path / "data.parquet"
    path.write_bytes(encode_parquet(df))
    back = pl.read_parquet(path)
    assert back.schema == pl.Schema(KLINE_SCHEMA)
    assert back.equals(df)
    rel = duckdb.connect().read_parquet(str(path))
    assert [str(t) for t in rel.types] == [
        "TIMESTAMP WITH TIME ZONE",
        *["DOUBLE"] * 6,
        "BIGINT",
        "DOUBLE",
        "DOUBLE",
        "VARCHAR",
    ]
    assert _from_duckdb(rel.pl()).equals(df)


def test_zip_members_stored_or_deflated_from_bytes_or_path(tmp_path: Path) -> None:
    data = csv(day_opens(D0))
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("X-1m-2024-02-27.csv", data)
    deflated = zip_bytes(data)
    path = tmp_path / "X-1m-2024-02-27.zip"
    path.write_bytes(deflated)
    for source in (stored.getvalue(), deflated, path, str(path)):
        assert read_zip_member(source) == data
    got = parse_kline_zip(path, start_ms=D0, end_ms=D0 + DAY_MS)
    assert got["candle_begin_time"].dt.epoch("ms").to_list() == day_opens(D0)


def test_zip_member_with_wrong_crc_or_size_is_corrupt() -> None:
    data = csv(day_opens(D0)[:50])
    z = bytearray(zip_bytes(data))
    # The central directory's CRC-32 of the member (offset 16 of its record): the data still inflates.
    cd = z.rfind(b"PK\x01\x02")
    z[cd + 16] ^= 0xFF
    with pytest.raises(DataError, match="corrupt"):
        read_zip_member(bytes(z), "crc.zip")
    with pytest.raises(DataError, match="corrupt"):
        read_zip_member(zip_bytes(data)[:-30], "cut.zip")


def test_zip_member_larger_than_declared_is_not_inflated_past_its_size() -> None:
    data = csv(day_opens(D0))
    z = bytearray(zip_bytes(data))
    # Declare a 100-byte member in the central directory (uncompressed size at offset 24 of its
    # record) and the local header (offset 22): the stream inflates to far more than that.
    cd = z.rfind(b"PK\x01\x02")
    z[cd + 24 : cd + 28] = (100).to_bytes(4, "little")
    z[22:26] = (100).to_bytes(4, "little")
    with pytest.raises(DataError, match="corrupt"):
        read_zip_member(bytes(z), "bomb.zip")


def test_minute_rows_in_microseconds_and_millis_agree(tmp_path: Path) -> None:
    ms = parse_kline_csv(csv(day_opens(D0)), start_ms=D0, end_ms=D0 + DAY_MS)
    us = parse_kline_csv(csv(day_opens(D0), us=True, header=True), start_ms=D0, end_ms=D0 + DAY_MS)
    assert us.equals(ms)
    assert ms["candle_begin_time"].dt.epoch("ms").diff().drop_nulls().unique().to_list() == [MIN_MS]
    assert _day(D0) == "2024-02-27"
