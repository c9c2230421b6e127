"""Archive ingest at a monthly file's end, against the simulator: a file cut on its month's last day
is completed from the daily file, a truncated re-upload does not take days out of the lake, a
delisted symbol's days before its later files are missing; and `lake audit` does not call a gap the
archive run reported missing a segment break (a delisting confirmed over REST still is one)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from lake.audit import audit
from lake.errors import IncompleteError
from lake.settings import Settings
from lake.sim.archive import FileEdit
from lake.sim.config import SimConfig
from lake.sim.server import SimServer
from tests.ingest.test_archive_gaps_and_precedence import (
    COLS,
    IV,
    TT,
    config,
    day_of,
    ms,
    run,
    settings,
    stored,
    truth,
    utc,
)

FEB, MAR = utc(2024, 2, 1), utc(2024, 3, 1)
HOUR = 3_600_000


def missing_line(symbol: str, start: dt.datetime, end: dt.datetime) -> str:
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return f"{TT} {IV} {symbol} [{start.strftime(iso)}, {end.strftime(iso)}): not in the archive"


def assert_lake(s: Settings, syms: list[str], want: pl.DataFrame) -> None:
    """The lake's candles of ``syms`` equal ``want``; on failure, says which candles differ."""
    got = stored(s, syms).select(COLS)
    want = want.select(COLS)
    if not got.equals(want):
        key = ["symbol", "candle_begin_time"]
        lacks = (
            want.join(got, on=key, how="anti")
            .group_by("symbol")
            .agg(
                pl.len(),
                pl.col("candle_begin_time").min().alias("from"),
                pl.col("candle_begin_time").max().alias("to"),
            )
        )
        extra = got.join(want, on=key, how="anti").height
        raise AssertionError(f"lake lacks {lacks.sort('symbol').rows()}, {extra} extra candle(s)")


def without(frame: pl.DataFrame, symbol: str, days: list[dt.date]) -> pl.DataFrame:
    hole = (pl.col("symbol") == symbol) & pl.col("candle_begin_time").dt.date().is_in(days)
    return frame.filter(~hole)


async def test_a_monthly_file_cut_on_its_last_day_is_completed_like_any_other_cut(tmp_path: Path) -> None:
    """BTCUSDT's February file stops at Feb 29 14:00, ETHUSDT's at Feb 28 00:00; the daily files of
    the 28th (ETH) and 29th (BTC) are out, ETH's 29th is not. The rest of BTC's 29th comes from its
    daily file (it stayed out of the lake, the run succeeding: the cut-day rule looked for a blank
    next day, and the 29th has none in its month), ETH's 28th too, and ETH's 29th is missing (exit 5);
    `auto` fills it over REST."""
    async with SimServer(config(missing_days=("ETHUSDT/2024-02-29",))) as sim:
        sim.archive.edit_file(
            "BTCUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 29) + 14 * HOUR, ms(2024, 3, 1)),))
        )
        sim.archive.edit_file("ETHUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 28), ms(2024, 3, 1)),)))
        s = settings(sim, tmp_path / "lake")
        syms = ["BTCUSDT", "ETHUSDT"]
        want_missing = [missing_line("ETHUSDT", utc(2024, 2, 29), MAR)]
        with pytest.raises(IncompleteError) as err:
            await run(s, FEB, MAR, syms, source="archive")
        assert err.value.missing == want_missing
        want = truth(sim, syms, FEB, MAR)
        assert_lake(s, syms, without(want, "ETHUSDT", [dt.date(2024, 2, 29)]))
        with pytest.raises(IncompleteError) as err:
            await run(s, FEB, MAR, syms, source="archive")
        assert err.value.missing == want_missing
        assert err.value.result.archive[0].files_planned == 0  # type: ignore[attr-defined]

        res = await run(s, FEB, MAR, syms, source="auto")
        assert res.rest is not None and res.rest.missing == []
        assert_lake(s, syms, want)
        got = stored(s, syms)
        eth29 = got.filter((pl.col("symbol") == "ETHUSDT") & day_of(got, dt.date(2024, 2, 29)))
        assert eth29["source"].unique().to_list() == ["rest"]


async def test_a_truncated_reupload_of_a_monthly_file_takes_no_day_out_of_the_lake(tmp_path: Path) -> None:
    """February was ingested from its whole monthly file; Binance re-uploads it cut at Feb 27 10:00
    (#320), with no daily file for the 28th and 29th. A run over Feb 1-4 fetches the re-upload
    (whatever the window) and used to delete Feb 27 10:00 to Mar 1, the run succeeding and nothing
    outside its window filling them again. The days it has no candle for keep the rows they had."""
    async with SimServer(config(missing_days=("BTCUSDT/2024-02-28", "BTCUSDT/2024-02-29"))) as sim:
        s = settings(sim, tmp_path / "lake")
        await run(s, FEB, MAR, ["BTCUSDT"], source="archive")
        sim.archive.edit_file(
            "BTCUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 27) + 10 * HOUR, ms(2024, 3, 1)),))
        )
        res = await run(s, FEB, utc(2024, 2, 5), ["BTCUSDT"], source="archive")
        assert res.archive[0].files_reuploaded == 1 and res.archive[0].missing == []
        assert_lake(s, ["BTCUSDT"], truth(sim, ["BTCUSDT"], FEB, MAR))
        got = stored(s, ["BTCUSDT"])
        again = await run(s, FEB, MAR, ["BTCUSDT"], source="archive")
        assert again.archive[0].files_planned == 0 and again.archive[0].missing == []
        assert stored(s, ["BTCUSDT"]).equals(got)


async def test_a_delisted_symbols_days_before_its_later_archive_files_are_missing(tmp_path: Path) -> None:
    """OLDCOINUSDT, delisted on Mar 5, has a February file cut at Feb 27 and no daily file for the
    27th-29th; GONECOINUSDT was delisted on Feb 27 00:00 (its file really ends there). A run over
    February only used to take OLDCOIN's last stored candle for its delisting and succeed; the
    archive lists its March daily files, so its 27th-29th are missing. GONECOIN's are not."""
    no_daily = [f"OLDCOINUSDT/2024-02-{d}" for d in (27, 28, 29)]
    async with SimServer(config(missing_days=tuple(no_daily))) as sim:
        sim.control_faults({
            "list": [
                {"market": "spot", "symbol": "OLDCOINUSDT", "at": "2023-12-25T00:00:00"},
                {"market": "spot", "symbol": "GONECOINUSDT", "at": "2023-12-25T00:00:00"},
            ],
            "delist": [
                {"market": "spot", "symbol": "OLDCOINUSDT", "at": "2024-03-05T05:00:00"},
                {"market": "spot", "symbol": "GONECOINUSDT", "at": "2024-02-27T00:00:00"},
            ],
        })  # fmt: skip
        sim.archive.edit_file(
            "OLDCOINUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 27), ms(2024, 3, 1)),))
        )
        syms = ["GONECOINUSDT", "OLDCOINUSDT"]
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, FEB, MAR, syms, source="archive")
        assert err.value.missing == [missing_line("OLDCOINUSDT", utc(2024, 2, 27), MAR)]
        lacking = err.value.result.archive[0].lacking  # type: ignore[attr-defined]
        assert lacking["GONECOINUSDT"] == [(ms(2024, 2, d), ms(2024, 2, d + 1)) for d in (27, 28)] + [
            (ms(2024, 2, 29), ms(2024, 3, 1))
        ]
        want = without(truth(sim, syms, FEB, MAR), "OLDCOINUSDT", [dt.date(2024, 2, d) for d in (27, 28, 29)])
        assert_lake(s, syms, want)


async def test_audit_agrees_with_the_archive_run_on_a_gap_inside_a_monthly_file(tmp_path: Path) -> None:
    """BTCUSDT's February file lacks the 12th and 13th (no daily files); RELCOINUSDT was delisted on
    Feb 12 and relisted on Feb 14, so its file lacks the same days. The archive run cannot tell them
    apart and exits 5 naming both; `lake audit` called both a segment break (two days, inside an
    ingested file) and passed. Now both are missing. Once REST has filled BTCUSDT's and confirmed
    RELCOINUSDT's empty (`auto`), the relisting gap is a segment break and BTCUSDT has no gap left;
    the maintenance window of Feb 27 stays maintenance throughout."""
    syms = ["BTCUSDT", "ETHUSDT", "RELCOINUSDT"]
    maint = (utc(2024, 2, 27, 6), utc(2024, 2, 27, 8))
    cfg = config(missing_days=("BTCUSDT/2024-02-12", "BTCUSDT/2024-02-13"))
    cfg = SimConfig(**{**cfg.__dict__, "maintenance": (("spot", *(t.isoformat() for t in maint)),)})
    async with SimServer(cfg) as sim:
        sim.control_faults({
            "list": [{"market": "spot", "symbol": "RELCOINUSDT", "at": "2023-12-25T00:00:00"}],
            "delist": [{"market": "spot", "symbol": "RELCOINUSDT", "at": "2024-02-12T00:00:00"}],
        })  # fmt: skip
        sim.control_faults(
            {"list": [{"market": "spot", "symbol": "RELCOINUSDT", "at": "2024-02-14T00:00:00"}]}
        )
        sim.archive.edit_file("BTCUSDT-5m-2024-02.zip", FileEdit(drop=((ms(2024, 2, 12), ms(2024, 2, 14)),)))
        s = settings(sim, tmp_path / "lake")
        with pytest.raises(IncompleteError) as err:
            await run(s, FEB, MAR, syms, source="archive")
        gap = (utc(2024, 2, 12), utc(2024, 2, 14))
        assert err.value.missing == [missing_line("BTCUSDT", *gap), missing_line("RELCOINUSDT", *gap)]

        def kinds() -> dict[str, list[tuple[dt.datetime, dt.datetime, str]]]:
            return {
                a.symbol: [(h.start, h.end, h.kind) for h in a.holes] for a in audit(s.root, TT, IV, syms)
            }

        assert kinds() == {
            "BTCUSDT": [(*gap, "missing"), (*maint, "maintenance")],
            "ETHUSDT": [(*maint, "maintenance")],
            "RELCOINUSDT": [(*gap, "missing"), (*maint, "maintenance")],
        }
        await run(s, FEB, MAR, syms, source="auto")
        assert kinds() == {
            "BTCUSDT": [(*maint, "maintenance")],
            "ETHUSDT": [(*maint, "maintenance")],
            "RELCOINUSDT": [(*gap, "segment_break"), (*maint, "maintenance")],
        }
        assert_lake(s, syms, truth(sim, syms, FEB, MAR))
