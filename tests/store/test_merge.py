import uuid

import fsspec
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.errors import DataError, ValidationError
from lake.store.klines import scan_klines, to_lakefs, write_klines
from tests.store.conftest import parquet_files
from tests.store.helpers import frame, t0_ms

STEP = 300_000
idx_sets = st.sets(st.integers(0, 700), max_size=120)


def stored(root) -> pl.DataFrame:
    # a LakeFS: a lake never written to (both writes empty) reads as empty, where a path would be
    # refused as a mistyped root
    return scan_klines(to_lakefs(root), "usdt_perp", "5m").collect().sort("candle_begin_time")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=idx_sets, b=idx_sets)
def test_upsert_newer_wins_and_rewrite_is_noop(lake_root: str, a: set[int], b: set[int]) -> None:
    root = f"{lake_root}/{uuid.uuid4().hex[:8]}"
    fa = frame([t0_ms() + i * STEP for i in sorted(a)], base=100.0, source="archive")
    fb = frame([t0_ms() + i * STEP for i in sorted(b)], base=500.0, source="rest")
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", fa)
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", fb)
    got = stored(root)
    assert got.height == len(a | b)
    assert got["candle_begin_time"].is_unique().all()
    by_src = dict(
        zip(got["candle_begin_time"].dt.epoch("ms").to_list(), got["source"].to_list(), strict=True)
    )
    for i in a | b:
        assert by_src[t0_ms() + i * STEP] == ("rest" if i in b else "archive")
    expected = pl.concat(
        [fa.filter(~pl.col("candle_begin_time").is_in(fb["candle_begin_time"].implode())), fb]
    )
    assert got.drop("symbol").equals(expected.sort("candle_begin_time"))
    fs, _ = fsspec.core.url_to_fs(root)
    files = parquet_files(root)
    stamps = [fs.info(f).get("LastModified", fs.info(f).get("mtime")) for f in files]
    result = write_klines(root, "usdt_perp", "5m", "BTCUSDT", fb)
    assert result.partitions_written == 0
    assert [fs.info(f).get("LastModified", fs.info(f).get("mtime")) for f in files] == stamps
    assert stored(root).equals(got)


def test_bad_rows_rejected_and_lake_untouched(lake_root: str) -> None:
    tmp_path = lake_root
    good = frame([t0_ms() + i * STEP for i in range(10)])
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", good)
    before = stored(tmp_path)
    bad = good.with_columns(
        pl.when(pl.col("trade_num") == 3).then(float("nan")).otherwise(pl.col("close")).alias("close")
    )
    with pytest.raises(DataError, match="non-finite"):
        write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", bad)
    with pytest.raises(DataError, match="lack columns"):
        write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", good.drop("volume"))
    with pytest.raises(DataError, match="unknown source"):
        write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", good.with_columns(source=pl.lit("x")))
    assert stored(tmp_path).equals(before)


def test_scan_prunes_by_symbol_and_time(lake_root: str) -> None:
    tmp_path = lake_root
    import datetime as dt

    for sym in ("AAAUSDT", "BBBUSDT"):
        write_klines(tmp_path, "usdt_perp", "5m", sym, frame([t0_ms() + i * STEP for i in range(288 * 3)]))
    lf = scan_klines(
        tmp_path,
        "usdt_perp",
        "5m",
        ["BBBUSDT"],
        start=dt.datetime(2024, 1, 2, 12, tzinfo=dt.UTC),
        end=dt.datetime(2024, 1, 3, tzinfo=dt.UTC),
    )
    df = lf.collect()
    assert df["symbol"].unique().to_list() == ["BBBUSDT"]
    assert df.height == 144
    assert df.columns[0] == "symbol"
    assert scan_klines(tmp_path, "usdt_perp", "1h").collect().height == 0
    # the same bounds as ISO strings (UTC, like the CLI's) or a date; a naive datetime stays refused
    same = scan_klines(
        tmp_path, "usdt_perp", "5m", "BBBUSDT", start="2024-01-02T12:00", end=dt.date(2024, 1, 3)
    )
    assert same.collect().equals(df)
    offset = scan_klines(
        tmp_path, "usdt_perp", "5m", "BBBUSDT", start="2024-01-02T14:00+02:00", end="2024-01-03"
    )
    assert offset.collect().equals(df)
    with pytest.raises(ValidationError, match="naive"):
        scan_klines(tmp_path, "usdt_perp", "5m", start=dt.datetime(2024, 1, 2))
    with pytest.raises(ValidationError, match="invalid time '2024-13-01'"):
        scan_klines(tmp_path, "usdt_perp", "5m", start="2024-13-01")


@pytest.mark.parametrize("edit_at", [0, 5, 19])
def test_upsert_into_another_writers_unsorted_partition(tmp_path, edit_at: int) -> None:
    # the append fast path compared new rows with the stored *last row*: in a file written newest
    # first, an edit of a stored candle was appended as a second copy of it
    root = str(tmp_path)
    write_klines(
        root, "usdt_perp", "5m", "BTCUSDT", frame([t0_ms() + i * STEP for i in range(20)], base=100.0)
    )
    (path,) = [p for p in parquet_files(root) if "klines" in p]
    pl.read_parquet(path).reverse().write_parquet(path)  # another writer: newest first
    edit = frame([t0_ms() + edit_at * STEP], base=900.0, source="rest")
    r = write_klines(root, "usdt_perp", "5m", "BTCUSDT", edit)
    got = stored(root)
    assert got.height == 20 and got["candle_begin_time"].n_unique() == 20 and r.rows_added == 0
    row = got.filter(pl.col("candle_begin_time") == edit["candle_begin_time"][0])
    assert row["open"].to_list() == edit["open"].to_list() and row["source"].to_list() == ["rest"]
    later = frame([t0_ms() + 20 * STEP], base=900.0, source="rest")  # a real append still appends
    assert write_klines(root, "usdt_perp", "5m", "BTCUSDT", later).rows_added == 1
    assert stored(root).height == 21
