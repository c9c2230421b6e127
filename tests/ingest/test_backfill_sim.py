"""REST backfill against the simulator: the lake must equal the simulator's ground truth."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import polars as pl
import pytest

from lake.errors import IncompleteError, NotFoundError
from lake.ingest.backfill import BackfillReport, backfill
from lake.sim.exinfo import FUNDING_MS
from lake.sim.server import SimServer
from lake.sim.testing import sim_server
from lake.store.coverage import coverage
from lake.store.klines import scan_klines
from lake.store.meta import read_empty_ranges
from lake.store.tables import funding_path, read_funding, scan_exchange_info

FAST = {"backoff_base": 0.02, "calibrate_s": 0.1}


def lake_rows(root: Path, tt: str, iv: str, symbols: list[str] | None = None) -> pl.DataFrame:
    return scan_klines(root, tt, iv, symbols).collect().sort("symbol", "candle_begin_time")


def assert_equals_truth(sim: SimServer, root: Path, report: BackfillReport, tt: str, iv: str = "5m") -> None:
    syms = sorted({s.symbol for s in report.series if s.trade_type == tt})
    s0 = next(s for s in report.series if s.trade_type == tt)
    truth = sim.market.truth(tt, iv, syms, s0.start_ms, s0.end_ms, now=s0.end_ms)
    got = lake_rows(root, tt, iv, syms)
    assert got.height == truth.height, (got.height, truth.height)
    assert got.select(truth.columns).equals(truth.sort("symbol", "candle_begin_time"))
    assert got.select("symbol", "candle_begin_time").is_duplicated().sum() == 0


async def run(sim: SimServer, root: Path, tts: list[str], **kw: object) -> BackfillReport:
    kw.setdefault("client_options", FAST)
    return await backfill(
        root,
        tts,
        kw.pop("interval", "5m"),
        endpoints=sim.endpoints,  # type: ignore[arg-type]
        state_dir=root / ".state",
        **kw,
    )  # type: ignore[arg-type]


async def until(pred: Callable[[], bool], limit_s: float = 30.0) -> None:
    for _ in range(int(limit_s / 0.001)):
        if pred():
            return
        await asyncio.sleep(0.001)
    raise TimeoutError("condition not reached")


def kline_requests(report: BackfillReport) -> int:
    return sum(s.requests for s in report.series)


async def test_perp_and_spot_equal_truth_then_rerun_is_free(tmp_path: Path) -> None:
    async with sim_server() as sim:
        rep = await run(sim, tmp_path, ["usdt_perp", "usdt_spot"], days=5)
        assert not rep.missing
        assert {s.trade_type for s in rep.series} == {"usdt_perp", "usdt_spot"}
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")
        assert_equals_truth(sim, tmp_path, rep, "usdt_spot")
        # the maintenance window of 2025-03-11 is recorded as confirmed empty: an exchange hole
        cov = {c.symbol: c for c in coverage(tmp_path, "usdt_perp", "5m")}
        assert cov["BTCUSDT"].holes and all(h.kind == "exchange" for h in cov["BTCUSDT"].holes)
        assert cov["BTCUSDT"].missing == 0
        assert rep.holes > 0
        # exchange_info snapshots for both trade types
        info = scan_exchange_info(tmp_path)
        assert set(info["trade_type"]) == {"usdt_perp", "usdt_spot"}
        # a second run asks for no klines at all (maintenance holes are not refetched)
        before = sim.stats.rest["um"].requests
        again = await run(sim, tmp_path, ["usdt_perp"], days=5)
        assert kline_requests(again) == 0 and again.candles == 0
        assert {s.status for s in again.series} == {"up_to_date"}
        assert sim.stats.rest["um"].requests - before <= 4  # time ×2, exchangeInfo, time
        # --recheck asks again for the confirmed-empty ranges, and changes nothing
        rechecked = await run(sim, tmp_path, ["usdt_perp"], days=5, recheck=True)
        assert kline_requests(rechecked) > 0 and rechecked.candles == 0
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")


async def test_coin_m_equals_truth_with_funding(tmp_path: Path) -> None:
    async with sim_server() as sim:
        rep = await run(sim, tmp_path, ["coin_perp"], days=3, funding=True)
        assert_equals_truth(sim, tmp_path, rep, "coin_perp")
        s0 = rep.series[0]
        total = 0
        for ser in rep.series:
            info = sim.market.universe.get("cm", ser.symbol)
            assert info is not None
            first = -(-s0.start_ms // FUNDING_MS) * FUNDING_MS  # funding every 8h from 00:00 while listed
            want = [t for t in range(first, s0.end_ms, FUNDING_MS) if info.listed_at(t)]
            got = read_funding(tmp_path, "coin_perp", ser.symbol)
            assert got["funding_time"].dt.epoch("ms").to_list() == want
            total += len(want)
        assert rep.funding_rows == total > 0
        again = await run(sim, tmp_path, ["coin_perp"], days=3, funding=True)
        assert again.funding_rows == 0
        # a hole inside the stored rows (not at either edge) is found and filled
        sym = rep.series[0].symbol
        path = tmp_path / funding_path("coin_perp", sym)
        full = pl.read_parquet(path)
        assert full.height >= 6
        pl.concat([full.head(2), full.tail(full.height - 5)]).write_parquet(path)
        healed = await run(sim, tmp_path, ["coin_perp"], days=3, funding=True)
        assert healed.funding_rows == 3
        assert read_funding(tmp_path, "coin_perp", sym).equals(full)


async def test_short_history_and_delisted_symbols(tmp_path: Path) -> None:
    async with sim_server() as sim:
        aw = sim.market.awkward
        recent, delisted = aw.recent["um"][0], aw.delisted["um"][0]
        rep = await run(sim, tmp_path, ["usdt_perp"], days=50, symbols=["BTCUSDT", recent, delisted])
        status = {s.symbol: s.status for s in rep.series}
        assert status == {"BTCUSDT": "complete", recent: "short_history", delisted: "ended"}
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")
        by = {s.symbol: s for s in rep.series}
        # the young symbol cost a first page, a probe, then only pages with data
        info = sim.market.universe.get("um", recent)
        assert info is not None and by[recent].first_ms == info.first_ms
        assert by[recent].requests <= 2 + -(-(by[recent].fetched) // 499) + 1
        empties = read_empty_ranges(tmp_path, "usdt_perp", "5m", recent)
        assert empties and empties[0].start_ms == by[recent].start_ms and empties[0].end_ms == info.first_ms
        again = await run(sim, tmp_path, ["usdt_perp"], days=50, symbols=["BTCUSDT", recent, delisted])
        # only the delisted symbol's last slot, closed less than a minute before "now", is asked again
        assert {s.symbol: s.requests for s in again.series} == {"BTCUSDT": 0, recent: 0, delisted: 1}


async def test_unknown_symbol_is_named(tmp_path: Path) -> None:
    async with sim_server() as sim:
        with pytest.raises(NotFoundError, match="unknown usdt_perp symbols: NOPEUSDT, FOOUSDT"):
            await run(sim, tmp_path, ["usdt_perp"], days=1, symbols=["BTCUSDT", "NOPEUSDT", "FOOUSDT"])
        rep = await run(
            sim, tmp_path, ["usdt_perp"], days=1, symbols=["BTCUSDT", "NOPEUSDT"], unknown_symbols="skip"
        )
        assert [s.symbol for s in rep.series] == ["BTCUSDT"]


async def test_a_whitelist_is_shared_by_several_trade_types(tmp_path: Path) -> None:
    """`-t usdt_spot -t btc_spot -t usdt_perp --symbols BTCUSDT,ETHBTC`: each trade type takes the
    symbols it lists (BTCUSDT is both a spot pair and a perpetual); a symbol none lists is named
    before anything is fetched."""
    async with sim_server() as sim:
        tts = ["usdt_spot", "btc_spot", "usdt_perp"]
        with pytest.raises(NotFoundError, match="NOPEUSDT"):
            await run(sim, tmp_path, tts, days=1, symbols=["BTCUSDT", "NOPEUSDT"])
        assert not (tmp_path / "klines").exists()
        rep = await run(sim, tmp_path, tts, days=1, symbols=["BTCUSDT", "ETHBTC"])
        assert sorted((s.trade_type, s.symbol) for s in rep.series) == [
            ("btc_spot", "ETHBTC"),
            ("usdt_perp", "BTCUSDT"),
            ("usdt_spot", "BTCUSDT"),
        ]
        for tt in tts:
            assert_equals_truth(sim, tmp_path, rep, tt)


async def test_5xx_bursts_lose_nothing(tmp_path: Path) -> None:
    async with sim_server() as sim:
        sim.faults.update({"rest_error_rate": 0.3, "seed": 7})
        rep = await run(sim, tmp_path, ["usdt_perp"], days=4)
        assert sim.stats.status_count("um", "5xx") > 0
        sim.faults.update({"rest_error_rate": 0.0})
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")


async def test_persistent_failure_is_listed_not_skipped(tmp_path: Path) -> None:
    async with sim_server() as sim:
        rep0 = await run(sim, tmp_path, ["usdt_perp"], days=1, symbols=["BTCUSDT"])
        assert rep0.candles > 0
        base = sim.stats.rest["um"].requests

        async def fail_after_planning() -> None:  # time ×2, exchangeInfo, time: then every call fails
            await until(lambda: sim.stats.rest["um"].requests >= base + 4)
            sim.faults.update({"rest_error_rate": 1.0})

        task = asyncio.create_task(fail_after_planning())
        with pytest.raises(IncompleteError) as ei:
            await run(
                sim,
                tmp_path,
                ["usdt_perp"],
                days=3,
                symbols=["BTCUSDT", "ETHUSDT"],
                client_options={"backoff_base": 0.01, "retries": 1, "calibrate_s": 0.05},
            )
        await task
        missing = ei.value.missing
        assert missing and all("HTTP 503" in m or "not attempted" in m for m in missing)
        assert any("ETHUSDT" in m for m in missing) and any("BTCUSDT" in m for m in missing)


@pytest.mark.slow
async def test_forced_429_mid_run_and_a_418_ban(tmp_path: Path) -> None:
    # a running clock (speed 60: a weight window lasts one real second) with a small budget
    async with sim_server(speed=60.0, weight_limits={"spot": 6000, "um": 60, "cm": 2400}) as sim:
        url = f"{sim.base_url}/fapi/v1/time"
        # earn a ban: blow through the limit with a raw client
        async with aiohttp.ClientSession() as s:
            codes = []
            for _ in range(80):
                async with s.get(url) as r:
                    codes.append(r.status)
                if r.status == 418:
                    break
        assert 418 in codes

        async def force_429_later() -> None:
            await until(lambda: sim.stats.status_count("um", 200) >= 70)
            sim.faults.update({"force_429": 3})

        task = asyncio.create_task(force_429_later())
        rep = await run(sim, tmp_path, ["usdt_perp"], days=6)
        await task
        assert sim.stats.status_count("um", 429) >= 3
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")
        assert rep.markets["um"].status.get("429", 0) >= 3
        # the raw client's ban, and the one request of ours that learnt of it (then waited it out)
        assert sim.stats.status_count("um", 418) >= 2


@pytest.mark.slow
async def test_no_time_request_into_a_full_window(tmp_path: Path) -> None:
    # Regression: while waiting seconds for a full window to end, the governor re-synced its clock
    # with a (weight 1) time request every second, into the full window: five 429s, then a 418 ban.
    # Speed 12 makes a window 5 real seconds, so the wait (the re-sync is tried after 1 s) is long
    # enough to try several times.
    async with sim_server(speed=12.0, weight_limits={"spot": 6000, "um": 24, "cm": 2400}) as sim:
        rep = await run(sim, tmp_path, ["usdt_perp"], interval="1m", days=2, symbols=["BTCUSDT", "ETHUSDT"])
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp", "1m")
        um = rep.markets["um"]
        assert um.weight > 24  # the job needed more than one window
        assert sim.stats.status_count("um", 429) == 0 and sim.stats.status_count("um", 418) == 0
        assert um.status.get("429", 0) == 0 and um.status.get("418", 0) == 0


@pytest.mark.parametrize("um_recent_rows", [False, True])
async def test_young_usdm_symbol_whatever_order_the_window_is_answered_in(
    tmp_path: Path, um_recent_rows: bool
) -> None:
    # How USDⓈ-M selects rows with both startTime and endTime is undocumented: if it answers the
    # newest rows (as COIN-M does), a limit=1 probe with both times finds the LAST candle, and the
    # slots before it would be recorded as confirmed empty. The probe must not depend on it.
    async with sim_server(um_recent_rows=um_recent_rows) as sim:
        recent = sim.market.awkward.recent["um"][0]
        info = sim.market.universe.get("um", recent)
        assert info is not None
        rep = await run(sim, tmp_path, ["usdt_perp"], days=50, symbols=[recent])
        assert_equals_truth(sim, tmp_path, rep, "usdt_perp")
        ser = rep.series[0]
        assert ser.status == "short_history" and ser.first_ms == info.first_ms
        empties = read_empty_ranges(tmp_path, "usdt_perp", "5m", recent)
        # the slots before the listing, then only maintenance windows (after the listing)
        assert (empties[0].start_ms, empties[0].end_ms) == (ser.start_ms, info.first_ms)
        assert all(e.start_ms > info.first_ms for e in empties[1:])


async def test_young_coin_m_symbol_found_by_search(tmp_path: Path) -> None:
    # COIN-M answers the newest rows of a window of at most 200 days: the first candle of a young
    # symbol is found by a binary search, and nothing before it is fetched twice or lost.
    async with sim_server() as sim:
        recent = sim.market.awkward.recent["cm"][0]
        info = sim.market.universe.get("cm", recent)
        assert info is not None
        tt = "coin_perp" if recent.endswith("_PERP") else "coin_deli"
        rep = await run(sim, tmp_path, [tt], interval="1h", days=120, symbols=[recent])
        assert [s.symbol for s in rep.series] == [recent]
        assert_equals_truth(sim, tmp_path, rep, tt, "1h")
        ser = rep.series[0]
        assert ser.first_ms == info.first_ms and ser.fetched == ser.written
        empties = read_empty_ranges(tmp_path, tt, "1h", recent)
        assert (empties[0].start_ms, empties[0].end_ms) == (ser.start_ms, info.first_ms)
        assert all(e.start_ms > info.first_ms for e in empties[1:])


@pytest.mark.slow
async def test_coin_m_limit_advertised_too_high_is_learnt_from_the_429(tmp_path: Path) -> None:
    # COIN-M's docs disagree on the weight limit (6000 vs 2400). exchangeInfo saying more than the
    # server enforces must cost one round of 429s, not a 429 (and a ban) every window: the 429's
    # message names the limit (on futures "current limit is 2400 requests per minute").
    limits = {"spot": 6000, "um": 2400, "cm": 40}
    async with sim_server(speed=60.0, weight_limits=limits, advertised_weight_limits={"cm": 6000}) as sim:
        rep = await run(sim, tmp_path, ["coin_perp"], interval="1m", days=5, workers=4)
        assert_equals_truth(sim, tmp_path, rep, "coin_perp", "1m")
        cm = rep.markets["cm"]
        assert cm.weight_limit == 40
        assert cm.weight > 3 * 40  # several windows
        refused = sim.stats.status_count("cm", 429) + sim.stats.status_count("cm", 418)
        assert 1 <= refused <= 4  # the requests in flight when the first 429 came back
        # the learnt limit is kept in the shared budget state: a later run (new clients, as a new
        # process would have) starts from it instead of paying for exchangeInfo's figure again
        again = await backfill(
            tmp_path / "second",
            ["coin_perp"],
            "1m",
            days=5,
            workers=4,
            endpoints=sim.endpoints,  # type: ignore[arg-type]
            state_dir=tmp_path / ".state",
            client_options=FAST,
        )
        assert again.markets["cm"].weight_limit == 40
        assert again.markets["cm"].weight > 3 * 40
        assert sim.stats.status_count("cm", 429) + sim.stats.status_count("cm", 418) == refused


@pytest.mark.parametrize("newest_first", [False, True])
async def test_funding_pages_complete_whichever_end_a_full_page_comes_from(
    tmp_path: Path, newest_first: bool
) -> None:
    # Binance does not document whether COIN-M's fundingRate answers the oldest or the newest 1000
    # rows of a window (its klines answer the newest). 500 days of 8h funding need two full pages:
    # with newest-first answers, paging forward from the first page's last row lost the older ~170
    # days. Both orders must give every row.
    from lake.ingest.funding import fetch_funding
    from lake.ingest.rest_client import RestClient

    async with sim_server(history_days=600, funding_newest_first=("cm",) if newest_first else ()) as sim:
        info = next(i for i in sim.market.universe.symbols["cm"].values() if i.contract_type == "PERPETUAL")
        end = sim.clock.now_ms() // FUNDING_MS * FUNDING_MS
        start = max(end - 500 * 86_400_000, -(-info.first_ms // FUNDING_MS) * FUNDING_MS)
        async with RestClient("cm", endpoints=sim.endpoints, state_dir=tmp_path, **FAST) as client:  # type: ignore[arg-type]
            got = await fetch_funding(client, info.symbol, start, end)
        want = [t for t in range(start, end, FUNDING_MS) if info.listed_at(t)]
        assert len(want) > 1000
        assert got["funding_time"].dt.epoch("ms").to_list() == want


async def test_the_done_line_counts_every_candle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The plain progress log's final line carries the candle count as of the end: it showed the
    count of the last 0.5 s refresh (100,400 of 172,800 in a 1s backfill)."""
    from lake.progress import Progress

    caplog.set_level("INFO", logger="lake")
    async with sim_server() as sim:
        with Progress(enabled=False, log_every=1e9) as progress:
            rep = await run(sim, tmp_path, ["usdt_perp"], days=3, progress=progress)
    done = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert len(done) == 1 and rep.candles > 0
    assert f"candles {rep.candles:,} " in done[0], (done, rep.candles)
