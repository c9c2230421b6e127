"""The plain kline parquet writer: every reader gets the rows, types and statistics pyarrow's file gives."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA, SOURCES
from lake.store import parquet_plain as pp
from lake.store.dayprints import META_KEY, partition_prints, row_hashes, unpack_days
from lake.store.fs import LakeFS
from lake.store.klines import _encode_table, encode_parquet, read_partition, write_klines
from lake.store.parquet_plain import PlainKlines, encode_plain, footer_prints
from lake.store.paths import PartitionKey

T0 = 1_704_067_200_000  # 2024-01-01


def klines(n: int, seed: int = 0, sources: list[str] | None = None) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    price = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.001, n))), 2)
    vol = np.round(rng.lognormal(1, 1, n), 5)
    vol[rng.random(n) < 0.1] = 0.0
    src = sources if sources is not None else ["archive"] * n
    return pl.DataFrame(
        {
            "candle_begin_time": T0 + 60_000 * np.arange(n, dtype=np.int64),
            "open": price,
            "high": price + 0.5,
            "low": price - 0.5,
            "close": -price if seed % 2 else price,  # negative values too
            "volume": vol,
            "quote_volume": vol * price,
            "trade_num": rng.integers(0, 10**12, n),
            "taker_buy_base_asset_volume": vol / 2,
            "taker_buy_quote_asset_volume": -0.0 * vol,  # all zeros, some negative zero
            "source": src,
        }
    ).cast(KLINE_SCHEMA)  # type: ignore[arg-type]


def _duckdb(path: Path) -> pl.DataFrame:
    df = duckdb.sql("SELECT * FROM read_parquet($p)", params={"p": str(path)}).pl()
    t = pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    return df.with_columns(t)


def _stats(path: Path, group: int | None = None) -> list[tuple[object, object, int | None]]:
    """Per column: min, max and null count of one row group, or over all of them."""
    meta = pq.ParquetFile(path).metadata
    groups = range(meta.num_row_groups) if group is None else [group]
    out = []
    for i in range(meta.num_columns):
        stats = [meta.row_group(g).column(i).statistics for g in groups]
        assert all(s is not None and s.has_min_max for s in stats)
        out.append((min(s.min for s in stats), max(s.max for s in stats), sum(s.null_count for s in stats)))
    return out


def _check(df: pl.DataFrame, tmp_path: Path) -> None:
    data = encode_plain(df)
    assert data is not None
    ours, theirs = tmp_path / "plain.parquet", tmp_path / "pyarrow.parquet"
    ours.write_bytes(data)
    theirs.write_bytes(_encode_table(df.to_arrow(compat_level=pl.CompatLevel.newest())))
    back = pl.read_parquet(ours)
    assert back.schema == pl.Schema(KLINE_SCHEMA)
    assert back.equals(df)
    assert pq.read_table(ours).equals(pq.read_table(theirs))
    assert _duckdb(ours).equals(_duckdb(theirs))
    types = "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))"
    assert duckdb.execute(types, [str(ours)]).fetchall() == duckdb.execute(types, [str(theirs)]).fetchall()
    ours_stats, theirs_stats = _stats(ours), _stats(theirs)
    for (lo, hi, nulls), (lo2, hi2, nulls2) in zip(ours_stats, theirs_stats, strict=True):
        assert (lo == lo2 or (lo == 0 and lo2 == 0)) and (hi == hi2 or (hi == 0 and hi2 == 0))
        assert nulls == nulls2 == 0


@pytest.mark.parametrize("n", [1, 2, 499, 1440, 44_640])
def test_readers_get_what_pyarrow_writes(n: int, tmp_path: Path) -> None:
    _check(klines(n, seed=n), tmp_path)


def test_files_of_several_days_carry_day_fingerprints(tmp_path: Path) -> None:
    """Rows over four UTC days: one row group still (a second one for the last days slowed full scans),
    and the footer carries the four days' fingerprints; a file of one day carries none."""
    df = klines(3 * 1440 + 5, seed=3)
    data = encode_plain(df)
    assert data is not None
    ours, theirs = tmp_path / "plain.parquet", tmp_path / "pyarrow.parquet"
    ours.write_bytes(data)
    _check(df, tmp_path)
    assert pq.ParquetFile(ours).metadata.num_row_groups == 1
    packed = footer_prints(ours)
    assert packed is not None
    assert pq.read_metadata(ours).metadata == {META_KEY.encode(): packed.encode()}  # a real parser agrees
    # only lake's writer is trusted to store them: the same pair written by pyarrow is not read
    foreign = pq.read_table(ours).replace_schema_metadata({META_KEY: packed})
    pq.write_table(foreign, theirs)
    assert pq.read_metadata(theirs).metadata[META_KEY.encode()] == packed.encode()
    assert footer_prints(theirs) is None
    times = df["candle_begin_time"].to_physical().to_numpy()
    assert packed == partition_prints(times, row_hashes(df))
    days = unpack_days(packed)
    day0 = T0 // 86_400_000
    assert sorted(days) == [day0, day0 + 1, day0 + 2, day0 + 3]
    assert days[day0 + 3][1] == T0 + (3 * 1440 + 4) * 60_000  # the day's last open time
    # one value changed on day 1: only that day's fingerprint moves
    edited = df.with_columns(
        pl.when(pl.int_range(pl.len()) == 2000)
        .then(pl.col("close") + 1)
        .otherwise(pl.col("close"))
        .alias("close")
    )
    data2 = encode_plain(edited)
    assert data2 is not None
    moved = unpack_days(footer_prints(io.BytesIO(data2)) or "")
    assert [d for d in days if days[d] != moved[d]] == [day0 + 1]
    one_day = encode_plain(df.head(1440))
    assert one_day is not None
    assert footer_prints(io.BytesIO(one_day)) is None
    assert pq.ParquetFile(io.BytesIO(one_day)).metadata.num_row_groups == 1
    # asked for (the klines store does for partitions longer than a day): one day's fingerprint
    asked = encode_plain(df.head(1440), prints=True)
    assert asked is not None
    assert unpack_days(footer_prints(io.BytesIO(asked)) or "") == {day0: days[day0]}
    assert footer_prints(io.BytesIO(encode_plain(df, prints=False) or b"")) is None


def test_the_store_puts_fingerprints_in_files_longer_than_a_day(tmp_path: Path) -> None:
    """Every file of a 5m month carries them, its first day's included; a 1m day file none."""
    df = klines(3 * 1440, seed=5)
    for iv, step, n in (("5m", 300_000, 288), ("1m", 60_000, 1440)):
        rows = df.head(n).with_columns(
            pl.Series("candle_begin_time", T0 + step * np.arange(n, dtype=np.int64)).cast(
                KLINE_SCHEMA["candle_begin_time"]
            )
        )
        write_klines(tmp_path, "usdt_perp", iv, "AUSDT", rows)  # one day
        path = tmp_path / PartitionKey.for_candle("klines", "usdt_perp", iv, "AUSDT", T0).path
        got = footer_prints(path)
        assert (got is not None) == (iv == "5m")
        if got is not None:
            assert list(unpack_days(got)) == [T0 // 86_400_000]


def test_mixed_sources_and_slices(tmp_path: Path) -> None:
    n = 3000
    src = [SOURCES[(i // 250) % 3] for i in range(n)]
    df = klines(n, sources=src)
    _check(df, tmp_path)
    plain = PlainKlines.of(df)
    assert plain is not None
    for lo, k in [(0, 250), (200, 100), (240, 700), (2999, 1), (1000, 2000)]:
        assert pl.read_parquet(io.BytesIO(plain.encode(lo, k))).equals(df.slice(lo, k))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    seed=st.integers(0, 10_000),
    runs=st.lists(st.tuples(st.sampled_from(SOURCES), st.integers(1, 60)), min_size=1, max_size=8),
)
def test_random_frames_round_trip(n: int, seed: int, runs: list[tuple[str, int]]) -> None:
    src = [s for s, k in runs for _ in range(k)]
    src = (src * (n // len(src) + 1))[:n]
    df = klines(n, seed=seed, sources=src)
    data = encode_plain(df)
    assert data is not None
    assert pl.read_parquet(io.BytesIO(data)).equals(df)
    assert pq.read_table(io.BytesIO(data)).to_pylist() == df.to_arrow().to_pylist()


def test_unsupported_frames_go_to_pyarrow() -> None:
    df = klines(10)
    assert encode_plain(df.clear()) is None
    assert encode_plain(df.with_columns(pl.lit(None, pl.Int64).alias("trade_num"))) is None
    assert encode_plain(df.with_columns(pl.lit(1).alias("extra"))) is None
    assert encode_plain(df.select(list(reversed(KLINE_COLUMNS)))) is None
    assert encode_plain(df.with_columns(pl.col("trade_num").cast(pl.Float64))) is None
    # encode_parquet still writes them, with pyarrow
    odd = df.with_columns(pl.lit(None, pl.Int64).alias("trade_num"))
    assert pl.read_parquet(io.BytesIO(encode_parquet(odd))).equals(odd)


def test_hand_assembled_thrift_equals_the_struct_builder() -> None:
    """The page headers and column chunk tails written per file byte by byte are the compact-protocol
    encoding of the structs the parquet format defines (built here with the generic ``_Struct``)."""
    S = pp._Struct
    for raw, comp, n, enc in [(0, 0, 1, 0), (11_520, 5_380, 1_440, 0), (70_000, 69_999, 44_640, 8)]:
        data = S().i32(1, pp._DATA_PAGE).i32(2, raw).i32(3, comp)
        data.struct(5, S().i32(1, n).i32(2, enc).i32(3, pp._RLE).i32(4, pp._RLE))
        assert pp._page_header(pp._DATA_PAGE, raw, comp, n, enc) == data.end()
        dic = S().i32(1, pp._DICTIONARY_PAGE).i32(2, raw).i32(3, comp)
        dic.struct(7, S().i32(1, n).i32(2, pp._PLAIN))
        assert pp._page_header(pp._DICTIONARY_PAGE, raw, comp, n, enc) == dic.end()
    lo, hi = b"\x00" * 8, b"\x7f" * 8
    for dict_offset in (None, 123_456):
        meta = S().i32(1, pp._INT64).list_i32(2, [pp._RLE, pp._PLAIN]).list_binary(3, [b"open"])
        meta.i32(4, pp._LZ4_RAW).i64(5, 1440).i64(6, 11_600).i64(7, 5_400).i64(9, 4)
        if dict_offset is not None:
            meta.i64(11, dict_offset)
        stats = S().i64(3, 0).binary(5, hi).binary(6, lo).boolean(7, True).boolean(8, True)
        meta.struct(12, stats)
        chunk = S().i64(2, 0).struct(3, meta).end()
        head = (
            S().i64(2, 0).buf
            + b"\x1c"
            + S().i32(1, pp._INT64).list_i32(2, [pp._RLE, pp._PLAIN]).list_binary(3, [b"open"]).buf
        )
        tail = pp._chunk_tail(pp._LZ4_RAW, 1440, 11_600, 5_400, 4, dict_offset, lo, hi)
        assert bytes(head) + tail == chunk


def test_write_klines_files_and_filters(tmp_path: Path) -> None:
    """Partitions written through write_klines (new ones from slices, merged ones whole) read back
    exactly, and a time filter pushed down to DuckDB and Polars returns the right rows."""
    df = klines(3 * 1440 + 100, seed=3)
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", df.slice(0, 2 * 1440))
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", df.slice(1440, 2 * 1440 + 100))  # merge + new
    files = sorted(tmp_path.rglob("data.parquet"))
    assert len(files) == 4
    got = pl.concat([pl.read_parquet(f) for f in files])
    assert got.equals(df)
    lo, hi = T0 + 1500 * 60_000, T0 + 3000 * 60_000
    want = df.filter(pl.col("candle_begin_time").dt.epoch("ms").is_between(lo, hi, closed="left"))
    glob = str(tmp_path / "klines" / "**" / "data.parquet")
    q = (
        "SELECT * EXCLUDE (trade_type, interval, symbol, date) FROM read_parquet($glob, hive_partitioning=true) "
        "WHERE epoch_ms(candle_begin_time) >= $lo AND epoch_ms(candle_begin_time) < $hi ORDER BY 1"
    )
    t = pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    got_db = duckdb.sql(q, params={"glob": glob, "lo": lo, "hi": hi}).pl()
    assert got_db.with_columns(t).equals(want)
    lazy = pl.scan_parquet([str(f) for f in files]).filter(
        pl.col("candle_begin_time").dt.epoch("ms").is_between(lo, hi, closed="left")
    )
    assert lazy.collect().equals(want)

    key = PartitionKey(
        "klines", "usdt_perp", "1m", "BTCUSDT", pl.Series([T0]).cast(pl.Datetime("ms")).dt.date()[0]
    )
    part = read_partition(LakeFS(tmp_path), key)
    assert part is not None and part.equals(df.slice(0, 1440))


def test_conform_fast_path_accepts_only_what_the_full_checks_accept() -> None:
    """write_klines' shortcut for rows that already are valid klines: never for a row the full
    checks would refuse, and the same frame when it applies."""
    from lake.errors import DataError
    from lake.store import klines as K

    df = klines(500, seed=5)
    assert K._conform_fast(df) and K._conform(df).equals(df)
    mixed = klines(500, seed=5, sources=["rest"] * 250 + ["ws"] * 250)
    assert not K._conform_fast(mixed) and K._conform(mixed).equals(mixed)  # the full path takes it
    bad = [
        df.with_columns(pl.lit(float("inf")).alias("open")),
        df.with_columns(
            pl.when(pl.col("trade_num") % 7 == 0).then(float("-inf")).otherwise(pl.col("low")).alias("low")
        ),
        df.with_columns(
            pl.when(pl.col("trade_num") % 5 == 0).then(None).otherwise(pl.col("volume")).alias("volume")
        ),
        df.with_columns(pl.lit("x").alias("source")),
    ]
    for b in bad:
        assert not K._conform_fast(b)
        with pytest.raises(DataError):
            K._conform(b)
    assert not K._conform_fast(df.select(list(reversed(KLINE_COLUMNS))))
    assert K._conform(df.select(list(reversed(KLINE_COLUMNS)))).equals(df)
