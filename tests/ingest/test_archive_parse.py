"""Parsing archive kline files: header drift, µs/ms, duplicates, rows outside the day, corrupt zips."""

from __future__ import annotations

import datetime as dt
import io
import zipfile

import polars as pl
import pytest

from lake.errors import DataError
from lake.ingest.archive.parse import parse_kline_csv, parse_kline_zip, read_zip_member
from lake.schema import KLINE_SCHEMA
from tests.ingest.archive_fakes import DAY_MS, HEADER, MIN_MS, csv, day_opens, row, zip_bytes

D0 = int(dt.datetime(2024, 12, 31, tzinfo=dt.UTC).timestamp() * 1000)


def parse(data: bytes, start: int = D0, end: int = D0 + DAY_MS) -> pl.DataFrame:
    return parse_kline_csv(data, start_ms=start, end_ms=end, name="t.csv")


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("us", [False, True])
def test_header_and_timestamp_unit_variants_parse_identically(header: bool, us: bool) -> None:
    opens = day_opens(D0)
    got = parse(csv(opens, header=header, us=us))
    ref = parse(csv(opens))
    assert got.schema == pl.Schema(KLINE_SCHEMA)
    assert got.height == 1440
    assert got.equals(ref)
    assert got["candle_begin_time"][0] == dt.datetime(2024, 12, 31, tzinfo=dt.UTC)
    assert got["source"].unique().to_list() == ["archive"]
    first = got.row(0, named=True)
    assert first["open"] == 100.0 + (D0 // MIN_MS) % 97
    assert first["trade_num"] == (D0 // MIN_MS) % 11
    assert first["taker_buy_quote_asset_volume"] == 150.0


def test_mixed_units_in_one_file_are_converted_per_value() -> None:
    # The spot µs switch happens at a day boundary; a monthly file could in principle mix both.
    data = (row(D0) + row(D0 + MIN_MS, us=True) + row(D0 + 2 * MIN_MS)).encode()
    got = parse(data)
    assert got["candle_begin_time"].dt.epoch("ms").to_list() == [D0, D0 + MIN_MS, D0 + 2 * MIN_MS]


def test_unused_fields_are_not_parsed() -> None:
    """close_time and ignore are not lake columns: whatever they hold (Binance has shipped an empty
    or non-numeric ignore field) does not fail the file."""
    good = parse(csv([D0, D0 + MIN_MS]))
    odd = "".join(r.rsplit(",", 1)[0] + ",x\n" for r in (row(D0), row(D0 + MIN_MS)))
    assert parse(odd.encode()).equals(good)
    empty = "".join(r.rsplit(",", 1)[0] + ",\n" for r in (row(D0), row(D0 + MIN_MS)))
    assert parse(empty.encode()).equals(good)


def test_header_with_bom_and_crlf() -> None:
    data = b"\xef\xbb\xbf" + (HEADER + row(D0) + row(D0 + MIN_MS)).replace("\n", "\r\n").encode()
    assert parse(data).height == 2


def test_row_outside_the_day_is_an_error() -> None:
    data = csv([D0, D0 + DAY_MS])
    with pytest.raises(DataError, match="outside"):
        parse(data)
    with pytest.raises(DataError, match="outside"):
        parse(csv([D0 - MIN_MS, D0]))


def test_identical_duplicates_are_kept_once() -> None:
    opens = day_opens(D0)[:10]
    data = csv(opens) + csv(opens) + csv(opens[:3])
    got = parse(data)
    assert got.height == 10
    assert got["candle_begin_time"].is_sorted()


def test_conflicting_duplicates_keep_the_last_row_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Deduplicated on the open time like the lake's upsert (last wins): one odd file must not fail."""
    data = (row(D0) + row(D0, price=5.0) + row(D0 + MIN_MS)).encode()
    with caplog.at_level("WARNING", logger="lake.archive"):
        got = parse(data)
    assert got["candle_begin_time"].dt.epoch("ms").to_list() == [D0, D0 + MIN_MS]
    assert got["open"].to_list() == [5.0, 100.0 + ((D0 + MIN_MS) // MIN_MS) % 97]
    assert "1 row(s) repeat an open time" in caplog.text


@pytest.mark.parametrize(
    "bad",
    [
        b"1704067200000,1,2,3\n",  # too few columns
        row(D0).replace(",0\n", ",0,9\n").encode(),  # too many columns
        row(D0).replace("1.5,150.0", ",150.0").encode(),  # an empty value
        row(D0).replace("1.5,150.0", "abc,150.0").encode(),  # not a number
    ],
)
def test_malformed_rows_are_errors(bad: bytes) -> None:
    with pytest.raises(DataError):
        parse(bad)


def test_empty_files_give_no_rows() -> None:
    assert parse(b"").height == 0
    assert parse(HEADER.encode()).height == 0


def test_zip_round_trip_and_corruption() -> None:
    data = csv(day_opens(D0))
    z = zip_bytes(data)
    assert read_zip_member(z) == data
    assert parse_kline_zip(z, start_ms=D0, end_ms=D0 + DAY_MS).height == 1440
    with pytest.raises(DataError, match="corrupt"):
        read_zip_member(z[: len(z) // 2], "half.zip")
    with pytest.raises(DataError, match="corrupt"):
        read_zip_member(b"not a zip at all", "junk.zip")
    # Flip a byte inside the compressed member: the CRC check must catch it.
    broken = bytearray(z)
    broken[60] ^= 0xFF
    with pytest.raises(DataError):
        read_zip_member(bytes(broken), "flipped.zip")


def test_zip_with_two_members_is_rejected() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.csv", "1")
        zf.writestr("b.csv", "2")
    with pytest.raises(DataError, match="one CSV"):
        read_zip_member(buf.getvalue(), "two.zip")


def test_monthly_file_range() -> None:
    jan = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    feb = int(dt.datetime(2024, 2, 1, tzinfo=dt.UTC).timestamp() * 1000)
    opens = list(range(jan, feb, 3_600_000))
    got = parse_kline_csv(csv(opens, step_ms=3_600_000), start_ms=jan, end_ms=feb)
    assert got.height == 744
    with pytest.raises(DataError):
        parse_kline_csv(csv([*opens, feb], step_ms=3_600_000), start_ms=jan, end_ms=feb)


def _inflaters() -> list[bool]:
    try:
        import isal  # noqa: F401
    except ImportError:  # the zlib fallback is still tested
        return [False]
    return [False, True]


@pytest.mark.parametrize("isal", _inflaters(), ids=lambda v: "isal" if v else "zlib")
def test_inflate_member_checks_size_crc_and_stream_end(isal: bool) -> None:
    """Both inflaters (ISA-L when installed, the zlib fallback) accept exactly the good stream."""
    import zlib

    from lake.ingest.archive.parse import inflate_member

    data = csv(day_opens(D0))
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = c.compress(data) + c.flush()
    crc = zlib.crc32(data)
    assert inflate_member(packed, len(data), crc, "ok", isal=isal) == data
    for args in [
        (packed, len(data), crc ^ 1),  # wrong CRC-32
        (packed, len(data) - 1, crc),  # longer than declared (inflates one byte past it, no more)
        (packed, len(data) + 1, crc),  # shorter than declared
        (packed[: len(packed) // 2], len(data), crc),  # truncated stream
        (b"\xff" * 64, len(data), crc),  # not deflate
    ]:
        with pytest.raises(DataError, match="corrupt"):
            inflate_member(*args, "bad", isal=isal)


def test_zip_reading_with_the_zlib_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ISA-L the same zips read the same and the same corruptions are caught."""
    from lake.ingest.archive import parse

    monkeypatch.setattr(parse, "_isal", None)
    test_zip_round_trip_and_corruption()
