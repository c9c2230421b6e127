"""Planning: monthly files for whole months, daily for the rest, only what the lake lacks; re-uploads."""

from __future__ import annotations

import datetime as dt

import pytest

from lake.binance.intervals import parse_interval
from lake.errors import ValidationError
from lake.ingest.archive.listing import ListEntry
from lake.ingest.archive.plan import (
    DAILY,
    MONTHLY,
    ArchiveFile,
    FileRecord,
    UnitState,
    file_from_name,
    plan_series,
    units,
)

DAY = 86_400_000


def ms(y: int, m: int, d: int) -> int:
    return int(dt.datetime(y, m, d, tzinfo=dt.UTC).timestamp() * 1000)


def listed(files: list[ArchiveFile], version: str = "v1") -> dict[str, ListEntry]:
    out = {}
    for f in files:
        out[f.name] = ListEntry(f.key, "2024-05-01T00:00:00Z", version, 1000)
        out[f.name + ".CHECKSUM"] = ListEntry(f.checksum_key, "2024-05-01T00:00:00Z", "c" + version, 90)
    return out


def daily(sym: str, start: dt.date, days: int, iv: str = "1m") -> list[ArchiveFile]:
    return [ArchiveFile("spot", DAILY, sym, iv, start + dt.timedelta(days=i)) for i in range(days)]


def monthly(sym: str, months: list[tuple[int, int]], iv: str = "1m") -> list[ArchiveFile]:
    return [ArchiveFile("spot", MONTHLY, sym, iv, dt.date(y, m, 1)) for y, m in months]


def test_file_names_and_keys() -> None:
    f = ArchiveFile("um", MONTHLY, "BTCUSDT", "1M", dt.date(2024, 3, 1))
    assert f.name == "BTCUSDT-1mo-2024-03.zip"
    assert f.key == "data/futures/um/monthly/klines/BTCUSDT/1mo/BTCUSDT-1mo-2024-03.zip"
    assert f.checksum_key.endswith(".zip.CHECKSUM")
    assert (f.start_ms, f.end_ms) == (ms(2024, 3, 1), ms(2024, 4, 1))
    d = ArchiveFile("cm", DAILY, "BTCUSD_PERP", "5m", dt.date(2024, 2, 29))
    assert d.key == "data/futures/cm/daily/klines/BTCUSD_PERP/5m/BTCUSD_PERP-5m-2024-02-29.zip"
    assert file_from_name("um", MONTHLY, "1M", f.name) == f
    assert file_from_name("cm", DAILY, "5m", d.name) == d
    assert file_from_name("um", DAILY, "1M", f.name) is None
    assert file_from_name("um", MONTHLY, "1m", f.name) is None  # 1mo is not 1m
    assert file_from_name("spot", DAILY, "1m", "../x-1m-2024-01-01.zip") is None
    with pytest.raises(ValidationError):
        ArchiveFile("spot", DAILY, "BTCUSDT", "1w", dt.date(2024, 1, 1))  # no daily 1w files
    with pytest.raises(ValidationError):
        ArchiveFile("spot", DAILY, "../BTC", "1m", dt.date(2024, 1, 1))


def test_empty_lake_takes_monthly_for_whole_months_and_daily_for_the_rest() -> None:
    files = monthly("BTCUSDT", [(2024, 1), (2024, 2)]) + daily("BTCUSDT", dt.date(2024, 1, 1), 31 + 29 + 10)
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 3, 12), listed(files), {}, {})
    names = [p.file.name for p in plan.fetch]
    assert names[:2] == ["BTCUSDT-1m-2024-01.zip", "BTCUSDT-1m-2024-02.zip"]
    assert names[2:] == [f"BTCUSDT-1m-2024-03-{d:02d}.zip" for d in range(1, 11)]
    # 03-11 is in the window but the archive has no file yet: left for REST.
    assert plan.lacking == [(ms(2024, 3, 11), ms(2024, 3, 12))]
    assert all(p.reason == "new" for p in plan.fetch)


def test_complete_days_in_the_lake_are_skipped_and_few_days_use_daily_files() -> None:
    files = monthly("BTCUSDT", [(2024, 1)]) + daily("BTCUSDT", dt.date(2024, 1, 1), 31)
    lake = {ms(2024, 1, d): UnitState(1440, 0) for d in range(1, 32) if d not in (5, 6)}
    lake[ms(2024, 1, 7)] = UnitState(1380, 60)  # a recorded maintenance hour counts as held
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 2, 1), listed(files), lake, {})
    assert [p.file.name for p in plan.fetch] == ["BTCUSDT-1m-2024-01-05.zip", "BTCUSDT-1m-2024-01-06.zip"]
    assert plan.skipped == 29


def test_missing_daily_file_pulls_the_monthly_one() -> None:
    files = monthly("BTCUSDT", [(2024, 1)]) + [
        f for f in daily("BTCUSDT", dt.date(2024, 1, 1), 31) if f.period != dt.date(2024, 1, 9)
    ]
    lake = {ms(2024, 1, d): UnitState(1440, 0) for d in range(1, 32) if d != 9}
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 2, 1), listed(files), lake, {})
    assert [p.file.name for p in plan.fetch] == ["BTCUSDT-1m-2024-01.zip"]
    assert plan.lacking == []


def test_day_missing_everywhere_is_lacking() -> None:
    files = [f for f in daily("BTCUSDT", dt.date(2024, 4, 1), 5) if f.period != dt.date(2024, 4, 3)]
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 4, 1), ms(2024, 4, 6), listed(files), {}, {})
    assert len(plan.fetch) == 4
    assert plan.lacking == [(ms(2024, 4, 3), ms(2024, 4, 4))]


def test_verified_files_are_skipped_and_reuploads_are_refetched() -> None:
    files = daily("BTCUSDT", dt.date(2024, 4, 1), 3)
    # Day 2 had a maintenance hole: the lake is short of candles but the file was verified.
    lake = {ms(2024, 4, 1): UnitState(1440, 0), ms(2024, 4, 2): UnitState(1380, 0)}
    manifest = {
        f.name: FileRecord(
            "ab" * 32,
            listed([f])[f.name].version,
            listed([f])[f.name + ".CHECKSUM"].version,
            1440,
            f.start_ms,
            f.end_ms,
        )
        for f in files[:2]
    }
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 4, 1), ms(2024, 4, 4), listed(files), lake, manifest)
    assert [p.file.name for p in plan.fetch] == ["BTCUSDT-1m-2024-04-03.zip"]
    # Binance re-uploads day 1: a new ETag in the listing.
    relisted = listed(files)
    relisted.update(listed(files[:1], version="v2"))
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 4, 1), ms(2024, 4, 4), relisted, lake, manifest)
    assert [(p.file.name, p.reason) for p in plan.fetch] == [
        ("BTCUSDT-1m-2024-04-01.zip", "reuploaded"),
        ("BTCUSDT-1m-2024-04-03.zip", "new"),
    ]


def test_reuploaded_monthly_file_is_refetched_even_if_the_lake_is_complete() -> None:
    files = monthly("BTCUSDT", [(2024, 1)])
    f = files[0]
    lake = {ms(2024, 1, d): UnitState(1440, 0) for d in range(1, 32)}
    rec = FileRecord("ab" * 32, "old|x|1", "", 44640, f.start_ms, f.end_ms)
    plan = plan_series(
        "spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 2, 1), listed(files), lake, {f.name: rec}
    )
    assert [(p.file.name, p.reason) for p in plan.fetch] == [(f.name, "reuploaded")]


@pytest.mark.parametrize("iv", ["3d", "1w", "1M"])
def test_long_intervals_are_monthly_only(iv: str) -> None:
    files = monthly("BTCUSDT", [(2024, 1), (2024, 2)], iv)
    assert units(parse_interval(iv), ms(2024, 1, 1), ms(2024, 3, 5)) == [
        (ms(2024, 1, 1), ms(2024, 2, 1)),
        (ms(2024, 2, 1), ms(2024, 3, 1)),
        (ms(2024, 3, 1), ms(2024, 4, 1)),
    ]
    plan = plan_series("spot", "BTCUSDT", iv, ms(2024, 1, 1), ms(2024, 3, 5), listed(files), {}, {})
    assert [p.file.name for p in plan.fetch] == [f.name for f in files]
    assert plan.lacking == [(ms(2024, 3, 1), ms(2024, 4, 1))]


def test_days_a_verified_monthly_file_left_empty_are_taken_from_daily_files() -> None:
    """binance-public-data #320: the 2024-01 monthly files of some symbols held only Jan 1-10. The
    lake then lacks the 11th-31st although the monthly file is verified; each such day with a daily
    file is fetched from it (the monthly file is not fetched again), a day without one is left."""
    days = [f for f in daily("BTCUSDT", dt.date(2024, 1, 1), 31) if f.period != dt.date(2024, 1, 20)]
    files = monthly("BTCUSDT", [(2024, 1)]) + days
    m = files[0]
    lst = listed(files)
    manifest = {
        m.name: FileRecord(
            "ab" * 32, lst[m.name].version, lst[m.name + ".CHECKSUM"].version, 14400, m.start_ms, m.end_ms
        )
    }
    lake = {ms(2024, 1, d): UnitState(1440 if d <= 10 else 0, 0) for d in range(1, 32)}
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 2, 1), lst, lake, manifest)
    assert [p.file.name for p in plan.fetch] == [
        f"BTCUSDT-1m-2024-01-{d:02d}.zip" for d in range(11, 32) if d != 20
    ]
    assert plan.skipped == 11 and plan.lacking == []
    # Once those days are in, nothing is fetched again.
    full = {u: UnitState(0 if u == ms(2024, 1, 20) else 1440, 0) for u in lake}
    plan = plan_series("spot", "BTCUSDT", "1m", ms(2024, 1, 1), ms(2024, 2, 1), lst, full, manifest)
    assert plan.fetch == [] and plan.skipped == 31


def test_delisted_candidates_by_name_include_settled_perpetuals() -> None:
    """The archive keeps the history of a settled perpetual whose name a new listing reused under
    <name>SETTLED (BNXUSDTSETTLED; twice reused: AERGOUSDTSETTLEDSETTLED). --include-delisted
    takes it as a series of its own; exchangeInfo's own entries are classified by exchangeInfo."""
    from lake.ingest.archive.symbols import delisted_candidates, name_matches_trade_type

    listed = [
        "BNXUSDTSETTLED",
        "AERGOUSDTSETTLEDSETTLED",
        "BTCUSDT",
        "USDTSETTLED",
        "SETTLED",
        "BTCUSDCSETTLED",
    ]
    trading = {
        "BTCUSDT": {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USDT",
        }
    }
    assert delisted_candidates(listed, "usdt_perp", trading) == ["AERGOUSDTSETTLEDSETTLED", "BNXUSDTSETTLED"]
    assert delisted_candidates(listed, "usdc_perp", trading) == ["BTCUSDCSETTLED"]
    assert not name_matches_trade_type("BNXUSDTSETTLED", "usdt_spot")
    assert not name_matches_trade_type("BTCUSDT_250328SETTLED", "usdt_perp")
