"""Review of the REST backfill path (klines, weight, pagination, funding, CLI) against Binance's
documented behaviour: each test here failed before the fix it names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lake.errors import IncompleteError
from lake.ingest.backfill import BackfillReport
from lake.sim.testing import sim_server
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines
from lake.store.paths import series_dir
from tests.ingest.test_backfill_sim import run


async def test_a_failed_partition_write_is_reported_not_lost(tmp_path: Path) -> None:
    # A write that fails (here: the series' lock path is a directory, as a broken disk or a
    # permission problem would fail it) ran in a fire-and-forget future whose exception nobody
    # retrieved: the run said BTCUSDT was "complete" while none of its candles reached the lake.
    lock = LakeFS(tmp_path).lock_dir / (series_dir("klines", "usdt_perp", "1m", "BTCUSDT") + ".lock")
    lock.mkdir(parents=True)
    async with sim_server() as sim:
        with pytest.raises(IncompleteError) as ei:
            await run(sim, tmp_path, ["usdt_perp"], interval="1m", days=20, symbols=["BTCUSDT", "ETHUSDT"])
    rep: BackfillReport = ei.value.report  # type: ignore[attr-defined]
    by = {s.symbol: s for s in rep.series}
    assert by["BTCUSDT"].status == "incomplete" and by["BTCUSDT"].written == 0
    assert by["ETHUSDT"].status == "complete" and by["ETHUSDT"].missing == []
    # every day of the range is named (21 daily partitions: the range starts mid-day)
    assert len(by["BTCUSDT"].missing) == 21
    assert all("not written" in m and "Is a directory" in m for m in by["BTCUSDT"].missing)
    stored = scan_klines(tmp_path, "usdt_perp", "1m").collect()
    assert stored["symbol"].unique().to_list() == ["ETHUSDT"]
    assert stored.height == by["ETHUSDT"].written == by["ETHUSDT"].fetched


async def test_recheck_with_an_unknown_symbol_leaves_the_confirmed_empty_record_alone(tmp_path: Path) -> None:
    # `--recheck` forgets the confirmed-empty ranges it is about to re-derive. It forgot them while
    # planning, before a shared whitelist's unknown symbol stopped the run: a typo in --symbols
    # erased the lake's record of every maintenance hole, and nothing re-derived it.
    from lake.errors import NotFoundError
    from lake.store.meta import read_empty_ranges

    async with sim_server() as sim:
        await run(sim, tmp_path, ["usdt_perp"], days=5, symbols=["BTCUSDT"])
        before = read_empty_ranges(tmp_path, "usdt_perp", "5m", "BTCUSDT")
        assert len(before) >= 1
        with pytest.raises(NotFoundError, match="NOPEUSDT"):
            await run(
                sim,
                tmp_path,
                ["usdt_spot", "usdt_perp"],
                days=5,
                symbols=["BTCUSDT", "NOPEUSDT"],
                recheck=True,
            )
        assert read_empty_ranges(tmp_path, "usdt_perp", "5m", "BTCUSDT") == before
        # a recheck that does run re-derives the same record
        rep = await run(sim, tmp_path, ["usdt_perp"], days=5, symbols=["BTCUSDT"], recheck=True)
        assert rep.candles == 0 and rep.holes > 0
        assert read_empty_ranges(tmp_path, "usdt_perp", "5m", "BTCUSDT") == before


def test_a_start_in_the_future_is_a_one_line_error(tmp_path: Path) -> None:
    # `--start` after now has nothing to fetch: the run said "1 symbols (up_to_date 1)" and exited
    # 0, as if the lake held that future. The check needs no network (the URL is unreachable).
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", "backfill", "--source", "rest", "--type", "usdt_perp",
         "--start", "2999-01-01", "--root", str(tmp_path), "--rest-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "lake: error:" in ln]
    assert errors == ["lake: error: --start 2999-01-01 is in the future"], res.stderr
    assert "Traceback" not in res.stderr and "cannot reach" not in res.stderr


class _FuturesLike:
    """A minimal COIN-M-like server: a clock running ``speed``× real time, exchangeInfo advertising
    6000 weight a minute, and 429s worded as the futures error-code pages word them."""

    def __init__(self, speed: float = 60.0) -> None:
        import time

        self._t0 = time.monotonic()
        self.speed = speed
        self.refuse = 0
        self.message = ""
        self.url = ""
        self._runner: Any = None

    def now_ms(self) -> int:
        import time

        return 1_741_000_000_000 + int((time.monotonic() - self._t0) * 1000 * self.speed)

    async def start(self) -> _FuturesLike:
        from aiohttp import web

        async def time_(_: web.Request) -> web.Response:
            return web.json_response({"serverTime": self.now_ms()})

        async def info(_: web.Request) -> web.Response:
            limits = [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ]
            sym = {"symbol": "BTCUSD_PERP", "contractStatus": "TRADING", "contractType": "PERPETUAL"}
            return web.json_response({"serverTime": self.now_ms(), "rateLimits": limits, "symbols": [sym]})

        async def klines(request: web.Request) -> web.Response:
            if self.refuse > 0:
                self.refuse -= 1
                return web.json_response({"code": -1003, "msg": self.message}, status=429)
            t = int(request.query["startTime"])
            return web.json_response([[t, "1", "1", "1", "1", "1", t + 59_999, "1", 1, "1", "1", "0"]])

        app = web.Application()
        app.router.add_get("/dapi/v1/time", time_)
        app.router.add_get("/dapi/v1/exchangeInfo", info)
        app.router.add_get("/dapi/v1/klines", klines)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


@pytest.mark.parametrize(
    ("message", "learnt"),
    [
        # the futures wording (USDⓈ-M and COIN-M error-code pages): "requests per minute"
        (
            "Too many requests; current limit is 2400 requests per minute. Please use the websocket "
            "for live updates to avoid polling the API.",
            2400,
        ),
        # the spot wording
        (
            "Too much request weight used; current limit is 2400 request weight per 1 MINUTE. Please "
            "use WebSocket Streams for live updates to avoid polling the API.",
            2400,
        ),
        # a wording naming the IP (reported for futures; not in the error-code pages)
        ("Too many requests; current limit of IP(10.1.2.3) is 2400 requests per minute.", 2400),
        ("Too many requests queued.", 6000),
    ],
)
async def test_the_limit_a_futures_429_names_is_learnt(message: str, learnt: int) -> None:
    # COIN-M's exchangeInfo may advertise 6000 while 2400 is enforced; the client adopts the limit
    # a 429 names. It only understood spot's wording, so on the futures markets (the case the
    # learning exists for) every window earned 429s again, and repeated 429s earn a 418 ban.
    from lake.ingest.rest_client import RestClient

    srv = await _FuturesLike().start()
    try:
        async with RestClient("cm", base_url=srv.url, calibrate_s=0.05) as c:
            await c.exchange_info()
            assert c.governor.limit == 6000
            srv.refuse, srv.message = 1, message
            t = srv.now_ms() // 60_000 * 60_000 - 60_000
            rows = await c.klines("BTCUSD_PERP", "1m", start_ms=t, end_ms=t + 59_999, limit=1)
            assert rows[0][0] == t and c.stats.status[429] == 1
            assert c.governor.limit == learnt
    finally:
        await srv.stop()


async def test_a_symbol_given_as_a_plain_string_is_one_symbol(tmp_path: Path) -> None:
    # backfill(symbols="BTCUSDT") iterated the string's characters ("unknown symbols: B, T, C, …")
    async with sim_server() as sim:
        rep = await run(sim, tmp_path, ["usdt_perp"], symbols="BTCUSDT", days=1)
    assert [s.symbol for s in rep.series] == ["BTCUSDT"]
