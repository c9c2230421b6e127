"""REST endpoints against a real simulator server with a plain aiohttp client."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import pytest

from lake.binance.markets import TRADE_TYPES
from lake.sim import SimServer
from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.testing import TEST_START, sim_server, test_config

NOW = to_ms(TEST_START)  # 2025-03-15 12:00:00, frozen
M5 = 300_000
PATH = {"spot": "/api/v3", "um": "/fapi/v1", "cm": "/dapi/v1"}
SYM = {"spot": "BTCUSDT", "um": "BTCUSDT", "cm": "BTCUSD_PERP"}


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.get(url, **kw) as r:
        return r.status, r.headers, await r.json(content_type=None)


async def klines(
    http: aiohttp.ClientSession, sim: SimServer, market: str, **params: Any
) -> tuple[int, Any, Any]:
    q = {"symbol": SYM[market], "interval": "5m", **{k: str(v) for k, v in params.items()}}
    return await get(http, f"{sim.base_url}{PATH[market]}/klines", params=q)


def opens(rows: list[list[Any]]) -> list[int]:
    return [r[0] for r in rows]


async def test_kline_rows_shape_and_forming_candle(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.clock.set(NOW + 150_000)  # 12:02:30: the 12:00 candle is forming
    status, _, rows = await klines(http, sim, "um", limit=3)
    assert status == 200 and len(rows) == 3
    for r in rows:
        assert len(r) == 12
        assert all(isinstance(r[i], int) for i in (0, 6, 8))
        assert all(isinstance(r[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
        assert r[6] == r[0] + M5 - 1
        assert r[11] == r[7] and float(r[11]) > 0  # USDⓈ-M's "ignore" field is not always "0"
    assert opens(rows) == [NOW - 2 * M5, NOW - M5, NOW]
    truth = sim.market.truth("usdt_perp", "5m", ["BTCUSDT"], NOW - 2 * M5, NOW + M5, closed_only=False)
    closed = [[float(r[i]) for i in (1, 2, 3, 4, 5, 7)] for r in rows[:2]]
    cols = ["open", "high", "low", "close", "volume", "quote_volume"]
    assert closed == [[t[c] for c in cols] for t in truth.head(2).iter_rows(named=True)]
    forming, final = rows[2], truth.row(2, named=True)
    assert float(forming[1]) == final["open"] and 0 < float(forming[5]) < final["volume"]
    # The forming candle is not in the (closed-only) truth.
    assert sim.market.truth("usdt_perp", "5m", ["BTCUSDT"], NOW - M5, NOW + M5, now=NOW + 150_000).height == 1


@pytest.mark.parametrize("market", ["spot", "um"])
async def test_selection_spot_and_usdm(sim: SimServer, http: aiohttp.ClientSession, market: str) -> None:
    start = NOW - 100 * M5
    _, _, rows = await klines(http, sim, market, startTime=start, limit=10)
    assert opens(rows) == [start + i * M5 for i in range(10)]
    _, _, rows = await klines(http, sim, market, startTime=start + 1, limit=2)  # filter on open time
    assert opens(rows) == [start + M5, start + 2 * M5]
    _, _, rows = await klines(http, sim, market, startTime=start, endTime=start + 4 * M5)  # end inclusive
    assert opens(rows) == [start + i * M5 for i in range(5)]
    _, _, rows = await klines(http, sim, market, endTime=start, limit=4)  # newest up to endTime
    assert opens(rows) == [start - 3 * M5, start - 2 * M5, start - M5, start]
    _, _, rows = await klines(http, sim, market, limit=2)  # no times: most recent, forming included
    assert opens(rows) == [NOW - M5, NOW]
    _, _, rows = await klines(http, sim, market)
    assert len(rows) == 500 and rows[-1][0] == NOW
    # startTime=0, limit=1 finds the first candle (listing discovery).
    recent = sim.market.info(market, sim.market.awkward.recent[market][0])
    q = {"symbol": recent.symbol, "interval": "1m", "startTime": "0", "limit": "1"}
    _, _, rows = await get(http, f"{sim.base_url}{PATH[market]}/klines", params=q)
    assert opens(rows) == [recent.first_ms]


async def test_selection_coinm(sim: SimServer, http: aiohttp.ClientSession) -> None:
    start = NOW - 100 * M5
    _, _, rows = await klines(http, sim, "cm", startTime=start, endTime=start + 20 * M5, limit=3)
    assert opens(rows) == [start + 18 * M5, start + 19 * M5, start + 20 * M5]  # most recent before endTime
    _, _, rows = await klines(http, sim, "cm", endTime=start, limit=2)
    assert opens(rows) == [start - M5, start]
    _, _, rows = await klines(http, sim, "cm", limit=2)
    assert opens(rows) == [NOW - M5, NOW]
    # startTime only: endTime = startTime + 200 days (capped at now), newest rows of that window.
    old = NOW - 300 * MS_PER_DAY
    q = {"symbol": "BTCUSD_PERP", "interval": "1d", "startTime": str(old), "limit": "2"}
    _, _, rows = await get(http, f"{sim.base_url}/dapi/v1/klines", params=q)
    assert len(rows) == 2 and rows[-1][0] == (old + 200 * MS_PER_DAY) // MS_PER_DAY * MS_PER_DAY
    status, _, body = await klines(http, sim, "cm", startTime=start - 201 * MS_PER_DAY, endTime=start)
    assert status == 400 and body["code"] == -1127


async def test_limits_and_errors(sim: SimServer, http: aiohttp.ClientSession) -> None:
    for market, top in (("spot", 1000), ("um", 1500), ("cm", 1500)):
        status, _, rows = await klines(http, sim, market, limit=top)
        assert status == 200 and len(rows) == top
        for bad in (top + 1, 0):
            status, _, body = await klines(http, sim, market, limit=bad)
            assert (status, body["code"]) == (400, -1130), (market, bad)
    base = f"{sim.base_url}/fapi/v1/klines"
    cases = [
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121, "Invalid symbol."),
        ({"symbol": "BTCUSDT", "interval": "7m"}, -1120, "Invalid interval."),
        ({"symbol": "BTCUSDT", "interval": "1s"}, -1120, "Invalid interval."),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "abc"}, -1100, None),
        ({"interval": "1m"}, -1102, None),
        ({"symbol": "BTCUSDT"}, -1102, None),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "20", "endTime": "10"}, -1023, None),
    ]
    for params, code, msg in cases:
        status, _, body = await get(http, base, params=params)
        assert status == 400 and body["code"] == code, params
        assert set(body) == {"code", "msg"} and (msg is None or body["msg"] == msg)
    status, _, body = await get(
        http, f"{sim.base_url}/dapi/v1/klines", params={"symbol": "BTCUSD_PERP", "interval": "1s"}
    )
    assert (status, body["code"]) == (400, -1120)  # 1s is spot only (tests/sim/test_seconds.py)


async def test_weights_and_headers(sim: SimServer, http: aiohttp.ClientSession) -> None:
    used = 0
    for limit, w in ((99, 1), (100, 2), (499, 2), (500, 5), (None, 5), (1000, 5), (1001, 10), (1500, 10)):
        params = {} if limit is None else {"limit": limit}
        _, headers, _ = await klines(http, sim, "um", **params)
        used += w
        assert headers["X-MBX-USED-WEIGHT-1M"] == str(used), limit
        assert "X-MBX-USED-WEIGHT" not in headers
    for limit in (1, 1000):
        _, headers, _ = await klines(http, sim, "spot", limit=limit)
    assert headers["X-MBX-USED-WEIGHT-1M"] == headers["X-MBX-USED-WEIGHT"] == "4"
    for market in ("spot", "um", "cm"):
        _, h1, _ = await get(http, f"{sim.base_url}{PATH[market]}/exchangeInfo")
        _, h2, body = await get(http, f"{sim.base_url}{PATH[market]}/time")
        assert int(h2["X-MBX-USED-WEIGHT-1M"]) - int(h1["X-MBX-USED-WEIGHT-1M"]) == 1
        assert body == {"serverTime": NOW}
    assert (await get(http, f"{sim.base_url}/api/v3/exchangeInfo"))[1]["X-MBX-USED-WEIGHT-1M"] == "45"
    sim.clock.advance(60_000)  # the window is the virtual UTC minute
    _, headers, _ = await get(http, f"{sim.base_url}/fapi/v1/time")
    assert headers["X-MBX-USED-WEIGHT-1M"] == "1"


async def test_429_then_418_then_recovery(http: aiohttp.ClientSession) -> None:
    async with sim_server(weight_limits={"spot": 6000, "um": 10, "cm": 2400}, ban_after=2) as sim:
        sim.clock.set(NOW + 15_000)
        for _ in range(2):
            status, headers, _ = await klines(http, sim, "um")  # weight 5 each
            assert status == 200
        status, headers, body = await klines(http, sim, "um")
        assert status == 429 and body["code"] == -1003 and "limit is 10 requests per minute" in body["msg"]
        assert headers["Retry-After"] == "45" and headers["X-MBX-USED-WEIGHT-1M"] == "10"  # frozen: virtual s
        status, headers, _ = await klines(http, sim, "um", limit=10)  # weight 1 does not fit either
        assert status == 429 and headers["X-MBX-USED-WEIGHT-1M"] == "10"
        # ban_after=2: the third request after 429s in the same window earns a ban.
        statuses = [(await klines(http, sim, "um"))[0] for _ in range(2)]
        assert statuses == [418, 418]
        _, headers, body = await klines(http, sim, "um")
        assert body["code"] == -1003 and "banned" in body["msg"] and int(headers["Retry-After"]) == 120
        assert (await klines(http, sim, "spot"))[0] == 200  # other markets are not affected
        sim.clock.advance(121_000)
        assert (await klines(http, sim, "um"))[0] == 200
        stats = sim.stats_json()["rest"]["um"]
        assert stats["status"]["429"] == 2 and stats["status"]["418"] == 3
        assert stats["max_used_weight"] <= 10 and not stats["over_limit"]
        assert stats["windows"] == [[NOW, 10], [NOW + 120_000, 5]]  # per virtual minute
        _, _, remote = await get(http, f"{sim.base_url}/_sim/stats")
        assert remote["rest"]["um"]["status"] == stats["status"]
        assert sim.stats.status_count("um", 418) == 3 and sim.stats.status_count("um", "5xx") == 0


async def test_retry_after_in_real_seconds(http: aiohttp.ClientSession) -> None:
    async with sim_server(weight_limits={"spot": 2, "um": 2400, "cm": 2400}, speed=60.0) as sim:
        sim.clock.set(NOW)
        assert (await klines(http, sim, "spot"))[0] == 200
        status, headers, _ = await klines(http, sim, "spot")
        assert status == 429 and headers["Retry-After"] == "1"  # 60 virtual s at 60x


async def test_ban_message_names_the_ban_end_in_server_time(http: aiohttp.ClientSession) -> None:
    # "IP banned until <ms>" is server time, whatever the clock speed (Retry-After is real seconds)
    limits = {"spot": 6000, "um": 5, "cm": 2400}
    async with sim_server(weight_limits=limits, speed=60.0, ban_after=0) as sim:
        assert (await klines(http, sim, "um"))[0] == 200
        before = sim.clock.now_ms()
        status, headers, body = await klines(http, sim, "um")
        after = sim.clock.now_ms()
        assert status == 418 and headers["Retry-After"] == "2"  # 120 virtual s at 60x
        until = int(body["msg"].split("banned until ")[1].split(".")[0])
        assert before + 120_000 <= until <= after + 120_000
        status, _, again = await klines(http, sim, "um")
        assert status == 418 and again["msg"] == body["msg"]  # the same ban, the same end


async def test_rejected_weight_can_count(http: aiohttp.ClientSession) -> None:
    limits = {"spot": 6000, "um": 6, "cm": 2400}
    async with sim_server(weight_limits=limits, count_rejected_weight=True, ban_after=100) as sim:
        await klines(http, sim, "um")
        _, headers, _ = await klines(http, sim, "um")
        assert headers["X-MBX-USED-WEIGHT-1M"] == "10"


async def test_exchange_info_fields(sim: SimServer, http: aiohttp.ClientSession) -> None:
    aw = sim.market.awkward
    _, _, spot = await get(http, f"{sim.base_url}/api/v3/exchangeInfo")
    assert spot["serverTime"] == NOW and spot["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}  # fmt: skip
    s = {x["symbol"]: x for x in spot["symbols"]}
    assert "onboardDate" not in s["BTCUSDT"] and s["BTCUSDT"]["status"] == "TRADING"
    assert s[aw.delisted["spot"][0]]["status"] == "BREAK"
    filters = {f["filterType"]: f for f in s["BTCUSDT"]["filters"]}
    assert set(filters) == {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.10000000" and isinstance(
        filters["LOT_SIZE"]["stepSize"], str
    )

    _, _, um = await get(http, f"{sim.base_url}/fapi/v1/exchangeInfo")
    assert um["rateLimits"][0]["limit"] == 2400
    u = {x["symbol"]: x for x in um["symbols"]}
    btc = u["BTCUSDT"]
    assert (btc["status"], btc["contractType"], btc["deliveryDate"], btc["marginAsset"]) == (
        "TRADING", "PERPETUAL", 4133404800000, "USDT")  # fmt: skip
    assert btc["onboardDate"] == sim.market.universe.history_start
    assert {"filterType": "MIN_NOTIONAL", "notional": "5"} in btc["filters"]
    gone = u[aw.delisted["um"][0]]
    assert gone["status"] == "CLOSE" and gone["deliveryDate"] == sim.market.info("um", gone["symbol"]).end_ms
    assert u[aw.delivered["um"][0]]["status"] == "DELIVERING"
    quarters = sorted((x["deliveryDate"], x["contractType"]) for x in um["symbols"] if x["status"] == "TRADING"
                      and x["contractType"] != "PERPETUAL")  # fmt: skip
    assert [c for _, c in quarters] == ["CURRENT_QUARTER", "NEXT_QUARTER"]

    _, _, cm = await get(http, f"{sim.base_url}/dapi/v1/exchangeInfo")
    c = {x["symbol"]: x for x in cm["symbols"]}
    assert "status" not in c["BTCUSD_PERP"] and c["BTCUSD_PERP"]["contractStatus"] == "TRADING"
    assert c["BTCUSD_PERP"]["contractSize"] == 100 and c["ETHUSD_PERP"]["contractSize"] == 10
    # The lake's trade-type filter sees exactly the simulator's trading symbols.
    docs = {"spot": spot, "um": um, "cm": cm}
    for name, tt in TRADE_TYPES.items():
        got = sorted(x["symbol"] for x in docs[tt.market_name]["symbols"] if tt.accepts(x))
        assert got == sorted(sim.market.symbols(name, trading_at=NOW)), name


async def test_spot_exchange_info_params(sim: SimServer, http: aiohttp.ClientSession) -> None:
    base = f"{sim.base_url}/api/v3/exchangeInfo"
    _, _, one = await get(http, base, params={"symbol": "ETHBTC"})
    assert [x["symbol"] for x in one["symbols"]] == ["ETHBTC"]
    _, _, two = await get(http, base, params={"symbols": '["BTCUSDT","ETHUSDT"]'})
    assert [x["symbol"] for x in two["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    status, _, body = await get(http, base, params={"symbol": "NOPE"})
    assert (status, body["code"]) == (400, -1121)
    _, _, brk = await get(http, base, params={"symbolStatus": "BREAK"})
    assert [x["symbol"] for x in brk["symbols"]] == sim.market.awkward.delisted["spot"]


async def test_microsecond_time_unit(sim: SimServer, http: aiohttp.ClientSession) -> None:
    us = {"X-MBX-TIME-UNIT": "MICROSECOND"}
    q = {"symbol": "BTCUSDT", "interval": "5m", "startTime": str((NOW - M5) * 1000), "limit": "1"}
    _, _, rows = await get(http, f"{sim.base_url}/api/v3/klines", params=q, headers=us)
    assert rows[0][0] == (NOW - M5) * 1000 and rows[0][6] == NOW * 1000 - 1
    _, _, ms_rows = await get(http, f"{sim.base_url}/api/v3/klines", params=q)
    assert ms_rows[0][0] == NOW - M5 and ms_rows[0][1:6] == rows[0][1:6]


async def test_funding_rate(sim: SimServer, http: aiohttp.ClientSession) -> None:
    h8 = 8 * 3_600_000
    base = f"{sim.base_url}/fapi/v1/fundingRate"
    _, headers, rows = await get(http, base, params={"symbol": "BTCUSDT", "limit": "3"})

    def slots(rows: list[dict[str, Any]]) -> list[int]:  # fundingTime is a few ms late at times
        return [r["fundingTime"] - r["fundingTime"] % 3_600_000 for r in rows]

    assert slots(rows) == [NOW - 4 * 3_600_000 - h8 * k for k in (2, 1, 0)]
    assert set(rows[0]) == {"symbol", "fundingTime", "fundingRate", "markPrice"}
    assert headers["X-MBX-USED-WEIGHT-1M"] == "0"  # its own 500/5min budget
    start = to_ms("2025-03-01")
    _, _, rows = await get(http, base, params={"symbol": "BTCUSDT", "startTime": str(start), "limit": "2"})
    assert slots(rows) == [start, start + h8]
    _, _, rows = await get(
        http, base, params={"symbol": "BTCUSDT", "startTime": str(start), "endTime": str(start)}
    )
    assert len(rows) == 1
    _, _, all_syms = await get(http, base, params={"limit": "1000"})
    assert {r["symbol"] for r in all_syms} >= {"BTCUSDT", "ETHUSDT", "BTCUSDC"}
    assert not any("_" in r["symbol"] for r in all_syms)
    _, _, body = await get(
        http, f"{sim.base_url}/dapi/v1/fundingRate", params={"symbol": "BTCUSD_PERP", "limit": "1"}
    )
    assert len(body) == 1
    deli = sim.market.symbols("coin_deli", trading_at=NOW)[0]
    assert (await get(http, f"{sim.base_url}/dapi/v1/fundingRate", params={"symbol": deli}))[2] == []
    status, _, body = await get(http, f"{sim.base_url}/dapi/v1/fundingRate")
    assert (status, body["code"]) == (400, -1102)


async def test_funding_has_its_own_budget(http: aiohttp.ClientSession) -> None:
    async with sim_server(test_config(funding_limit_5m=2)) as sim:
        url = f"{sim.base_url}/fapi/v1/fundingRate?symbol=BTCUSDT"
        assert [(await get(http, url))[0] for _ in range(3)] == [200, 200, 429]
        sim.clock.advance(300_000)
        assert (await get(http, url))[0] == 200


async def test_listing_status_follows_the_clock(sim: SimServer, http: aiohttp.ClientSession) -> None:
    info = sim.market.info("spot", sim.market.awkward.recent["spot"][0])
    sim.clock.set(info.first_ms - 60_000)
    q = {"symbol": info.symbol, "interval": "1m"}
    status, _, body = await get(http, f"{sim.base_url}/api/v3/klines", params=q)
    assert (status, body["code"]) == (400, -1121)  # not listed yet
    sim.clock.set(info.first_ms + 90_000)
    _, _, rows = await get(http, f"{sim.base_url}/api/v3/klines", params=q)
    assert opens(rows) == [info.first_ms, info.first_ms + 60_000]
    assert dt.datetime.fromtimestamp(rows[0][0] / 1000, tz=dt.UTC).hour == 8


async def test_unverified_knobs(http: aiohttp.ClientSession) -> None:
    async with sim_server(start_in_candle=True, um_recent_rows=True, futures_retry_after=False,
                          weight_limits={"spot": 6000, "um": 5, "cm": 2400}) as sim:  # fmt: skip
        start = NOW - 100 * M5
        _, _, rows = await klines(http, sim, "spot", startTime=start + 1, limit=1)
        assert opens(rows) == [start]  # the candle holding startTime is included
        _, _, rows = await klines(http, sim, "um", startTime=start, endTime=start + 10 * M5, limit=2)
        assert opens(rows) == [start + 9 * M5, start + 10 * M5]  # newest rows of the range
        status, headers, _ = await klines(http, sim, "um")  # weight 5 on top of 1
        assert status == 429 and "Retry-After" not in headers


async def test_sliding_weight_window(http: aiohttp.ClientSession) -> None:
    async with sim_server(weight_window="sliding", weight_limits={"spot": 4, "um": 2400, "cm": 2400}) as sim:
        sim.clock.set(NOW + 50_000)
        assert (await klines(http, sim, "spot"))[0] == 200  # weight 2 at :50
        sim.clock.advance(20_000)  # next minute: a fixed window would have reset
        _, headers, _ = await klines(http, sim, "spot")
        assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
        status, headers, _ = await klines(http, sim, "spot")
        assert status == 429 and headers["Retry-After"] == "40"  # until the first request leaves
        sim.clock.advance(40_000)
        _, headers, _ = await klines(http, sim, "spot")
        assert headers["X-MBX-USED-WEIGHT-1M"] == "4"
