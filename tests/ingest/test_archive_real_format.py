"""Archive files written out byte for byte as data.binance.vision publishes them (not by the simulator).

Each test spells the CSV, ``.CHECKSUM`` or listing bytes literally, with the quirks of binance.md §5-6:
µs spot timestamps from 2025, futures headers and CRLF, a missing final newline, a non-zero ``ignore``,
COIN-M's column meanings, rows repeated (JUVUSDT), zero-volume candles, maintenance gaps and the
irregular 2018 klines whose open time is not on the interval's grid.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import polars as pl
import pytest

from lake.errors import DataError
from lake.ingest.archive.download import parse_checksum
from lake.ingest.archive.listing import list_all, parse_list_page
from lake.ingest.archive.parse import parse_kline_csv, parse_kline_zip

DAY = 86_400_000
MIN = 60_000
HOUR = 3_600_000


def ms(*a: int) -> int:
    return int(dt.datetime(*a, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


def zipped(csv: bytes, member: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, csv)
    return buf.getvalue()


def opens(df: pl.DataFrame) -> list[int]:
    return df["candle_begin_time"].dt.epoch("ms").to_list()


def values(df: pl.DataFrame, i: int) -> tuple[object, ...]:
    return df.drop("candle_begin_time", "source").row(i)


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------

SPOT_2025 = (
    b"1735689600000000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.21827000,"
    b"1735689659999999,768978.09245930,2631,3.95752000,370343.57312050,0\n"
    b"1735689660000000,93610.93000000,93652.00000000,93606.00000000,93640.01000000,5.60215000,"
    b"1735689719999999,524535.75914970,1614,2.95413000,276582.89264110,0\n"
)


def test_spot_2025_file_in_microseconds() -> None:
    z = zipped(SPOT_2025, "BTCUSDT-1m-2025-01-01.csv")
    df = parse_kline_zip(z, start_ms=ms(2025, 1, 1), end_ms=ms(2025, 1, 2), name="BTCUSDT-1m-2025-01-01.zip")
    assert opens(df) == [1735689600000, 1735689660000]
    assert values(df, 0) == (
        93576.0,
        93610.93,
        93537.5,
        93610.93,
        8.21827,
        768978.0924593,
        2631,
        3.95752,
        370343.5731205,
    )
    assert df.schema["trade_num"] == pl.Int64


def test_spot_2024_file_in_milliseconds_without_final_newline() -> None:
    data = (
        b"1704067200000,42283.58000000,42298.62000000,42261.02000000,42298.61000000,35.92724000,"
        b"1704067259999,1519545.01138240,1327,24.28963000,1027209.79357280,0\n"
        b"1704067260000,42298.62000000,42320.00000000,42298.61000000,42320.00000000,21.07048000,"
        b"1704067319999,891570.49765480,1159,12.90906000,546224.63853220,0"
    )
    df = parse_kline_csv(data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))
    assert opens(df) == [1704067200000, 1704067260000]
    assert values(df, 1) == (
        42298.62,
        42320.0,
        42298.61,
        42320.0,
        21.07048,
        891570.4976548,
        1159,
        12.90906,
        546224.6385322,
    )


UM_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    b"taker_buy_quote_volume,ignore"
)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("final_eol", [True, False])
def test_futures_file_with_header_and_a_decimal_ignore_field(eol: bytes, final_eol: bool) -> None:
    rows = [
        b"1704067200000,42314.00,42335.80,42289.60,42331.90,289.641,1704067259999,12254068.48160,3360,"
        b"175.211,7412934.39600,17928899.62484339",
        b"1704067260000,42331.90,42353.10,42322.00,42345.60,191.012,1704067319999,8088301.92350,2111,"
        b"113.508,4806468.01490,0",
    ]
    data = eol.join([UM_HEADER, *rows]) + (eol if final_eol else b"")
    df = parse_kline_csv(data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))
    assert opens(df) == [1704067200000, 1704067260000]
    assert values(df, 0) == (
        42314.0,
        42335.8,
        42289.6,
        42331.9,
        289.641,
        12254068.4816,
        3360,
        175.211,
        7412934.396,
    )
    assert values(df, 1)[-3:] == (2111, 113.508, 4806468.0149)


def test_coinm_columns_are_stored_by_position() -> None:
    """COIN-M: field 5 is contracts, 7 the base-asset volume, 9 taker-buy contracts, 10 taker-buy
    base volume. The lake keeps the REST/archive field positions (``klines_from_rest`` does the same),
    so ``volume`` holds contracts and ``quote_volume`` BTC for BTCUSD_PERP."""
    data = (
        b"1704067200000,42245.1,42267.4,42239.6,42262.1,3410,1704067259999,8.07219311,221,2190,5.18427296,0\n"
    )
    df = parse_kline_csv(data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))
    row = df.row(0, named=True)
    assert (row["volume"], row["quote_volume"]) == (3410.0, 8.07219311)
    assert (row["taker_buy_base_asset_volume"], row["taker_buy_quote_asset_volume"]) == (2190.0, 5.18427296)
    assert row["trade_num"] == 221


ROW_A = b"1704067200000,1.00,1.10,0.90,1.05,10.0,1704067259999,10.5,3,5.0,5.25,0"
ROW_B = b"1704067260000,1.05,1.20,1.00,1.10,20.0,1704067319999,22.0,4,6.0,6.60,0"


@pytest.mark.parametrize(
    "data",
    [
        ROW_A + b"\n" + ROW_B + b"\n\n",  # a trailing blank line
        ROW_A + b"\r\n" + ROW_B + b"\r\n\r\n",
        ROW_A + b"\n\n" + ROW_B + b"\n",  # a blank line between rows
        b"\n" + ROW_A + b"\n" + ROW_B,  # a leading one
        b"\r\n" + UM_HEADER + b"\r\n" + ROW_A + b"\r\n" + ROW_B + b"\r\n",
    ],
)
def test_blank_lines_hold_no_candle(data: bytes) -> None:
    df = parse_kline_csv(data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))
    assert opens(df) == [1704067200000, 1704067260000]
    assert values(df, 1) == (1.05, 1.2, 1.0, 1.1, 20.0, 22.0, 4, 6.0, 6.6)


def test_a_row_with_some_fields_empty_is_still_an_error() -> None:
    data = ROW_A + b"\n1704067260000,,1.20,1.00,1.10,20.0,1704067319999,22.0,4,6.0,6.60,0\n\n"
    with pytest.raises(DataError, match="open"):
        parse_kline_csv(data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n", UM_HEADER, UM_HEADER + b"\n", UM_HEADER + b"\r\n"])
def test_empty_files_have_no_rows(data: bytes) -> None:
    z = zipped(data, "BTCUSDT-1m-2024-01-01.csv")
    df = parse_kline_zip(z, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2))
    assert df.height == 0 and df.columns[0] == "candle_begin_time"


def test_juvusdt_rows_repeated_three_times_are_kept_once() -> None:
    """JUVUSDT-1d-2022-03 (binance-public-data #191) repeated a block of rows three times."""
    lines = [
        f"{ms(2022, 3, d)},{d}.000,{d}.500,{d - 0.5:.3f},{d}.250,{100 * d}.00,{ms(2022, 3, d) + DAY - 1},"
        f"{1000 * d}.0,{d * 7},{50 * d}.00,{500 * d}.0,0".encode()
        for d in range(1, 32)
    ]
    data = b"\n".join(lines[:10] + lines[10:] * 3) + b"\n"
    df = parse_kline_csv(data, start_ms=ms(2022, 3, 1), end_ms=ms(2022, 4, 1))
    assert opens(df) == [ms(2022, 3, d) for d in range(1, 32)]
    assert values(df, 30) == (31.0, 31.5, 30.5, 31.25, 3100.0, 31000.0, 217, 1550.0, 15500.0)


def test_zero_volume_candles_are_kept() -> None:
    data = (
        b"1669766400000,0.04130000,0.04130000,0.04130000,0.04130000,0.00000000,1669766459999,"
        b"0.00000000,0,0.00000000,0.00000000,0\n"
        b"1669766460000,0.04130000,0.04140000,0.04120000,0.04140000,812.00000000,1669766519999,"
        b"33.54280000,3,400.00000000,16.56000000,0\n"
    )
    df = parse_kline_csv(data, start_ms=ms(2022, 11, 30), end_ms=ms(2022, 12, 1))
    assert opens(df) == [1669766400000, 1669766460000]
    assert values(df, 0) == (0.0413, 0.0413, 0.0413, 0.0413, 0.0, 0.0, 0, 0.0, 0.0)


def test_maintenance_gap_is_left_as_missing_rows() -> None:
    """2020-02-19 11:35-17:30 UTC: no candles were generated; the file simply lacks those minutes."""
    day = ms(2020, 2, 19)
    gap = (ms(2020, 2, 19, 11, 35), ms(2020, 2, 19, 17, 30))
    times = [t for t in range(day, day + DAY, MIN) if not gap[0] <= t < gap[1]]
    data = b"".join(
        f"{t},10.00000000,10.00000000,10.00000000,10.00000000,1.00000000,{t + MIN - 1},10.00000000,1,"
        f"0.50000000,5.00000000,0\n".encode()
        for t in times
    )
    df = parse_kline_csv(data, start_ms=day, end_ms=day + DAY)
    assert df.height == 1440 - 355
    assert opens(df) == times


# Irregular 2018 klines (binance-public-data #77, BTCUSDT-1h-2018-02): opens off the hour grid and a
# close time that runs into the next candle. The lake stores each candle at the open time Binance
# published (REST serves the same rows); gap accounting counts it for the slot it falls in.
IRREGULAR_1H = (
    b"1518044400000,8236.00000000,8264.39000000,8151.01000000,8211.94000000,1045.27000000,1518047999999,"
    b"8578291.26000000,9815,512.20000000,4203700.33000000,0\n"
    b"1518048000000,8211.94000000,8258.91000000,8205.00000000,8221.00000000,286.43000000,1518049694788,"
    b"2357321.98000000,2801,140.96000000,1160181.71000000,0\n"
    b"1518168494789,8260.00000000,8480.00000000,8050.00000000,8350.01000000,1800.38000000,1518170399999,"
    b"15010912.12000000,18420,901.11000000,7512913.70000000,0\n"
    b"1518319694789,8290.00000000,8320.00000000,8270.00000000,8301.01000000,123.00000000,1518321600999,"
    b"1020000.00000000,1500,60.00000000,498000.00000000,0\n"
    b"1518321600000,8301.01000000,8330.00000000,8280.00000000,8310.00000000,456.00000000,1518325199999,"
    b"3790000.00000000,4200,230.00000000,1910000.00000000,0\n"
)


def test_irregular_2018_open_times_are_kept_as_published() -> None:
    df = parse_kline_csv(
        IRREGULAR_1H, start_ms=ms(2018, 2, 1), end_ms=ms(2018, 3, 1), name="BTCUSDT-1h-2018-02"
    )
    assert opens(df) == [1518044400000, 1518048000000, 1518168494789, 1518319694789, 1518321600000]
    assert values(df, 2) == (8260.0, 8480.0, 8050.0, 8350.01, 1800.38, 15010912.12, 18420, 901.11, 7512913.7)
    assert df["candle_begin_time"][2] == dt.datetime(2018, 2, 9, 9, 28, 14, 789000, tzinfo=dt.UTC)


def test_irregular_open_outside_the_file_period_is_still_an_error() -> None:
    with pytest.raises(DataError, match="outside"):
        parse_kline_csv(IRREGULAR_1H, start_ms=ms(2018, 2, 9), end_ms=ms(2018, 2, 10))


# --------------------------------------------------------------------------------------------------
# .CHECKSUM
# --------------------------------------------------------------------------------------------------

SHA = "a3f5b0b9a4c1f59e6c8a4f5ad0f3b34e6c0b5c9f8d0a6a2ad1c4e7b2f9e31c0d"
ZIP = "BTCUSDT-1m-2024-01-01.zip"


@pytest.mark.parametrize(
    "body",
    [
        f"{SHA}  {ZIP}",  # as published: two spaces, no trailing newline
        f"{SHA}  {ZIP}\n",
        f"{SHA}  {ZIP}\r\n",
        f"{SHA} {ZIP}",  # one space
        f"{SHA} *{ZIP}\n",  # sha256sum's binary-mode marker
        f"{SHA.upper()}  {ZIP}",
        f"{SHA}\n",  # the hash alone
        f"{SHA}  data/spot/daily/klines/BTCUSDT/1m/{ZIP}",  # sha256sum run from elsewhere
        f"{SHA}  /tmp/{ZIP}\n",
    ],
)
def test_checksum_variants(body: str) -> None:
    assert parse_checksum(body.encode(), ZIP) == SHA


def test_checksum_of_a_cjk_named_file() -> None:
    name = "币安人生USDT-1m-2025-11-01.zip"
    assert parse_checksum(f"{SHA}  {name}".encode(), name) == SHA
    with pytest.raises(DataError, match="names another file"):
        parse_checksum(f"{SHA}  {name}".encode(), ZIP)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n",
        f"{SHA[:-1]}  {ZIP}".encode(),
        f"{SHA}  ETHUSDT-1m-2024-01-01.zip".encode(),
        f"{SHA}  {ZIP}/ETHUSDT-1m-2024-01-01.zip".encode(),
        b"\xff\xfe" + SHA.encode(),
        b"<html></html>",
    ],
)
def test_bad_checksums_are_errors(body: bytes) -> None:
    with pytest.raises(DataError):
        parse_checksum(body, ZIP)


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------

LISTED_FILES = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>data.binance.vision</Name><Prefix>data/spot/daily/klines/BTCUSDT/1m/</Prefix><Marker></Marker><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated><Contents><Key>data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip</Key><LastModified>2024-01-02T06:12:44.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>58873</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip.CHECKSUM</Key><LastModified>2024-01-02T06:12:45.000Z</LastModified><ETag>&quot;6d0b1c2e8f7a3b4c5d6e7f8091a2b3c4&quot;</ETag><Size>92</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"""

LISTED_DIRS = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult><Name>data.binance.vision</Name><Prefix>data/futures/cm/daily/klines/</Prefix><Marker>data/futures/cm/daily/klines/ADAUSD_PERP/</Marker><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated><CommonPrefixes><Prefix>data/futures/cm/daily/klines/BTCUSD_PERP/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>data/futures/cm/daily/klines/BTCUSD_240628/</Prefix></CommonPrefixes></ListBucketResult>
"""


def test_listing_page_as_s3_sends_it() -> None:
    page = parse_list_page(LISTED_FILES)
    assert [(e.name, e.size, e.etag, e.last_modified) for e in page.entries] == [
        ("BTCUSDT-1m-2024-01-01.zip", 58873, "9b2cf535f27731c974343645a3985328", "2024-01-02T06:12:44.000Z"),
        (
            "BTCUSDT-1m-2024-01-01.zip.CHECKSUM",
            92,
            "6d0b1c2e8f7a3b4c5d6e7f8091a2b3c4",
            "2024-01-02T06:12:45.000Z",
        ),
    ]
    # Truncated without NextMarker: continue after the last key.
    assert page.continuation() == "data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip.CHECKSUM"
    dirs = parse_list_page(LISTED_DIRS)  # no namespace, a trailing newline, directories only
    assert dirs.entries == [] and dirs.continuation() is None
    assert dirs.prefixes == [
        "data/futures/cm/daily/klines/BTCUSD_PERP/",
        "data/futures/cm/daily/klines/BTCUSD_240628/",
    ]


async def test_directory_pages_continue_after_the_last_prefix() -> None:
    """A truncated page of CommonPrefixes only and no NextMarker: the marker is its last prefix."""
    base = "data/spot/daily/klines/"
    syms = [f"A{i:04d}USDT" for i in range(1500)]
    asked: list[str] = []

    async def fetch(marker: str) -> bytes:
        asked.append(marker)
        rest = [s for s in syms if f"{base}{s}/" > marker]
        page, more = rest[:1000], len(rest) > 1000
        body = "".join(f"<CommonPrefixes><Prefix>{base}{s}/</Prefix></CommonPrefixes>" for s in page)
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>data.binance.vision</Name><Prefix>{base}</Prefix><Marker>{marker}</Marker><MaxKeys>1000</MaxKeys>"
            f"<Delimiter>/</Delimiter><IsTruncated>{'true' if more else 'false'}</IsTruncated>{body}</ListBucketResult>"
        ).encode()

    listing = await list_all(fetch)
    assert listing.pages == 2
    assert asked == ["", f"{base}A0999USDT/"]
    assert listing.prefixes == [f"{base}{s}/" for s in syms]


def test_rows_repeating_an_open_time_with_other_values_keep_the_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a known Binance file, but a repeat whose values differ (a re-formatted volume, a later fix
    appended) must not fail the day: deduplicated on the open time, the last row kept, a warning."""
    data = (
        b"1704067200000,42314.00,42335.80,42289.60,42331.90,289.641,1704067259999,12254068.48160,3360,"
        b"175.211,7412934.39600,0\r\n"
        b"1704067260000,42331.90,42353.10,42322.00,42345.60,191.012,1704067319999,8088301.92350,2111,"
        b"113.508,4806468.01490,0\r\n"
        b"1704067200000,42314.00,42335.80,42289.60,42331.90,289.700,1704067259999,12256565.10000,3361,"
        b"175.300,7416700.00000,0\r\n"
    )
    with caplog.at_level("WARNING", logger="lake.archive"):
        df = parse_kline_csv(
            data, start_ms=ms(2024, 1, 1), end_ms=ms(2024, 1, 2), name="BTCUSDT-1m-2024-01-01"
        )
    assert opens(df) == [1704067200000, 1704067260000]
    assert values(df, 0) == (42314.0, 42335.8, 42289.6, 42331.9, 289.7, 12256565.1, 3361, 175.3, 7416700.0)
    assert "BTCUSDT-1m-2024-01-01: 1 row(s) repeat an open time with other values" in caplog.text
