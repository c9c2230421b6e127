"""Archive ingest against the simulator: days the archive leaves empty are reported (never a silent
success), daily files take precedence over monthly ones whatever the order, and the archive's other
ways of going wrong (partial uploads, missing .CHECKSUMs, listing pages failing, mid-month listings,
COIN-M and 1mo naming, re-uploaded monthly files)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path

import polars as pl
import pytest

from lake.binance.intervals import Interval
from lake.errors import IncompleteError, UpstreamError
from lake.ingest.archive import listing, runner
from lake.ingest.archive.hybrid import HybridResult, archive_backfill
from lake.ingest.rest_client import RestClient
from lake.ingest.universe import ExchangeSnapshot
from lake.schema import KLINE_COLUMNS
from lake.settings import Settings
from lake.sim.archive import FileEdit
from lake.sim.config import FaultConfig, SimConfig
from lake.sim.server import SimServer
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines

NOW = "2024-03-10T12:00:00"
TT, IV = "usdt_spot", "5m"
DAY = 86_400_000
COLS = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]


def utc(y: int, m: int, d: int, h: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, tzinfo=dt.UTC)


def ms(y: int, m: int, d: int) -> int:
    return int(utc(y, m, d).timestamp() * 1000)


def config(**faults: object) -> SimConfig:
    return SimConfig(
        start=NOW,
        speed=0,
        history_days=80,
        n_symbols=3,
        n_symbols_by_market={"spot": 10, "um": 3, "cm": 3},
        faults=FaultConfig(**faults),  # type: ignore[arg-type]
    )


async def lake_cli(*cmd: str) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` (a ``lake`` command line) as a user would, without progress bars: (exit code,
    stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"LAKE_PROGRESS": "0", "PATH": ""},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err


def settings(sim: SimServer, path: Path) -> Settings:
    return Settings(root=str(path), sim_url=sim.base_url)


def stored(s: Settings, symbols: list[str], tt: str = TT, iv: str = IV) -> pl.DataFrame:
    return scan_klines(s.root, tt, iv, symbols).collect().sort("symbol", "candle_begin_time")


def truth(
    sim: SimServer, symbols: list[str], start: dt.datetime, end: dt.datetime, tt: str = TT, iv: str = IV
) -> pl.DataFrame:
    return sim.market.truth(tt, iv, symbols, start, end).sort("symbol", "candle_begin_time")


def days(start: int, end: int | None = None) -> list[tuple[int, int]]:
    return [(t, t + DAY) for t in range(start, end or start + DAY, DAY)]


def day_of(frame: pl.DataFrame, d: dt.date) -> pl.Expr:
    return pl.col("candle_begin_time").dt.date() == d


async def run(
    s: Settings,
    start: dt.datetime,
    end: dt.datetime | None,
    symbols: list[str],
    *,
    source: str,
    tt: str = TT,
    iv: str = IV,
    concurrency: int = 8,
) -> HybridResult:
    return await archive_backfill(
        LakeFS(s.root), [tt], iv, settings=s, start=start, end=end, symbols=symbols, source=source,
        concurrency=concurrency,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# 1. Days a monthly file leaves empty, with no daily file: reported, exit 5, never a silent success
# --------------------------------------------------------------------------------------------------


async def assert_february_whole_and_rerun_idle(sim: SimServer, s: Settings) -> None:
    """BTCUSDT's February in the lake equals the truth, and an archive run over it again plans no
    file and changes nothing."""
    want = truth(sim, ["BTCUSDT"], utc(2024, 2, 1), utc(2024, 3, 1))
    got = stored(s, ["BTCUSDT"])
    assert got.select(COLS).equals(want.select(COLS))
    again = await run(s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive")
    assert again.archive[0].files_planned == 0
    assert stored(s, ["BTCUSDT"]).equals(got)


async def test_days_a_monthly_file_leaves_empty_without_a_daily_file_are_reported_missing(
    tmp_path: Path,
) -> None:
    """The February monthly file lacks the 12th and everything from the 20th (binance-public-data
    #320/#359); the 20th-29th have daily files, the 12th has none. `--source archive` fills the
    20th-29th from the daily files in the same run and fails (IncompleteError, exit 5) naming the
    12th, on every run until the archive has it; `--source auto` fills it over REST."""
    async with SimServer(config(missing_days=("BTCUSDT/2024-02-12",))) as sim:
        sim.archive.edit_file(
            "BTCUSDT-5m-2024-02.zip",
            FileEdit(drop=((ms(2024, 2, 12), ms(2024, 2, 13)), (ms(2024, 2, 20), ms(2024, 3, 1)))),
        )
        s = settings(sim, tmp_path / "lake")
        syms = ["BTCUSDT", "ETHUSDT"]
        want_missing = [
            "usdt_spot 5m BTCUSDT [2024-02-12T00:00:00Z, 2024-02-13T00:00:00Z): not in the archive"
        ]
        with pytest.raises(IncompleteError) as err:
            await run(s, utc(2024, 2, 1), utc(2024, 3, 1), syms, source="archive")
        assert err.value.missing == want_missing
        got = stored(s, syms)
        want = truth(sim, syms, utc(2024, 2, 1), utc(2024, 3, 1))
        hole = (pl.col("symbol") == "BTCUSDT") & day_of(want, dt.date(2024, 2, 12))
        assert got.select(COLS).equals(want.filter(~hole).select(COLS)), "everything else is in"

        # A second run fetches nothing and still says so.
        with pytest.raises(IncompleteError) as err:
            await run(s, utc(2024, 2, 1), utc(2024, 3, 1), syms, source="archive")
        assert err.value.missing == want_missing
        assert err.value.result.archive[0].files_planned == 0  # type: ignore[attr-defined]

        # REST fills it under auto.
        res = await run(s, utc(2024, 2, 1), utc(2024, 3, 1), syms, source="auto")
        assert res.rest is not None and res.rest.missing == []
        assert stored(s, syms).select(COLS).equals(want.select(COLS))


async def test_a_monthly_file_cut_mid_day_is_completed_from_that_days_daily_file(tmp_path: Path) -> None:
    """The February monthly file stops at Feb 20 14:00 (a truncated monthly file need not end at
    midnight). The days after come from their daily files, and so must the rest of the 20th: its
    daily file was published, but the monthly file's rows made the day look covered and 14:00-24:00
    stayed out of the lake with the run succeeding. A rerun fetches nothing."""
    async with SimServer(config()) as sim:
        cut = ms(2024, 2, 20) + 14 * 3_600_000
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(drop=((cut, ms(2024, 3, 1)),)))
        s = settings(sim, tmp_path / "lake")
        res = await run(s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive")
        assert res.archive[0].missing == []
        await assert_february_whole_and_rerun_idle(sim, s)


# --------------------------------------------------------------------------------------------------
# 2. Daily files own their day: a monthly file never overwrites it, whatever the order
# --------------------------------------------------------------------------------------------------

STALE_AT = ms(2024, 2, 14) + 10 * 3_600_000  # a candle the February monthly file has wrong (#475)


def stale_monthly(sim: SimServer) -> None:
    sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(stale=(STALE_AT,)))


async def test_a_monthly_file_ingested_after_a_daily_one_does_not_overwrite_its_day(tmp_path: Path) -> None:
    """binance-public-data #475: monthly files holding stale rows where the daily file and REST
    agree. The 14th comes from its daily file first (a one-day run), then a run over the month takes
    the monthly file: the 14th keeps the daily file's values (it used to take the stale one), and a
    rerun fetches nothing and changes nothing."""
    async with SimServer(config()) as sim:
        stale_monthly(sim)
        s = settings(sim, tmp_path / "lake")
        await run(s, utc(2024, 2, 14), utc(2024, 2, 15), ["BTCUSDT"], source="archive")
        res = await run(s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive")
        assert [r.files_downloaded for r in res.archive] == [1]  # the monthly file
        await assert_february_whole_and_rerun_idle(sim, s)


def _reversed_singletons(jobs: list[runner._Job], iv: Interval) -> list[list[runner._Job]]:
    """Every file on its own, daily files before monthly ones: the order the upserts happen in."""
    groups = [[j] for g in ORIGINAL_GROUPS(jobs, iv) for j in g]
    return sorted(groups, key=lambda g: g[0].planned.file.freq == "monthly")


ORIGINAL_GROUPS = runner._groups


async def test_ingest_order_of_a_reuploaded_monthly_and_daily_file_does_not_change_the_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Binance re-uploads the 14th (a corrected candle): its daily file and the monthly file change;
    the monthly one still holds the stale row of #475. Ingested monthly-then-daily (one group, as
    planned) or daily-then-monthly (each file on its own, one at a time), the lake ends the same:
    the truth."""
    async with SimServer(config()) as sim:
        stale_monthly(sim)
        lakes = [settings(sim, tmp_path / "a"), settings(sim, tmp_path / "b")]
        for s in lakes:
            await run(s, utc(2024, 2, 14), utc(2024, 2, 15), ["BTCUSDT"], source="archive")
            await run(s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive")
        sim.control_faults({"reupload": [{"market": "spot", "symbol": "BTCUSDT", "date": "2024-02-14"}]})
        want = truth(sim, ["BTCUSDT"], utc(2024, 2, 1), utc(2024, 3, 1))
        got = []
        for i, s in enumerate(lakes):
            with monkeypatch.context() as mp:
                if i == 1:
                    mp.setattr(runner, "_groups", _reversed_singletons)
                res = await run(
                    s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive", concurrency=1
                )
            assert res.archive[0].files_reuploaded == 2
            got.append(stored(s, ["BTCUSDT"]))
        assert got[0].equals(got[1])
        assert got[0].select(COLS).equals(want.select(COLS))


async def test_a_reuploaded_monthly_file_keeps_the_days_daily_files_filled_outside_the_window(
    tmp_path: Path,
) -> None:
    """A truncated monthly file (the 1st-19th) whose 20th-29th came from daily files; Binance
    re-uploads the monthly file, still truncated. A run over the 1st-4th fetches it (a re-upload is
    fetched whatever the window) and used to replace every archive row of the month, deleting the
    20th-29th; they are the daily files' and stay."""
    async with SimServer(config()) as sim:
        cut = FileEdit(drop=((ms(2024, 2, 20), ms(2024, 3, 1)),))
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", cut)
        s = settings(sim, tmp_path / "lake")
        await run(s, utc(2024, 2, 1), utc(2024, 3, 1), ["BTCUSDT"], source="archive")
        want = truth(sim, ["BTCUSDT"], utc(2024, 2, 1), utc(2024, 3, 1))
        assert stored(s, ["BTCUSDT"]).select(COLS).equals(want.select(COLS))
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", cut)  # a new upload, as truncated
        res = await run(s, utc(2024, 2, 1), utc(2024, 2, 5), ["BTCUSDT"], source="archive")
        assert res.archive[0].files_reuploaded == 1
        await assert_february_whole_and_rerun_idle(sim, s)


# --------------------------------------------------------------------------------------------------
# 3. Other ways the archive goes wrong
# --------------------------------------------------------------------------------------------------


async def test_a_late_daily_file_fails_an_archive_run_with_exit_5_and_names_the_day(tmp_path: Path) -> None:
    """ETHUSDT's file of the 9th is not out while BTCUSDT's is (late files: binance-public-data
    #413/#414): the CLI run exits 5 naming that day, one `missing:` line per range; the 10th (not
    published for anyone yet) is not named. It used to exit 0."""
    async with SimServer(config(missing_days=("ETHUSDT/2024-03-09",))) as sim:
        cmd = [
            sys.executable, "-m", "lake.cli", "backfill", "--source", "archive", "--type", TT, "--interval", IV,
            "--start", "2024-03-01", "--symbols", "BTCUSDT,ETHUSDT", "--sim-url", sim.base_url,
            "--root", str(tmp_path / "lake"),
        ]  # fmt: skip
        code, out, err = await lake_cli(*cmd)
        lines = err.decode().splitlines()
        assert code == 5, lines
        assert [x for x in lines if x.startswith("missing:")] == [
            "missing: usdt_spot 5m ETHUSDT [2024-03-09T00:00:00Z, 2024-03-10T00:00:00Z): not in the archive"
        ]
        # what was done is printed all the same (it printed nothing on stdout)
        (summary,) = out.decode().splitlines()
        assert (
            summary.startswith("archive usdt_spot 5m: 2 symbols, ")
            and "1 range(s) of them missing" in summary
        )
        # --json: the report, the missing range in it; a rerun downloads nothing new
        code, out, err = await lake_cli(*cmd, "--json")
        assert code == 5, err.decode()
        doc = json.loads(out)
        assert doc["rest"] is None and doc["archive"][0]["files_downloaded"] == 0
        assert doc["archive"][0]["missing"] == [
            "usdt_spot 5m ETHUSDT [2024-03-09T00:00:00Z, 2024-03-10T00:00:00Z): not in the archive"
        ]
        s = settings(sim, tmp_path / "lake")
        want = truth(sim, ["BTCUSDT", "ETHUSDT"], utc(2024, 3, 1), utc(2024, 3, 10))
        hole = (pl.col("symbol") == "ETHUSDT") & day_of(want, dt.date(2024, 3, 9))
        assert stored(s, ["BTCUSDT", "ETHUSDT"]).select(COLS).equals(want.filter(~hole).select(COLS))


async def test_symbols_listed_mid_month_or_delisted_are_not_reported_missing(tmp_path: Path) -> None:
    """NEWCOINUSDT listed on Feb 19 08:00 (its February monthly file starts there; no daily file
    before) and OLDCOINUSDT delisted on Jan 20 05:00 (its January file stops there; no file after):
    `--source archive` over Jan 1 .. now succeeds, the days before the listing and after the
    delisting lacking but not missing, and the lake equals the truth."""
    async with SimServer(config()) as sim:
        sim.control_faults({
            "list": [
                {"market": "spot", "symbol": "NEWCOINUSDT", "at": "2024-02-19T08:00:00"},
                {"market": "spot", "symbol": "OLDCOINUSDT", "at": "2023-12-25T00:00:00"},
            ],
            "delist": [{"market": "spot", "symbol": "OLDCOINUSDT", "at": "2024-01-20T05:00:00"}],
        })  # fmt: skip
        syms = ["NEWCOINUSDT", "OLDCOINUSDT"]
        s = settings(sim, tmp_path / "lake")
        res = await run(s, utc(2024, 1, 1), None, syms, source="archive")
        (arch,) = res.archive
        assert arch.missing == []
        # January (no file), Feb 1-18 (the monthly file has nothing there), today (not published)
        assert arch.lacking["NEWCOINUSDT"] == days(ms(2024, 1, 1), ms(2024, 2, 19)) + days(ms(2024, 3, 10))
        # Jan 21-31 (the monthly file stops on the 20th), February and March (no file)
        assert arch.lacking["OLDCOINUSDT"] == days(ms(2024, 1, 21), ms(2024, 3, 11))
        got = stored(s, syms)
        want = truth(sim, syms, utc(2024, 1, 1), utc(2024, 3, 10))
        assert got.select(COLS).equals(want.select(COLS))
        assert got.filter(pl.col("symbol") == "NEWCOINUSDT")["candle_begin_time"].min() == utc(2024, 2, 19, 8)


async def test_partial_daily_upload_is_filled_by_rest_under_auto_and_healed_by_its_reupload(
    tmp_path: Path,
) -> None:
    """BTCUSDT's file of Mar 5 holds only 00:00-14:00 (a partial upload, #411). `auto`: REST fills
    the rest of the day. `archive`: the run fails naming the lost hours (a file cut before its day's
    end: tests/ingest/test_archive_partial_files.py), `lake audit` calls the hole missing (no other
    symbol has it), and Binance's complete re-upload is detected and fills it."""
    from lake.audit import audit

    cut = ms(2024, 3, 5) + 14 * 3_600_000
    async with SimServer(config()) as sim:
        sim.archive.edit_file("BTCUSDT-5m-2024-03-05.zip", FileEdit(drop=((cut, ms(2024, 3, 6)),)))
        syms = ["BTCUSDT", "ETHUSDT"]
        want = truth(sim, syms, utc(2024, 3, 1), utc(2024, 3, 8))
        auto = settings(sim, tmp_path / "auto")
        await run(auto, utc(2024, 3, 1), utc(2024, 3, 8), syms, source="auto")
        got = stored(auto, syms)
        assert got.select(COLS).equals(want.select(COLS))
        late = got.filter(
            (pl.col("symbol") == "BTCUSDT") & (pl.col("candle_begin_time").dt.epoch("ms") >= cut)
        )
        assert late.filter(day_of(late, dt.date(2024, 3, 5)))["source"].unique().to_list() == ["rest"]

        arch = settings(sim, tmp_path / "archive")
        with pytest.raises(IncompleteError) as err:
            await run(arch, utc(2024, 3, 1), utc(2024, 3, 8), syms, source="archive")
        assert err.value.missing == [
            "usdt_spot 5m BTCUSDT [2024-03-05T14:00:00Z, 2024-03-06T00:00:00Z): not in the archive"
        ]
        (btc,) = audit(arch.root, TT, IV, ["BTCUSDT"])
        assert [(h.start, h.end, h.kind) for h in btc.unexpected] == [
            (utc(2024, 3, 5, 14), utc(2024, 3, 6), "missing")
        ]
        sim.archive.edit_file("BTCUSDT-5m-2024-03-05.zip", None)  # the complete file, re-uploaded
        res = await run(arch, utc(2024, 3, 1), utc(2024, 3, 8), syms, source="archive")
        assert res.archive[0].files_reuploaded == 1
        assert stored(arch, syms).select(COLS).equals(want.select(COLS))


async def test_a_checksum_that_is_not_served(tmp_path: Path) -> None:
    """A zip listed with its .CHECKSUM, but the .CHECKSUM answers 404: never ingested unverified;
    `archive` fails naming it, `auto` fills its day over REST."""
    name = "ETHUSDT-5m-2024-03-02.zip"
    async with SimServer(config()) as sim:
        sim.archive.no_checksum.add(name)
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(UpstreamError, match=name):
            await run(s, utc(2024, 3, 1), utc(2024, 3, 4), ["ETHUSDT"], source="archive")
        want = truth(sim, ["ETHUSDT"], utc(2024, 3, 1), utc(2024, 3, 4))
        day2 = day_of(want, dt.date(2024, 3, 2))
        assert stored(s, ["ETHUSDT"]).select(COLS).equals(want.filter(~day2).select(COLS))
        await run(s, utc(2024, 3, 1), utc(2024, 3, 4), ["ETHUSDT"], source="auto")
        got = stored(s, ["ETHUSDT"])
        assert got.select(COLS).equals(want.select(COLS))
        assert got.filter(day_of(got, dt.date(2024, 3, 2)))["source"].unique().to_list() == ["rest"]


async def test_listing_pages_failing_mid_pagination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing pages of 7 keys: a page after the first fails twice (503), the listing is retried and
    the run is complete; when they keep failing, no partial listing is used: `auto` takes the whole
    window from REST."""
    monkeypatch.setattr(listing, "_BACKOFF_S", 0.01)  # (the retries' waits, 7.5 s in all)
    cfg = config()
    cfg = SimConfig(**{**cfg.__dict__, "list_max_keys": 7})
    async with SimServer(cfg) as sim:
        syms = ["BTCUSDT"]
        want = truth(sim, syms, utc(2024, 2, 1), utc(2024, 3, 9))  # (the February monthly file whole)
        s = settings(sim, tmp_path / "a")
        sim.archive.fail_list_pages = 2
        await run(s, utc(2024, 2, 20), utc(2024, 3, 9), syms, source="archive")
        assert sim.archive.fail_list_pages == 0
        assert stored(s, syms).select(COLS).equals(want.select(COLS))
        want = want.filter(pl.col("candle_begin_time") >= utc(2024, 2, 20))
        s = settings(sim, tmp_path / "b")
        sim.archive.fail_list_pages = 10**6
        res = await run(s, utc(2024, 2, 20), utc(2024, 3, 9), syms, source="auto")
        assert res.archive[0].files_downloaded == 0 and res.archive[0].failed
        got = stored(s, syms)
        assert got.select(COLS).equals(want.select(COLS)) and got["source"].unique().to_list() == ["rest"]


async def test_coin_m_monthly_1mo_and_daily_files_equal_the_truth(tmp_path: Path) -> None:
    """COIN-M names (BTCUSD_PERP, a quarterly BTCUSD_YYMMDD) and the monthly-only `1M` interval,
    whose archive name is `1mo`; the current month is not published yet and is not reported missing."""
    cfg = SimConfig(**{**config().__dict__, "history_days": 330})
    async with SimServer(cfg) as sim:
        s = settings(sim, tmp_path / "lake")
        res = await run(s, utc(2023, 6, 1), None, ["BTCUSD_PERP"], source="archive", tt="coin_perp", iv="1M")
        (arch,) = res.archive
        assert arch.missing == [] and arch.lacking == {}
        got = stored(s, ["BTCUSD_PERP"], "coin_perp", "1M")
        want = truth(sim, ["BTCUSD_PERP"], utc(2023, 6, 1), utc(2024, 3, 1), "coin_perp", "1M")
        assert got.height == 9 and got.select(COLS).equals(want.select(COLS))
        (mf,) = {p.parent.name for p in (tmp_path / "lake" / "_meta" / "archive").rglob("*.json")}
        assert mf == "1mo"

        deli = sorted(sim.market.symbols("coin_deli", trading_at=sim.clock.now_ms()))[0]
        await run(s, utc(2024, 2, 25), utc(2024, 3, 9), [deli], source="archive", tt="coin_deli", iv="1h")
        got = stored(s, [deli], "coin_deli", "1h")
        want = truth(sim, [deli], utc(2024, 2, 25), utc(2024, 3, 9), "coin_deli", "1h")
        assert got.height > 0 and got.select(COLS).equals(
            want.filter(pl.col("candle_begin_time") >= got["candle_begin_time"].min()).select(COLS)
        )


async def test_auto_reports_what_the_archive_lacks_for_a_symbol_rest_does_not_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OLDCOINUSDT, delisted on Feb 20 and gone from exchangeInfo, has only the archive, which lacks
    its Feb 5 (neither the monthly file nor a daily one has it). `auto` fills BTCUSDT over REST and
    then fails naming that day (REST skips the symbol; it used to end with exit 0); the days after
    the delisting are not missing."""
    from lake.ingest.archive import hybrid

    real = hybrid.fetch_exchange_info

    async def without_oldcoin(client: RestClient) -> ExchangeSnapshot:
        snap = await real(client)
        raw = {**snap.raw, "symbols": [x for x in snap.symbols if x.get("symbol") != "OLDCOINUSDT"]}
        return type(snap)(snap.market, snap.server_time_ms, raw)

    monkeypatch.setattr(hybrid, "fetch_exchange_info", without_oldcoin)
    async with SimServer(config(missing_days=("OLDCOINUSDT/2024-02-05",))) as sim:
        sim.control_faults({
            "list": [{"market": "spot", "symbol": "OLDCOINUSDT", "at": "2023-12-25T00:00:00"}],
            "delist": [{"market": "spot", "symbol": "OLDCOINUSDT", "at": "2024-02-20T05:00:00"}],
        })  # fmt: skip
        sim.archive.edit_file(
            "OLDCOINUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 5), ms(2024, 2, 6)),))
        )
        syms = ["BTCUSDT", "OLDCOINUSDT"]
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, utc(2024, 2, 1), utc(2024, 3, 1), syms, source="auto")
        assert err.value.missing == [
            "usdt_spot 5m OLDCOINUSDT [2024-02-05T00:00:00Z, 2024-02-06T00:00:00Z): not in the archive"
        ]
        want = truth(sim, syms, utc(2024, 2, 1), utc(2024, 3, 1))
        hole = (pl.col("symbol") == "OLDCOINUSDT") & day_of(want, dt.date(2024, 2, 5))
        assert stored(s, syms).select(COLS).equals(want.filter(~hole).select(COLS))


async def test_an_incomplete_rest_part_still_names_the_archive_files_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` with a corrupt archive file whose REST part then ends incomplete: the run's
    IncompleteError (exit 5) lists REST's missing range and also the file that failed verification
    (the DataError naming it comes after REST and was never raised: the file went unmentioned)."""
    from lake.ingest.archive import hybrid

    async def incomplete(*args: object, **kwargs: object) -> None:
        raise IncompleteError("backfill incomplete", ["usdt_spot 5m ETHUSDT [a, b): REST failed"])

    monkeypatch.setattr(hybrid, "backfill", incomplete)
    bad = "BTCUSDT-5m-2024-03-01.zip"
    async with SimServer(config(corrupt_zips=(bad,))) as sim:
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as caught:
            await run(s, utc(2024, 3, 1), utc(2024, 3, 2), ["BTCUSDT"], source="auto")
    missing = caught.value.missing
    assert missing[0] == "usdt_spot 5m ETHUSDT [a, b): REST failed"
    assert len(missing) == 2 and bad in missing[1] and missing[1].endswith("nothing written for its days")
