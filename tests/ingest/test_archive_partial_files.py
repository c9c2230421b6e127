"""Archive files that hold fewer candles than Binance traded, against the simulator: a daily file cut
before its day's end (binance-public-data #413, #436, #367), a 3d/1w monthly file without its last
candle and a 1mo file without its only one are reported missing by `--source archive` (exit 5) and
filled by `auto`; maintenance and
delistings are not reported; a re-uploaded monthly file that lost days leaves their rows in the lake
and the run says which."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import polars as pl
import pytest

from lake.binance.intervals import parse_interval
from lake.errors import IncompleteError
from lake.sim.archive import FileEdit
from lake.sim.config import SimConfig
from lake.sim.server import SimServer
from tests.ingest.test_archive_gaps_and_precedence import (
    COLS,
    TT,
    config,
    lake_cli,
    ms,
    run,
    settings,
    stored,
    truth,
    utc,
)
from tests.ingest.test_archive_month_end_and_audit import assert_lake

HOUR = 3_600_000
MAR1, MAR8 = utc(2024, 3, 1), utc(2024, 3, 8)


def line(symbol: str, a: int, b: int, iv: str = "5m", why: str = "not in the archive") -> str:
    def iso(t: int) -> str:
        return dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return f"{TT} {iv} {symbol} [{iso(a)}, {iso(b)}): {why}"


def cut_from(frame: pl.DataFrame, symbol: str, a: int, b: int) -> pl.DataFrame:
    t = pl.col("candle_begin_time").dt.epoch("ms")
    return frame.filter(~((pl.col("symbol") == symbol) & (t >= a) & (t < b)))


# --------------------------------------------------------------------------------------------------
# 1. A daily file cut before its day's end
# --------------------------------------------------------------------------------------------------


async def test_a_truncated_daily_file_fails_an_archive_run_naming_the_hours_it_lost(tmp_path: Path) -> None:
    """BTCUSDT's file of Mar 5 holds only 00:00-14:00 (#413: "only about 7 hours instead of full
    day"), and BTCUSDT traded on: the file of Mar 6 starts at 00:00. `--source archive` used to
    succeed without a word; it now fails (exit 5) naming 14:00-24:00, on every run until the
    archive has them, with everything else in the lake. `auto` fills them over REST, and the next
    archive run succeeds."""
    cut = ms(2024, 3, 5) + 14 * HOUR
    async with SimServer(config()) as sim:
        sim.archive.edit_file("BTCUSDT-5m-2024-03-05.zip", FileEdit(drop=((cut, ms(2024, 3, 6)),)))
        s = settings(sim, tmp_path / "lake")
        syms = ["BTCUSDT", "ETHUSDT"]
        want = truth(sim, syms, MAR1, MAR8)
        want_missing = [line("BTCUSDT", cut, ms(2024, 3, 6))]
        with pytest.raises(IncompleteError) as err:
            await run(s, MAR1, MAR8, syms, source="archive")
        assert err.value.missing == want_missing
        assert_lake(s, syms, cut_from(want, "BTCUSDT", cut, ms(2024, 3, 6)))
        with pytest.raises(IncompleteError) as err:
            await run(s, MAR1, MAR8, syms, source="archive")
        assert err.value.missing == want_missing
        assert err.value.result.archive[0].files_planned == 0  # type: ignore[attr-defined]

        res = await run(s, MAR1, MAR8, syms, source="auto")
        assert res.rest is not None and res.rest.missing == []
        assert_lake(s, syms, want)
        got = stored(s, syms)
        tail = got.filter(
            (pl.col("symbol") == "BTCUSDT") & (pl.col("candle_begin_time").dt.epoch("ms") >= cut)
        )
        assert tail.filter(pl.col("candle_begin_time") < utc(2024, 3, 6))["source"].unique().to_list() == [
            "rest"
        ]
        res = await run(s, MAR1, MAR8, syms, source="archive")
        assert res.archive[0].missing == [] and res.archive[0].files_planned == 0


async def test_the_latest_day_cut_for_every_symbol_exits_5_naming_each(tmp_path: Path) -> None:
    """#413 again: the files of one day were cut at 07:35 for every symbol, and that day is the
    latest the archive has published (Mar 9; nothing after it to show the symbols traded on). Other
    symbols missing the same hours is no excuse (a maintenance window is not at the end of a day):
    the CLI exits 5 with one `missing:` line per symbol."""
    cut = ms(2024, 3, 9) + 7 * HOUR + 35 * 60_000
    syms = ["BTCUSDT", "ETHUSDT"]
    async with SimServer(config()) as sim:
        for sym in syms:
            sim.archive.edit_file(f"{sym}-5m-2024-03-09.zip", FileEdit(drop=((cut, ms(2024, 3, 10)),)))
        cmd = [
            sys.executable, "-m", "lake.cli", "backfill", "--source", "archive", "--type", TT, "--interval", "5m",
            "--start", "2024-03-08", "--symbols", ",".join(syms), "--sim-url", sim.base_url,
            "--root", str(tmp_path / "lake"),
        ]  # fmt: skip
        code, out, err = await lake_cli(*cmd)
        lines = err.decode().splitlines()
        assert code == 5, lines
        assert [x for x in lines if x.startswith("missing:")] == [
            f"missing: {line(sym, cut, ms(2024, 3, 10))}" for sym in syms
        ]
        (summary,) = out.decode().splitlines()
        assert summary.endswith(
            "; 2 day(s) not in the archive; 2 range(s) cut short in archive files, 2 range(s) of them missing"
        ), summary  # (the 10th, not published yet, is not missing)
        s = settings(sim, tmp_path / "lake")
        want = truth(sim, syms, utc(2024, 3, 8), utc(2024, 3, 10))
        for sym in syms:
            want = cut_from(want, sym, cut, ms(2024, 3, 10))
        assert_lake(s, syms, want)


async def test_maintenance_and_a_delisting_day_are_not_reported(tmp_path: Path) -> None:
    """What a cut file is told from, for one symbol alone (no other symbol to compare with): a
    maintenance window across midnight (Mar 6 22:00 to Mar 7 02:00: the file of the 6th stops at
    21:55, that of the 7th starts at 02:00), one inside a day (Mar 3 06:00-08:00), and the day
    OLDCOINUSDT was delisted (Mar 4 05:00, no later file). The archive run succeeds."""
    maint = (
        ("spot", "2024-03-06T22:00:00", "2024-03-07T02:00:00"),
        ("spot", "2024-03-03T06:00:00", "2024-03-03T08:00:00"),
    )
    cfg = SimConfig(**{**config().__dict__, "maintenance": maint})
    async with SimServer(cfg) as sim:
        sim.control_faults({
            "list": [{"market": "spot", "symbol": "OLDCOINUSDT", "at": "2023-12-25T00:00:00"}],
            "delist": [{"market": "spot", "symbol": "OLDCOINUSDT", "at": "2024-03-04T05:00:00"}],
        })  # fmt: skip
        s = settings(sim, tmp_path / "lake")
        for syms in (["BTCUSDT"], ["OLDCOINUSDT"]):
            res = await run(s, MAR1, MAR8, syms, source="archive")
            assert res.archive[0].missing == []
        assert res.archive[0].lacking["OLDCOINUSDT"] == [
            (ms(2024, 3, d), ms(2024, 3, d + 1)) for d in range(5, 8)
        ]
        assert_lake(s, ["BTCUSDT", "OLDCOINUSDT"], truth(sim, ["BTCUSDT", "OLDCOINUSDT"], MAR1, MAR8))


# --------------------------------------------------------------------------------------------------
# 2. 3d, 1w and 1mo: monthly files only, candles across month ends
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("iv", ["1w", "3d", "1M"])
async def test_a_monthly_file_without_its_last_candle_is_reported_and_filled_by_auto(
    tmp_path: Path, iv: str
) -> None:
    """January's 1w file lacks the candle of Monday Jan 29 (it closes on Feb 4: the archive files a
    candle under the month it opens in, as the simulator does and the parser requires), the 3d file
    that of Jan 30 (open Jan 30, close Feb 1), the 1mo file its only candle. An archive run over
    January-February used to succeed for 1w and 3d (the month held candles, the plan took it as
    covered). It now fails naming the range; `auto` fills it over REST."""
    interval = parse_interval(iv)
    feb = ms(2024, 2, 1)
    last = interval.floor(feb - 1)
    async with SimServer(config()) as sim:
        sim.archive.edit_file(f"BTCUSDT-{interval.archive_name}-2024-01.zip", FileEdit(drop=((last, feb),)))
        s = settings(sim, tmp_path / "lake")
        syms = ["BTCUSDT", "ETHUSDT"]
        want = truth(sim, syms, utc(2024, 1, 1), utc(2024, 3, 1), iv=iv)
        for attempt in range(2):  # the second run fetches nothing and still says so
            with pytest.raises(IncompleteError) as err:
                await run(s, utc(2024, 1, 1), utc(2024, 3, 1), syms, source="archive", iv=iv)
            assert err.value.missing == [line("BTCUSDT", last, feb, iv=iv)]
            assert err.value.result.archive[0].files_planned == (4 if attempt == 0 else 0)  # type: ignore[attr-defined]
            got = stored(s, syms, iv=iv).select(COLS)
            assert got.equals(cut_from(want, "BTCUSDT", last, feb).select(COLS))

        res = await run(s, utc(2024, 1, 1), utc(2024, 3, 1), syms, source="auto", iv=iv)
        assert res.rest is not None and res.rest.missing == []
        assert stored(s, syms, iv=iv).select(COLS).equals(want.select(COLS))


# --------------------------------------------------------------------------------------------------
# 3. A re-uploaded monthly file that lost days
# --------------------------------------------------------------------------------------------------


async def test_a_reupload_without_some_days_keeps_their_rows_and_says_so(tmp_path: Path) -> None:
    """February was ingested from whole monthly files. Binance re-uploads BTCUSDT's without the
    12th-13th and without Feb 27 10:00 onwards (no daily files for those days), and ETHUSDT's
    without the 12th-13th and the 20th, whose daily files exist (the 20th's cut at 12:00). The rows
    of the lost days stay (a truncated re-upload, #320, is far more common than withdrawn trading
    days: nothing to delete on), and the run that takes the re-upload names the ranges kept (it used
    to say nothing: the lake then differed from the archive silently). ETHUSDT's days come from their
    daily files, which agree, except after 12:00 on the 20th: kept, and named. The run succeeds; the
    next one plans nothing and names nothing."""
    no_daily = [f"BTCUSDT/2024-02-{d}" for d in (12, 13, 27, 28, 29)]
    feb, mar = utc(2024, 2, 1), utc(2024, 3, 1)
    syms = ["BTCUSDT", "ETHUSDT"]
    async with SimServer(config(missing_days=tuple(no_daily))) as sim:
        s = settings(sim, tmp_path / "lake")
        await run(s, feb, mar, syms, source="archive")
        want = truth(sim, syms, feb, mar)
        assert_lake(s, syms, want)
        lost = (ms(2024, 2, 12), ms(2024, 2, 14))
        tail = (ms(2024, 2, 27) + 10 * HOUR, ms(2024, 3, 1))
        eth20 = (ms(2024, 2, 20), ms(2024, 2, 21))
        eth20_cut = (ms(2024, 2, 20) + 12 * HOUR, ms(2024, 2, 21))
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(drop=(lost, tail)))
        sim.archive.edit_file("ETHUSDT-5m-2024-02.zip", FileEdit(drop=(lost, eth20)))
        sim.archive.edit_file("ETHUSDT-5m-2024-02-20.zip", FileEdit(drop=(eth20_cut,)))
        res = await run(s, feb, mar, syms, source="archive")
        (rep,) = res.archive
        # the two re-uploads, and ETHUSDT's daily files of the days its re-upload lost
        assert rep.files_reuploaded == 2 and rep.files_downloaded == 5 and rep.missing == []
        why = "{n} candle(s) kept that the re-uploaded {sym}-5m-2024-02.zip no longer has"
        n = [
            want.height - cut_from(want, sym, *r).height
            for sym, r in (("BTCUSDT", lost), ("BTCUSDT", tail), ("ETHUSDT", eth20_cut))
        ]
        assert n == [2 * 288, 14 * 12 + 2 * 288, 12 * 12]
        assert rep.kept == [
            line("BTCUSDT", *lost, why=why.format(n=n[0], sym="BTCUSDT")),
            line("BTCUSDT", *tail, why=why.format(n=n[1], sym="BTCUSDT")),
            line("ETHUSDT", *eth20_cut, why=why.format(n=n[2], sym="ETHUSDT")),
        ]
        assert rep.to_dict()["kept"] == rep.kept
        assert_lake(s, syms, want)
        again = await run(s, feb, mar, syms, source="archive")
        assert again.archive[0].files_planned == 0 and again.archive[0].kept == []
        assert_lake(s, syms, want)


async def test_the_audit_names_kept_rows_until_a_daily_file_or_a_later_upload_settles_them(
    tmp_path: Path,
) -> None:
    """The kept ranges used to be named only by the run that took the re-upload: `lake audit` then
    showed nothing. They are recorded now, and the audit names the archive candles stored there
    (a warning, exit 0). A daily file published later for such a day is fetched by the next run
    (nothing else is), and the part it has candles for is settled; a corrected re-upload settles
    the rest, and the record goes."""
    from lake.audit import KeptCandles, audit
    from lake.ingest.archive.manifest import kept_path

    no_daily = [f"BTCUSDT/2024-02-{d}" for d in (12, 13, 27, 28, 29)]
    feb, mar = utc(2024, 2, 1), utc(2024, 3, 1)
    syms = ["BTCUSDT", "ETHUSDT"]
    name = "BTCUSDT-5m-2024-02.zip"
    record = tmp_path / "lake" / kept_path("spot", "5m", "BTCUSDT")  # (TT is usdt_spot)

    def kept() -> dict[str, list[KeptCandles]]:
        return {a.symbol: a.kept for a in audit(s.root, TT, "5m", syms)}

    def at(t: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC)

    async with SimServer(config(missing_days=tuple(no_daily))) as sim:
        s = settings(sim, tmp_path / "lake")
        await run(s, feb, mar, syms, source="archive")
        want = truth(sim, syms, feb, mar)
        assert kept() == {"BTCUSDT": [], "ETHUSDT": []} and not record.exists()
        lost = (ms(2024, 2, 12), ms(2024, 2, 14))
        tail = (ms(2024, 2, 27) + 10 * HOUR, ms(2024, 3, 1))
        sim.archive.edit_file(name, FileEdit(drop=(lost, tail)))
        (rep,) = (await run(s, feb, mar, syms, source="archive")).archive
        assert len(rep.kept) == 2 and record.exists()
        both = [
            KeptCandles(at(lost[0]), at(lost[1]), 576, name),
            KeptCandles(at(tail[0]), at(tail[1]), 744, name),
        ]
        assert kept() == {"BTCUSDT": both, "ETHUSDT": []}
        cmd = [sys.executable, "-m", "lake.cli", "audit", "--type", TT, "--interval", "5m", "--root", s.root]
        code, out, err = await lake_cli(*cmd, "--json")
        assert code == 0, err
        doc = {a["symbol"]: a["kept"] for a in json.loads(out)["series"]}
        assert doc["ETHUSDT"] == [] and [(k["candles"], k["file"]) for k in doc["BTCUSDT"]] == [
            (576, name),
            (744, name),
        ]
        code, out, err = await lake_cli(*cmd)
        assert code == 0, err
        assert (
            f"kept {TT} 5m BTCUSDT: 576 archive candles [2024-02-12 00:00, 2024-02-14 00:00) that the "
            f"re-uploaded {name} no longer has" in " ".join(out.decode().split())
        )

        # the 12th's daily file is published, cut at 18:00: it alone is fetched, and settles 00:00-18:00
        sim.faults.missing_days.discard("BTCUSDT/2024-02-12")
        sim.archive.edit_file("BTCUSDT-5m-2024-02-12.zip", FileEdit(drop=((lost[0] + 18 * HOUR, lost[1]),)))
        (rep,) = (await run(s, feb, mar, syms, source="archive")).archive
        assert (rep.files_planned, rep.files_downloaded, rep.kept) == (1, 1, [])
        assert kept()["BTCUSDT"] == [
            KeptCandles(at(lost[0] + 18 * HOUR), at(lost[1]), 72 + 288, name),
            KeptCandles(at(tail[0]), at(tail[1]), 744, name),
        ]
        assert_lake(s, syms, want)  # merged: the candles the daily file lacks stay
        (rep,) = (await run(s, feb, mar, syms, source="archive")).archive
        assert rep.files_planned == 0 and len(kept()["BTCUSDT"]) == 2  # (nothing more to fetch)

        # a corrected re-upload has them all again: nothing kept, no record
        sim.archive.edit_file(name, None)
        (rep,) = (await run(s, feb, mar, syms, source="archive")).archive
        assert rep.files_reuploaded == 1 and rep.kept == []
        assert kept() == {"BTCUSDT": [], "ETHUSDT": []} and not record.exists()
        assert_lake(s, syms, want)


async def test_the_monthly_file_fills_the_hours_a_cut_daily_file_left(tmp_path: Path) -> None:
    """BTCUSDT's daily file of Feb 25 ends at 14:00 (#413) and stays so; February's monthly file has
    the whole day. An archive run over Feb 21-27 takes the daily files and fails (exit 5) naming
    14:00-24:00. The next one used to plan nothing and fail the same way, for ever under
    `--source archive`; it now takes the monthly file, which fills the candles the lake lacks on
    the days daily files own and replaces none it holds (its stale Feb 22 candle does not get in),
    and succeeds. A third run plans nothing."""
    cut = ms(2024, 2, 25) + 14 * HOUR
    stale = ms(2024, 2, 22) + 9 * HOUR
    feb21, feb28 = utc(2024, 2, 21), utc(2024, 2, 28)  # 7 days: daily files (a monthly one from 8)
    syms = ["BTCUSDT"]
    async with SimServer(config()) as sim:
        sim.archive.edit_file("BTCUSDT-5m-2024-02-25.zip", FileEdit(drop=((cut, ms(2024, 2, 26)),)))
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(stale=(stale,)))
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, feb21, feb28, syms, source="archive")
        assert err.value.missing == [line("BTCUSDT", cut, ms(2024, 2, 26))]
        assert err.value.result.archive[0].files_downloaded == 7  # type: ignore[attr-defined]

        (rep,) = (await run(s, feb21, feb28, syms, source="archive")).archive
        assert (rep.files_planned, rep.files_downloaded, rep.missing, rep.cut) == (1, 1, [], {})
        want = truth(sim, syms, utc(2024, 2, 1), utc(2024, 3, 1))  # (a monthly file is stored whole)
        assert_lake(s, syms, want)
        got = stored(s, syms).filter(pl.col("candle_begin_time").dt.epoch("ms") == stale)
        assert got.select(COLS).equals(
            want.filter(pl.col("candle_begin_time").dt.epoch("ms") == stale).select(COLS)
        )

        (rep,) = (await run(s, feb21, feb28, syms, source="archive")).archive
        assert (rep.files_planned, rep.missing) == (0, [])
        assert_lake(s, syms, want)


async def test_a_cut_daily_file_taken_after_the_monthly_one_leaves_its_later_hours(tmp_path: Path) -> None:
    """The other order: February's monthly file is truncated at Feb 25 14:00 (#320) and the daily
    file of the 25th is cut at 10:00. The run takes the monthly file, then the daily files of the
    days it lost, the 25th's included. That daily file replaced the whole day, deleting the monthly
    file's 10:00-14:00; it now replaces the day up to its last candle only, so the lake is what the
    order daily-then-monthly leaves, and only 14:00-24:00 is missing (exit 5)."""
    cut_daily, cut_monthly = ms(2024, 2, 25) + 10 * HOUR, ms(2024, 2, 25) + 14 * HOUR
    syms = ["BTCUSDT"]
    async with SimServer(config()) as sim:
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(drop=((cut_monthly, ms(2024, 3, 1)),)))
        sim.archive.edit_file("BTCUSDT-5m-2024-02-25.zip", FileEdit(drop=((cut_daily, ms(2024, 2, 26)),)))
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, utc(2024, 2, 1), utc(2024, 3, 1), syms, source="archive")
        assert err.value.missing == [line("BTCUSDT", cut_monthly, ms(2024, 2, 26))]
        want = truth(sim, syms, utc(2024, 2, 1), utc(2024, 3, 1))
        assert_lake(s, syms, cut_from(want, "BTCUSDT", cut_monthly, ms(2024, 2, 26)))


async def test_the_audit_calls_the_hours_cut_daily_files_left_missing_as_the_archive_run_does(
    tmp_path: Path,
) -> None:
    """BTCUSDT's and ETHUSDT's daily files of Feb 25 both end at 14:00, and both symbols trade on
    the 26th: an exchange-wide hole, inside days whose daily files were ingested. The archive run
    calls it missing (a cut, exit 5); the audit called it maintenance, vouched for by the daily
    files' whole days. A daily file vouches for its day up to its last candle only, so the audit
    now agrees (missing, exit 1)."""
    from lake.audit import audit

    cut = ms(2024, 2, 25) + 14 * HOUR
    syms = ["BTCUSDT", "ETHUSDT"]
    async with SimServer(config()) as sim:
        for sym in syms:
            sim.archive.edit_file(f"{sym}-5m-2024-02-25.zip", FileEdit(drop=((cut, ms(2024, 2, 26)),)))
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, utc(2024, 2, 21), utc(2024, 2, 28), syms, source="archive")
        assert err.value.missing == [line(sym, cut, ms(2024, 2, 26)) for sym in syms]
        holes = {a.symbol: [(h.start, h.end, h.kind) for h in a.holes] for a in audit(s.root, TT, "5m", syms)}
        assert holes == {sym: [(utc(2024, 2, 25, 14), utc(2024, 2, 26), "missing")] for sym in syms}
