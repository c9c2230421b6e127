"""The archive runner against a small archive server whose bytes the test controls exactly."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from lake.errors import DataError
from lake.ingest.archive.manifest import read_manifest
from lake.ingest.archive.plan import DAILY, MONTHLY, ArchiveFile
from lake.ingest.archive.runner import download_dir, ingest_archive
from lake.settings import Settings
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines
from tests.ingest.archive_fakes import DAY_MS, MIN_MS, FakeArchive, csv, day_opens, row, zip_bytes

JAN = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
FEB = int(dt.datetime(2024, 2, 1, tzinfo=dt.UTC).timestamp() * 1000)
SYM = "BTCUSDT"


def f_daily(day: int) -> ArchiveFile:
    return ArchiveFile("spot", DAILY, SYM, "1m", dt.date(2024, 2, day))


def f_jan() -> ArchiveFile:
    return ArchiveFile("spot", MONTHLY, SYM, "1m", dt.date(2024, 1, 1))


def fill(arch: FakeArchive) -> None:
    arch.put(f_jan().key, zip_bytes(csv(list(range(JAN, FEB, MIN_MS)))))
    for d in (1, 2, 3):
        start = FEB + (d - 1) * DAY_MS
        # Header drift and the µs switch, per file.
        arch.put(f_daily(d).key, zip_bytes(csv(day_opens(start), header=d == 2, us=d == 3)))


def settings(tmp_path: Path, arch: FakeArchive) -> Settings:
    return Settings(
        root=str(tmp_path / "lake"),
        archive_url=f"{arch.base}/archive",
        archive_list_url=f"{arch.base}/archive-bucket",
    )


def stored(s: Settings) -> pl.DataFrame:
    return scan_klines(s.root, "usdt_spot", "1m", [SYM]).collect().sort("candle_begin_time")


async def test_ingest_rerun_and_reupload(tmp_path: Path) -> None:
    async with FakeArchive(max_keys=3) as arch:  # tiny pages: the listing is paginated
        fill(arch)
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB + 3 * DAY_MS)
        assert (rep.files_planned, rep.files_downloaded, rep.rows) == (4, 4, 31 * 1440 + 3 * 1440)
        df = stored(s)
        assert df.height == 34 * 1440
        assert df["candle_begin_time"].dt.epoch("ms").to_list() == list(range(JAN, FEB + 3 * DAY_MS, MIN_MS))
        assert df["source"].unique().to_list() == ["archive"]
        man = read_manifest(LakeFS(s.root), "spot", "1m", SYM)
        assert set(man) == {f_jan().name, *(f_daily(d).name for d in (1, 2, 3))}
        assert not list(download_dir(s).rglob("*.zip")), "zips are deleted after ingest"

        # A re-run has nothing to do and asks for no file.
        before = dict(arch.gets)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB + 3 * DAY_MS)
        assert rep.files_planned == 0 and arch.gets == before

        # Binance re-uploads Feb 2 with corrected prices: detected from the listing and re-ingested.
        fixed = "".join(row(t, price=7.0) for t in day_opens(FEB + DAY_MS)).encode()
        arch.put(f_daily(2).key, zip_bytes(fixed), modified="2024-06-09T00:00:00.000Z")
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB + 3 * DAY_MS, keep_zips=True)
        assert (rep.files_planned, rep.files_reuploaded) == (1, 1)
        df = stored(s)
        day2 = df.filter(
            pl.col("candle_begin_time").dt.day() == 2, pl.col("candle_begin_time").dt.month() == 2
        )
        assert day2["open"].unique().to_list() == [7.0]
        assert df.height == 34 * 1440
        assert (download_dir(s) / f_daily(2).key).exists(), "--keep-zips keeps the verified zip"


async def test_reupload_that_removes_or_moves_rows_replaces_the_old_ones(tmp_path: Path) -> None:
    # Feb 2 first published with a spurious off-grid candle (opening 14.789 s into 09:28, next to
    # the 09:28 one); the re-upload drops it and also drops the 10:00 candle. The upsert kept both old
    # rows next to the new file's. A REST row inside the day (an earlier repair) stays.
    day2 = FEB + DAY_MS
    odd = day2 + 9 * 3_600_000 + 28 * MIN_MS + 14_789
    gone = day2 + 10 * 3_600_000
    async with FakeArchive() as arch:
        arch.put(f_daily(2).key, zip_bytes(csv(sorted([*day_opens(day2), odd]))))
        s = settings(tmp_path, arch)
        await ingest_archive(s, "usdt_spot", "1m", [SYM], day2, day2 + DAY_MS)
        assert stored(s).height == 1441
        from lake.store.klines import write_klines

        rest_row = stored(s).filter(pl.col("candle_begin_time").dt.epoch("ms") == gone)
        write_klines(
            s.root, "usdt_spot", "1m", SYM, rest_row.drop("symbol").with_columns(source=pl.lit("rest"))
        )
        kept = [t for t in day_opens(day2) if t != gone]
        arch.put(f_daily(2).key, zip_bytes(csv(kept)), modified="2024-06-09T00:00:00.000Z")
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], day2, day2 + DAY_MS)
        assert rep.files_reuploaded == 1
        df = stored(s)
        assert df["candle_begin_time"].dt.epoch("ms").to_list() == day_opens(day2)  # no off-grid row
        assert df.filter(pl.col("source") == "rest")["candle_begin_time"].dt.epoch("ms").to_list() == [gone]
        # and the same re-upload once more changes nothing
        again = await ingest_archive(s, "usdt_spot", "1m", [SYM], day2, day2 + DAY_MS)
        assert again.files_planned == 0 and stored(s).equals(df)


async def test_checksum_mismatch_heals_on_retry(tmp_path: Path) -> None:
    async with FakeArchive() as arch:
        fill(arch)
        arch.bad_checksum[f_daily(1).key] = 1  # wrong until the zip was fetched once
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        assert rep.checksum_retries == 1 and rep.files_downloaded == 3
        assert stored(s).height == 3 * 1440


async def test_persistent_mismatch_and_corrupt_zip_fail_loudly_and_write_nothing(tmp_path: Path) -> None:
    async with FakeArchive() as arch:
        fill(arch)
        arch.bad_checksum[f_daily(1).key] = None
        arch.put(f_daily(3).key, zip_bytes(csv(day_opens(FEB + 2 * DAY_MS)))[:-40])  # truncated zip
        s = settings(tmp_path, arch)
        with pytest.raises(DataError) as err:
            await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        msg = str(err.value)
        assert f_daily(1).key in msg and "SHA-256" in msg
        assert f_daily(3).key in msg and "corrupt" in msg
        assert msg.count(f_daily(1).key) == msg.count(f_daily(3).key) == 1  # named once each
        assert arch.gets[f_daily(1).key] == 3  # bounded retries
        days = stored(s)["candle_begin_time"].dt.day().unique().to_list()
        assert days == [2], "only the good file was ingested"
        man = read_manifest(LakeFS(s.root), "spot", "1m", SYM)
        assert set(man) == {f_daily(2).name}
        assert not [p for p in download_dir(s).rglob("*") if p.is_file()], "no zip or partial left behind"


async def test_a_file_with_bad_values_fails_alone_within_its_group(tmp_path: Path) -> None:
    """Daily files of a month are written together; a file whose values the store refuses (a NaN
    price parses but is not a candle) fails alone and the rest of its group is ingested."""
    async with FakeArchive() as arch:
        fill(arch)
        bad = "".join(
            row(t, price=float("nan")) if t == FEB + DAY_MS else row(t) for t in day_opens(FEB + DAY_MS)
        )
        arch.put(f_daily(2).key, zip_bytes(bad.encode()))
        s = settings(tmp_path, arch)
        with pytest.raises(DataError) as err:
            await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        assert f_daily(2).key in str(err.value) and f_daily(1).key not in str(err.value)
        assert stored(s)["candle_begin_time"].dt.day().unique().sort().to_list() == [1, 3]
        assert set(read_manifest(LakeFS(s.root), "spot", "1m", SYM)) == {f_daily(1).name, f_daily(3).name}


def test_groups_interleave_symbols_and_batch_daily_files_by_month() -> None:
    from lake.binance.intervals import parse_interval
    from lake.ingest.archive.listing import ListEntry
    from lake.ingest.archive.plan import PlannedFile
    from lake.ingest.archive.runner import _groups, _Job

    entry = ListEntry("x", "", "", 0)

    def job(sym: str, freq: str, day: dt.date) -> _Job:
        return _Job(PlannedFile(ArchiveFile("spot", freq, sym, "1m", day), entry, None), "usdt_spot")

    jobs = [job("AAAUSDT", MONTHLY, dt.date(2024, 1, 1))]
    jobs += [job("AAAUSDT", DAILY, dt.date(2024, 2, d)) for d in range(1, 30)]
    jobs += [job("AAAUSDT", DAILY, dt.date(2024, 3, d)) for d in (1, 2)]
    jobs += [job("AAAUSDT", DAILY, dt.date(2024, 1, d)) for d in (20, 5)]  # re-uploads within the month
    jobs += [job("BBBUSDT", DAILY, dt.date(2024, 3, d)) for d in (3, 1, 2)]
    out = _groups(jobs, parse_interval("1m"))
    names = [[j.planned.file.label for j in g] for g in out]
    syms = [g[0].planned.file.symbol for g in out]
    assert syms == ["AAAUSDT", "BBBUSDT", "AAAUSDT", "AAAUSDT"]  # the first group of each symbol first
    # A monthly file first, then the daily files of its month, in one group (the daily rows win).
    assert names[0] == ["2024-01", "2024-01-05", "2024-01-20"]
    assert names[1] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    assert names[2] == [f"2024-02-{d:02d}" for d in range(1, 30)]  # a month of daily 1m files at once
    assert names[3] == ["2024-03-01", "2024-03-02"]
    assert sorted(j.planned.file.key for g in out for j in g) == sorted(j.planned.file.key for j in jobs)
    # With a monthly file its month's daily files join it even past the group size (1 file for 1s).
    one_s = [job("AAAUSDT", MONTHLY, dt.date(2024, 2, 1))] + [
        job("AAAUSDT", DAILY, dt.date(2024, 2, d)) for d in (1, 2)
    ]
    assert [len(g) for g in _groups(one_s, parse_interval("1s"))] == [3]
    # 1s: a day is 86,400 candles, so one daily file per group
    assert all(
        len(g) == 1 for g in _groups([job("AAAUSDT", DAILY, dt.date(2024, 2, 1))], parse_interval("1s"))
    )


async def test_irregular_2018_file_and_an_empty_file_are_ingested_and_recorded(tmp_path: Path) -> None:
    """BTCUSDT-1h-2018-02 with opens off the hour grid (#77) is stored as published, and a futures
    file holding only its header (CRLF) is recorded with 0 rows; a re-run fetches neither again."""
    from tests.ingest.test_archive_real_format import IRREGULAR_1H, UM_HEADER

    feb18 = ArchiveFile("spot", MONTHLY, SYM, "1h", dt.date(2018, 2, 1))
    empty = ArchiveFile("um", DAILY, SYM, "1m", dt.date(2024, 2, 1))
    async with FakeArchive() as arch:
        arch.put(feb18.key, zip_bytes(IRREGULAR_1H, "BTCUSDT-1h-2018-02.csv"))
        arch.put(empty.key, zip_bytes(UM_HEADER + b"\r\n", "BTCUSDT-1m-2024-02-01.csv"))
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1h", [SYM], feb18.start_ms, feb18.end_ms)
        assert (rep.files_downloaded, rep.rows, rep.failed) == (1, 5, [])
        got = scan_klines(s.root, "usdt_spot", "1h", [SYM]).collect().sort("candle_begin_time")
        assert got["candle_begin_time"].dt.epoch("ms").to_list() == [
            1518044400000,
            1518048000000,
            1518168494789,
            1518319694789,
            1518321600000,
        ]
        assert got.select("open", "high", "low", "close", "volume").row(2) == (
            8260.0,
            8480.0,
            8050.0,
            8350.01,
            1800.38,
        )
        assert read_manifest(LakeFS(s.root), "spot", "1h", SYM)[feb18.name].rows == 5

        rep = await ingest_archive(s, "usdt_perp", "1m", [SYM], FEB, FEB + DAY_MS)
        assert (rep.files_downloaded, rep.rows, rep.failed) == (1, 0, [])
        assert read_manifest(LakeFS(s.root), "um", "1m", SYM)[empty.name].rows == 0

        before = dict(arch.gets)
        assert (
            await ingest_archive(s, "usdt_spot", "1h", [SYM], feb18.start_ms, feb18.end_ms)
        ).files_planned == 0
        assert (await ingest_archive(s, "usdt_perp", "1m", [SYM], FEB, FEB + DAY_MS)).files_planned == 0
        assert arch.gets == before


async def test_reuploaded_daily_file_wins_over_its_reuploaded_monthly_file(tmp_path: Path) -> None:
    """Binance re-uploads a month and one of its days; the monthly file can still carry the old rows
    for that day (binance-public-data #475: monthly spot files disagreeing with daily ones and the API,
    the daily ones right). The re-uploaded daily file is fetched for exactly that reason, so its rows
    must be the ones the lake keeps, whatever order the two downloads finish in."""
    day5 = ArchiveFile("spot", DAILY, SYM, "1m", dt.date(2024, 1, 5))
    async with FakeArchive() as arch:
        arch.put(f_jan().key, zip_bytes(csv(list(range(JAN, FEB, MIN_MS)))))
        arch.put(day5.key, zip_bytes(csv(day_opens(day5.start_ms))))
        s = settings(tmp_path, arch)
        await ingest_archive(s, "usdt_spot", "1m", [SYM], day5.start_ms, day5.end_ms)  # the daily file
        await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)  # the monthly file for the rest
        assert set(read_manifest(LakeFS(s.root), "spot", "1m", SYM)) == {f_jan().name, day5.name}

        stale = "".join(
            row(t, price=1.0) if day5.start_ms <= t < day5.end_ms else row(t) for t in range(JAN, FEB, MIN_MS)
        )
        arch.put(f_jan().key, zip_bytes(stale.encode()), modified="2024-06-09T00:00:00.000Z")
        fixed = "".join(row(t, price=7.0) for t in day_opens(day5.start_ms))
        arch.put(day5.key, zip_bytes(fixed.encode()), modified="2024-06-09T00:00:00.000Z")
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert (rep.files_planned, rep.files_reuploaded) == (2, 2)
        df = stored(s)
        assert df.height == 31 * 1440
        day = df.filter(pl.col("candle_begin_time").dt.day() == 5)
        assert day["open"].unique().to_list() == [7.0]
        assert (
            df.filter(pl.col("candle_begin_time").dt.day() == 4)["open"][0]
            == 100.0 + (day5.start_ms - DAY_MS) // MIN_MS % 97
        )


async def test_days_missing_from_a_truncated_monthly_file_come_from_daily_files(tmp_path: Path) -> None:
    """binance-public-data #320: a 2024-01 monthly file with only Jan 1-10. The same run takes the
    other days from their daily files instead of trusting the verified monthly file for them."""
    async with FakeArchive() as arch:
        arch.put(f_jan().key, zip_bytes(csv(list(range(JAN, JAN + 10 * DAY_MS, MIN_MS)))))
        for d in range(31):
            f = ArchiveFile("spot", DAILY, SYM, "1m", dt.date(2024, 1, 1 + d))
            arch.put(f.key, zip_bytes(csv(day_opens(JAN + d * DAY_MS))))
        s = settings(tmp_path, arch)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert (rep.files_downloaded, rep.rows) == (1 + 21, 31 * 1440)
        assert stored(s)["candle_begin_time"].dt.epoch("ms").to_list() == list(range(JAN, FEB, MIN_MS))
        assert (await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)).files_planned == 0
        # Binance re-uploads the (still truncated) monthly file with corrected prices: its rows
        # replace the archive rows of Jan 1-10 only; the days the daily files filled stay.
        fixed = "".join(row(t, price=3.0) for t in range(JAN, JAN + 10 * DAY_MS, MIN_MS))
        arch.put(f_jan().key, zip_bytes(fixed.encode()), modified="2024-06-09T00:00:00.000Z")
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert (rep.files_planned, rep.files_reuploaded) == (1, 1)
        df = stored(s)
        assert df["candle_begin_time"].dt.epoch("ms").to_list() == list(range(JAN, FEB, MIN_MS))
        first10 = df["candle_begin_time"].dt.epoch("ms") < JAN + 10 * DAY_MS
        assert df.filter(first10)["open"].unique().to_list() == [3.0]
        assert df.filter(~first10)["open"].to_list() == [
            100.0 + (t // MIN_MS) % 97 for t in range(JAN + 10 * DAY_MS, FEB, MIN_MS)
        ]


async def test_rows_whose_record_a_crash_lost_are_fetched_again_so_reuploads_are_seen(tmp_path: Path) -> None:
    # A kill between writing a file's rows and recording it in the manifest: the day is complete, so
    # the plan skipped it for good, and a later re-upload of that file was never noticed (the lake
    # kept the old values). Now archive rows without a record get their file fetched again once.
    from lake.ingest.archive.manifest import manifest_path
    from lake.store.meta import read_json, write_json

    async with FakeArchive() as arch:
        fill(arch)
        s = settings(tmp_path, arch)
        await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        lfs = LakeFS(s.root)
        rel = manifest_path("spot", "1m", SYM)
        doc = read_json(lfs, rel)
        assert isinstance(doc, dict)
        del doc["files"][f_daily(2).name]  # the crash
        write_json(lfs, rel, doc)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        assert (rep.files_planned, rep.files_downloaded, rep.units_skipped) == (1, 1, 2)
        assert f_daily(2).name in read_manifest(lfs, "spot", "1m", SYM)
        assert stored(s).height == 3 * 1440
        fixed = "".join(row(t, price=7.0) for t in day_opens(FEB + DAY_MS)).encode()
        arch.put(f_daily(2).key, zip_bytes(fixed), modified="2024-06-09T00:00:00.000Z")
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        assert rep.files_reuploaded == 1
        day2 = stored(s).filter(pl.col("candle_begin_time").dt.day() == 2)
        assert day2["open"].unique().to_list() == [7.0]
        # and once recorded, nothing is fetched again
        assert (await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)).files_planned == 0


async def test_a_damaged_manifest_is_rebuilt_not_a_traceback(tmp_path: Path) -> None:
    from lake.ingest.archive.manifest import manifest_path

    async with FakeArchive() as arch:
        fill(arch)
        s = settings(tmp_path, arch)
        lfs = LakeFS(s.root)
        await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        (Path(s.root) / manifest_path("spot", "1m", SYM)).write_text("")  # a crash of another tool
        assert read_manifest(lfs, "spot", "1m", SYM) == {}
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], FEB, FEB + 3 * DAY_MS)
        assert rep.files_downloaded == 3  # its archive rows are unrecorded: fetched once more
        assert set(read_manifest(lfs, "spot", "1m", SYM)) == {f_daily(d).name for d in (1, 2, 3)}
        assert stored(s).height == 3 * 1440
