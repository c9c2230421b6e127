"""Multi-partition writes: one sync per batch, each file still replaced atomically."""

import os

import polars as pl

from lake.store.klines import scan_klines, write_klines
from tests.store.conftest import parquet_files
from tests.store.helpers import frame, opens, t0_ms


def test_multi_partition_write_equals_partition_by_partition(lake_root: str, tmp_path) -> None:
    rows = opens(t0_ms(), 1440 * 5, 60_000)
    whole = frame(rows)
    write_klines(lake_root, "usdt_perp", "1m", "BTCUSDT", whole)
    other = str(tmp_path / "other")
    for day in range(5):
        write_klines(other, "usdt_perp", "1m", "BTCUSDT", whole.slice(day * 1440, 1440))
    a = scan_klines(lake_root, "usdt_perp", "1m").collect().sort("candle_begin_time")
    b = scan_klines(other, "usdt_perp", "1m").collect().sort("candle_begin_time")
    assert a.height == 1440 * 5 and a.equals(b)
    assert len(parquet_files(lake_root)) == 5
    if not lake_root.startswith("s3://"):
        leftovers = [n for _, _, files in os.walk(lake_root) for n in files if ".tmp-" in n]
        assert leftovers == []


def test_append_upsert_and_unsorted_input(lake_root: str) -> None:
    rows = opens(t0_ms(), 100, 300_000)
    write_klines(lake_root, "usdt_perp", "5m", "ETHUSDT", frame(rows[:50]))
    # append after the stored end, given in reverse order and with an in-batch duplicate (last wins)
    tail = frame(rows[50:][::-1], base=3.0)
    dup = frame([rows[60]], base=9.0)
    r = write_klines(lake_root, "usdt_perp", "5m", "ETHUSDT", pl.concat([tail, dup]))
    assert (r.partitions_written, r.rows_added) == (1, 50)
    got = scan_klines(lake_root, "usdt_perp", "5m").collect().sort("candle_begin_time")
    assert got["candle_begin_time"].is_sorted() and got.height == 100
    assert (
        got.filter(pl.col("candle_begin_time") == got["candle_begin_time"][60])["open"][0]
        == frame([rows[60]], base=9.0)["open"][0]
    )
    stored = (
        pl.read_parquet(parquet_files(lake_root)[0])
        if not lake_root.startswith("s3://")
        else got.drop("symbol")
    )
    assert stored["candle_begin_time"].is_sorted()
