"""The Quantclass file format: 7z holding one CSV."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lake.errors import DataError, ValidationError
from lake.quantclass.files import (
    CSV_COLUMNS,
    SHANGHAI,
    FileName,
    decode_archive,
    encode_archive,
    kind_of,
    read_candles_csv,
    write_candles_csv,
)


def _frame() -> pl.DataFrame:
    t = dt.datetime(2024, 10, 8, 5, tzinfo=dt.UTC)
    return pl.DataFrame(
        {
            "candle_begin_time": [t, t + dt.timedelta(hours=1)],
            "symbol": ["BTCUSDT", "1000SHIBUSDT"],
            "open": [62694.9, 0.0000171],
            "high": [62723.69, 0.0000172],
            "low": [62305.78, 0.00001705],
            "close": [62517.35, 0.0000171],
            "volume": [719.31657, 1.2345678901234567e12],
            "quote_volume": [44951930.123456789, 21111.1],
            "trade_num": [125544, 7],
            "taker_buy_base_asset_volume": [305.50545, 0.1],
            "taker_buy_quote_asset_volume": [19087140.1, 0.3],
            "tag": ["HasSwap", "NoSwap"],
        }
    ).with_columns(pl.col("candle_begin_time").dt.cast_time_unit("ms"))


def test_round_trip_is_exact() -> None:
    df = _frame()
    got = decode_archive(encode_archive(write_candles_csv(df), "spot_1h0m.csv"))
    assert_frame_equal(got, df.select(CSV_COLUMNS), check_exact=True)


def test_lenient_reading_disclaimer_gbk_and_zone_suffix() -> None:
    csv = write_candles_csv(_frame()).decode()
    csv = csv.replace("2024-10-08 05:00:00", "2024-10-08 05:00:00+00:00")
    data = ("本数据仅供研究使用,,,\n" + csv).encode("gbk")
    got = read_candles_csv(data)
    assert got["candle_begin_time"][0] == dt.datetime(2024, 10, 8, 5, tzinfo=dt.UTC)
    assert got["symbol"].to_list() == ["BTCUSDT", "1000SHIBUSDT"]


def test_lenient_reading_iso_times_and_dashed_symbols() -> None:
    csv = write_candles_csv(_frame()).decode()
    csv = csv.replace("2024-10-08 05:00:00", "2024-10-08T05:00:00Z").replace("BTCUSDT", "BTC-USDT")
    got = read_candles_csv(csv.replace("\n", "\r\n").encode())
    assert got["candle_begin_time"][0] == dt.datetime(2024, 10, 8, 5, tzinfo=dt.UTC)
    assert got["symbol"].to_list() == ["BTCUSDT", "1000SHIBUSDT"]


def test_lenient_reading_spaced_header_and_times_without_seconds_or_with_fractions() -> None:
    csv = write_candles_csv(_frame()).decode()
    header, first, second = csv.splitlines()[:3]
    spaced = ", ".join(header.split(","))
    first = first.replace("2024-10-08 05:00:00", "2024-10-08 05:00")
    second = second.replace("2024-10-08 05:00:00", "2024-10-08 05:00:00.000")
    got = read_candles_csv("\n".join([spaced, first, second]).encode())
    assert_frame_equal(got, read_candles_csv(csv.encode()), check_exact=True)
    with pytest.raises(DataError, match="unparsable candle_begin_time '2024-10-08 5h'"):
        read_candles_csv(csv.replace("2024-10-08 05:00:00", "2024-10-08 5h", 1).encode())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a 7z file", "7z"),
        (encode_archive(b"a,b\n1,2\n", "x.csv"), "candle_begin_time"),
        (encode_archive(b"x", "readme.txt"), "no CSV"),
        (
            encode_archive(b"candle_begin_time,symbol,open\n2024-01-01 00:00:00,X,1\n", "x.csv"),
            "lacks columns",
        ),
        (encode_archive(write_candles_csv(_frame()).replace(b"62694.9", b"abc"), "x.csv"), "malformed"),
    ],
)
def test_bad_files_are_data_errors(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        decode_archive(data)


def test_file_names() -> None:
    name = FileName.parse("202410081500-spot_1h15m.7z")
    assert name is not None and name.kind == "spot" and name.offset == "15m"
    assert name.ts == dt.datetime(2024, 10, 8, 15, tzinfo=SHANGHAI)
    assert name.ts.astimezone(dt.UTC).hour == 7
    assert str(name) == "202410081500-spot_1h15m.7z"
    assert FileName.parse("swap_1h0m.csv") == FileName(None, "swap", "0m", "csv")
    assert FileName.parse("spot_4h0m.7z") is None and FileName.parse("../x-spot_1h0m.7z") is None
    assert kind_of("usdt_perp") == "swap" and kind_of("usdt_spot") == "spot"
    with pytest.raises(ValidationError, match="coin_perp"):
        kind_of("coin_perp")
