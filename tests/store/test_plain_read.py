"""Reading the last rows of the plain writer's files page by page (``lake.store.plain_read``): the
same rows as Polars gives, only the tail page inflated where the writer split, and ``None`` (the
caller's fallback) for anything else."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.errors import DataError
from lake.schema import KLINE_SCHEMA
from lake.store import plain_read
from lake.store.fs import LakeFS
from lake.store.klines import _encode_table
from lake.store.parquet_plain import PlainKlines, def_levels, tail_cut
from lake.store.plain_read import read_since
from tests.store.test_parquet_plain import klines

DAY = 86_400_000
T0 = 1_704_067_200_000  # 2024-01-01
COLUMNS = [c for c in KLINE_SCHEMA if c not in ("candle_begin_time", "source")]
ALL = ["candle_begin_time", *COLUMNS]


def _frame(times: np.ndarray, seed: int = 0) -> pl.DataFrame:
    df = klines(len(times), seed=seed)
    return df.with_columns(pl.Series("candle_begin_time", times).cast(KLINE_SCHEMA["candle_begin_time"]))


def _expected(path: Path, since: int) -> pl.DataFrame:
    df = pl.read_parquet(path).drop("source")
    return df.filter(pl.col("candle_begin_time").dt.epoch("ms") >= since)


def _same(got: dict[str, np.ndarray], want: pl.DataFrame) -> None:
    assert list(got) == ALL
    for c in ALL:
        assert np.array_equal(got[c], want[c].to_physical().to_numpy()), c


def _pages(path: Path, column: str) -> list[tuple[int, int]]:
    """(first row, rows) of each page of a column chunk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = path.read_bytes()
        footer = data[-8 - int.from_bytes(data[-8:-4], "little") : -8]
        _, pages = plain_read._File(fd, footer, len(data) - 8 - len(footer)).pages(column)
    finally:
        os.close(fd)
    return [(p.first, p.n) for p in pages]


def test_a_month_is_split_at_the_day_before_its_last(tmp_path: Path) -> None:
    """A month of 5m (holes included): each numeric column has a second page from the first candle
    of the day before the last day on; an appended day's build reads only that page."""
    times = T0 + 300_000 * np.arange(31 * 288, dtype=np.int64)
    times = np.delete(times, np.s_[100:150])  # a hole
    path = tmp_path / "month.parquet"
    path.write_bytes(PlainKlines.of(_frame(times)).encode())  # type: ignore[union-attr]
    split = int(np.searchsorted(times, T0 + 29 * DAY))
    for c in ALL:
        assert _pages(path, c) == [(0, split), (split, len(times) - split)]
    assert _pages(path, "candle_begin_time")[1][0] == tail_cut(times)[0]
    since = T0 + 30 * DAY - 55 * 60_000  # an appended last day, less the reach of a 1h bin
    got = read_since(path, since, COLUMNS)
    assert got is not None and len(got["open"]) == 288 + 11
    _same(got, _expected(path, since))
    # from the tail page's first candle exactly: that page alone (the one before is not inflated,
    # which for a month would hand the file to Polars)
    got = read_since(path, int(times[split]), COLUMNS)
    assert got is not None and len(got["open"]) == len(times) - split
    _same(got, _expected(path, int(times[split])))


def test_files_of_up_to_two_days_have_one_page(tmp_path: Path) -> None:
    for days in (1, 2):
        times = T0 + 300_000 * np.arange(days * 288, dtype=np.int64)
        path = tmp_path / f"{days}.parquet"
        path.write_bytes(PlainKlines.of(_frame(times)).encode())  # type: ignore[union-attr]
        assert _pages(path, "open") == [(0, len(times))]
        got = read_since(path, T0 + DAY - 3_600_000, COLUMNS)
        assert got is not None
        _same(got, _expected(path, T0 + DAY - 3_600_000))


@settings(max_examples=60, deadline=None)
@given(
    days=st.integers(1, 40),
    holes=st.lists(st.tuples(st.integers(0, 40 * 288), st.integers(1, 400)), max_size=4),
    since_day=st.floats(-2, 42),
    seed=st.integers(0, 1000),
)
def test_random_partitions_read_like_polars(
    days: int, holes: list[tuple[int, int]], since_day: float, seed: int, tmp_path_factory: object
) -> None:
    """Any partition and any start: the rows Polars reads from that time on, or ``None`` (never other
    rows); and the fast path is taken whenever the start lies in the last page."""
    times = T0 + 300_000 * np.arange(days * 288, dtype=np.int64)
    keep = np.ones(len(times), dtype=bool)
    for at, n in holes:
        keep[at : at + n] = False
    times = times[keep]
    if len(times) == 0:
        return
    path = Path(str(tmp_path_factory.mktemp("p"))) / "data.parquet"  # type: ignore[attr-defined]
    path.write_bytes(PlainKlines.of(_frame(times, seed)).encode())  # type: ignore[union-attr]
    since = T0 + int(since_day * DAY)
    got = read_since(path, since, COLUMNS)
    cuts = tail_cut(times)
    if since >= (int(times[cuts[0]]) if cuts else int(times[0])):
        assert got is not None
    if got is not None:
        _same(got, _expected(path, since))


def test_other_files_are_left_to_the_caller(tmp_path: Path) -> None:
    times = T0 + 300_000 * np.arange(31 * 288, dtype=np.int64)
    df = _frame(times)
    since = T0 + 30 * DAY
    foreign = tmp_path / "pyarrow.parquet"
    foreign.write_bytes(_encode_table(df.to_arrow()))
    assert read_since(foreign, since, COLUMNS) is None
    ours = tmp_path / "ours.parquet"
    data = PlainKlines.of(df).encode()  # type: ignore[union-attr]
    ours.write_bytes(data)
    assert read_since(ours, since, COLUMNS) is not None
    # a month in one page (as the writer made them before): mostly rows before ``since``, left to Polars
    one_page = tmp_path / "one-page.parquet"
    pq.write_table(pq.read_table(ours), one_page, data_page_size=1 << 30, compression="lz4")
    assert read_since(one_page, since, COLUMNS) is None
    # truncated, cut at random places, a missing file, a directory
    for cut in (len(data) - 1, len(data) // 2, 100, 5):
        bad = tmp_path / f"cut-{cut}.parquet"
        bad.write_bytes(data[:cut])
        assert read_since(bad, since, COLUMNS) is None
    assert read_since(tmp_path / "missing.parquet", since, COLUMNS) is None
    assert read_since(tmp_path, since, COLUMNS) is None
    # a page header's byte changed: not this writer's layout any more
    at = data.rfind(b"\x15\x00\x15", 0, len(data) // 2)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(data[:at] + b"\x15\x02" + data[at + 2 :])
    got = read_since(broken, since, COLUMNS)
    assert got is None or len(got["open"]) == 288


def test_relocated_rewrites_read_the_new_version(tmp_path: Path) -> None:
    """A file rewritten in place by the store keeps old pages at their offsets and moves the new
    ones (``lake.store.relocate``): the offsets in its footer still lead to the new version's pages."""
    lfs = LakeFS(tmp_path)
    rel = "klines/trade_type=usdt_perp/interval=5m/symbol=AUSDT/date=2024-01-01/data.parquet"
    since = T0 + 10 * DAY
    for days, seed in ((12, 1), (13, 2), (11, 3), (20, 4)):
        times = T0 + 300_000 * np.arange(days * 288, dtype=np.int64)
        lfs.write_atomic(rel, PlainKlines.of(_frame(times, seed)).encode())  # type: ignore[union-attr]
        got = read_since(tmp_path / rel, since, COLUMNS)
        assert got is not None
        _same(got, _expected(tmp_path / rel, since))
        assert got["open"][0] == _frame(times, seed)["open"][10 * 288]


def test_a_page_that_inflates_short_is_refused(tmp_path: Path) -> None:
    """pyarrow's LZ4 decompress does not say how many bytes came out (the rest of its buffer is
    uninitialised): a body that inflates to fewer bytes than its header says is an error, not read."""
    n = 300
    levels = def_levels(n)
    values = np.arange(n, dtype="<f8") * 1.5
    lz4 = pa.Codec("lz4_raw")
    for rows, ok in ((n, True), (n - 8, False), (n - 1, False)):
        body = lz4.compress(levels + values[:rows].tobytes(), asbytes=True)
        path = tmp_path / f"{rows}.bin"
        path.write_bytes(body)
        page = plain_read._Page(0, len(levels) + 8 * n, len(body), 0, n)
        fd = os.open(path, os.O_RDONLY)
        try:
            if ok:
                assert np.array_equal(plain_read._File(fd, b"", 0).values(page, 7, "<f8"), values)
            else:
                with pytest.raises(plain_read._Corrupt):
                    plain_read._File(fd, b"", 0).values(page, 7, "<f8")
        finally:
            os.close(fd)


def test_sizes_outside_the_file_and_unknown_columns(tmp_path: Path) -> None:
    times = T0 + 300_000 * np.arange(5 * 288, dtype=np.int64)
    path = tmp_path / "data.parquet"
    data = PlainKlines.of(_frame(times)).encode()  # type: ignore[union-attr]
    path.write_bytes(data)
    footer = data[-8 - int.from_bytes(data[-8:-4], "little") : -8]
    body_end = len(data) - 8 - len(footer)
    chunks = plain_read._File(0, footer, body_end).chunks
    assert sorted(chunks) == sorted(["candle_begin_time", *COLUMNS])
    _, rows, offset, size = chunks["taker_buy_quote_asset_volume"]  # the last one
    assert offset + size <= body_end and rows == len(times)
    with pytest.raises(plain_read._Skip):  # a chunk said to reach into the footer
        plain_read._File(0, footer, offset + size - 1)
    with pytest.raises(ValueError, match="not a numeric kline value column"):
        read_since(path, T0, ["source"])
    with pytest.raises(ValueError, match="not a numeric kline value column"):
        read_since(path, T0, ["nope"])
    got = read_since(path, T0 + 4 * DAY, ["close"])
    assert got is not None and list(got) == ["candle_begin_time", "close"] and len(got["close"]) == 288


def test_unsorted_rows_are_one_page_and_read_whole_or_not_at_all(tmp_path: Path) -> None:
    """The writer splits only ascending rows (as the store writes them); a file of other rows is one
    page, which the reader checks whole (here it then returns ``None``)."""
    times = T0 + 300_000 * np.arange(5 * 288, dtype=np.int64)
    times[10], times[-5] = times[-5], times[10]  # a row of the last day early in the file
    assert tail_cut(times) == []
    path = tmp_path / "data.parquet"
    path.write_bytes(PlainKlines.of(_frame(times)).encode())  # type: ignore[union-attr]
    assert _pages(path, "open") == [(0, len(times))]
    assert read_since(path, T0 + 4 * DAY, COLUMNS) is None


def test_a_file_whose_pages_inflate_short_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of lake's writer whose LZ4 pages inflate to fewer bytes than their headers say (made
    here by a writer whose compressor drops each page's last value). Polars does not check this
    (it reads the missing bytes as values); planning's reader names the file instead."""
    from lake.store import parquet_plain

    real = parquet_plain._LZ4

    class Short:
        def compress(self, body: bytes, asbytes: bool = True) -> bytes:
            return real.compress(body[:-8], asbytes=True)

    times = T0 + 300_000 * np.arange(5 * 288, dtype=np.int64)
    df = _frame(times)
    monkeypatch.setattr(parquet_plain, "_LZ4", Short())
    data = PlainKlines.of(df).encode()  # type: ignore[union-attr]
    monkeypatch.undo()
    path = tmp_path / "data.parquet"
    path.write_bytes(data)
    with pytest.raises(DataError, match=r"corrupt kline partition .*inflates to fewer bytes"):
        read_since(path, T0 + 4 * DAY, COLUMNS)


def test_the_store_splits_the_partitions_days_are_appended_to(tmp_path: Path) -> None:
    """A month written whole up to its last day (history) stays one page, so full scans pay nothing
    for it; a month still open is split, and so is one whose last day came by an append."""
    from lake.store.klines import write_klines

    def pages(sym: str, month: str) -> int:
        path = tmp_path / f"klines/trade_type=usdt_perp/interval=5m/symbol={sym}/date={month}/data.parquet"
        return len(_pages(path, "open"))

    jan = T0 + 300_000 * np.arange(31 * 288, dtype=np.int64)  # all of January 2024
    write_klines(
        tmp_path, "usdt_perp", "5m", "AUSDT", _frame(np.append(jan, jan[-1] + 300_000 * np.arange(1, 2881)))
    )
    assert pages("AUSDT", "2024-01-01") == 1  # whole: January up to its 31st
    assert pages("AUSDT", "2024-02-01") == 2  # ten days of February: open
    write_klines(tmp_path, "usdt_perp", "5m", "BUSDT", _frame(jan[: 30 * 288]))
    assert pages("BUSDT", "2024-01-01") == 2
    write_klines(tmp_path, "usdt_perp", "5m", "BUSDT", _frame(jan[30 * 288 :], seed=1))  # the 31st appended
    assert pages("BUSDT", "2024-01-01") == 2
    since = int(jan[-1]) - 55 * 60_000
    path = tmp_path / "klines/trade_type=usdt_perp/interval=5m/symbol=BUSDT/date=2024-01-01/data.parquet"
    got = read_since(path, since, COLUMNS)
    assert got is not None and len(got["open"]) == 12
    _same(got, _expected(path, since))
