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
        assert arch.gets[f_daily(1).key] == 3  # bounded retries
        days = stored(s)["candle_begin_time"].dt.day().unique().to_list()
        assert days == [2], "only the good file was ingested"
        man = read_manifest(LakeFS(s.root), "spot", "1m", SYM)
        assert set(man) == {f_daily(2).name}
        assert not [p for p in download_dir(s).rglob("*") if p.is_file()], "no zip or partial left behind"
