"""Control endpoints: clock, faults (REST failures, forced 429s, listing changes), info and stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from lake.sim import SimServer
from lake.sim.clock import to_ms
from lake.sim.testing import TEST_START, sim_server

NOW = to_ms(TEST_START)
MIN = 60_000


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_clock_endpoint(sim: SimServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.base_url}/_sim/clock"
    assert (await get(http, url))[1] == {"now": NOW, "iso": "2025-03-15T12:00:00Z", "speed": 0.0}
    assert (await post(http, url, {"advance": 90_000}))[1]["now"] == NOW + 90_000
    assert (await post(http, url, {"advance_s": 30}))[1]["now"] == NOW + 120_000
    assert (await post(http, url, {"set": "2025-03-16T00:00:00Z"}))[1]["now"] == to_ms("2025-03-16")
    assert (await get(http, f"{sim.base_url}/api/v3/time"))[1] == {"serverTime": to_ms("2025-03-16")}
    status, body = await post(http, url, {"speed": 1000})
    assert status == 200 and body["speed"] == 1000
    await asyncio.sleep(0.05)
    assert sim.clock.now_ms() > to_ms("2025-03-16") + 10_000
    assert (await post(http, url, {"set": "not a time"}))[0] == 400


async def test_faults_roundtrip_and_validation(sim: SimServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.base_url}/_sim/faults"
    status, body = await get(http, url)
    assert status == 200 and body["rest_error_rate"] == 0.0 and body["wrong_checksums"] == {}
    status, body = await post(http, url, {"ws_skip_close_symbols": ["BTCUSDT"], "ws_close_delay_s": 3})
    assert status == 200 and body["ws_skip_close_symbols"] == ["BTCUSDT"] and body["applied"] == []
    assert sim.faults.ws_close_delay_s == 3.0
    assert (await post(http, url, {"no_such_knob": 1}))[0] == 400
    assert (await post(http, url, {"rest_error_rate": "lots"}))[0] == 400


async def test_rest_errors_are_deterministic(http: aiohttp.ClientSession) -> None:
    async def statuses() -> list[int]:
        async with sim_server() as sim:
            sim.control_faults({"rest_error_rate": 0.5, "seed": 7})
            out = [(await get(http, f"{sim.base_url}/fapi/v1/time"))[0] for _ in range(12)]
            assert sim.stats.status_count("um", "5xx") == out.count(503)
            return out

    first = await statuses()
    assert set(first) == {200, 503} and first == await statuses()


async def test_rest_error_body_and_hang(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.control_faults({"rest_error_rate": 1.0, "rest_error_status": 500})
    status, body = await get(http, f"{sim.base_url}/api/v3/klines?symbol=BTCUSDT&interval=1m")
    assert status == 500 and body["code"] == -1001
    sim.control_faults({"rest_error_rate": 0.0, "rest_hang_rate": 1.0, "rest_hang_s": 0.3})
    t0 = time.monotonic()
    status, body = await get(http, f"{sim.base_url}/fapi/v1/time")
    assert status == 504 and body["code"] == -1007 and time.monotonic() - t0 >= 0.3
    timeout = aiohttp.ClientTimeout(total=0.1)
    try:
        await get(http, f"{sim.base_url}/fapi/v1/time", timeout=timeout)
        raise AssertionError("expected a client timeout")
    except TimeoutError:
        pass
    await asyncio.sleep(0.3)  # let the hanging handler finish before the server stops


async def test_force_429(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.control_faults({"force_429": 2})
    url = f"{sim.base_url}/dapi/v1/klines?symbol=BTCUSD_PERP&interval=1m&limit=10"
    results = []
    for _ in range(3):
        async with http.get(url) as r:
            results.append((r.status, r.headers.get("Retry-After"), r.headers["X-MBX-USED-WEIGHT-1M"]))
    assert results == [(429, "60", "0"), (429, "60", "0"), (200, None, "1")]
    assert sim.faults.force_429 == 0


async def test_delist_and_list_mid_run(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.clock.set(NOW + 30_000)
    _, body = await post(http, f"{sim.base_url}/_sim/faults", {
        "delist": [{"market": "um", "symbol": "ETHUSDT"}],
        "list": [{"market": "um", "symbol": "NEWUSDT"}, {"market": "spot", "symbol": "XRPUSDT"}],
    })  # fmt: skip
    assert [a["action"] for a in body["applied"]] == ["delist", "list", "list"]
    ws = await http.ws_connect(sim.endpoints.ws["um"] + "/stream?streams=ethusdt@kline_1m/newusdt@kline_1m")
    try:
        await asyncio.sleep(0.05)
        sim.clock.set(NOW + 3 * MIN + 30_000)
        got = [
            (m["data"]["s"], m["data"]["k"]["t"])
            for m in [await ws.receive_json(timeout=3) for _ in range(3)]
        ]
        # ETHUSDT's last candle is the minute it was delisted in; NEWUSDT starts the minute after.
        assert got == [("ETHUSDT", NOW), ("NEWUSDT", NOW + MIN), ("NEWUSDT", NOW + 2 * MIN)]
    finally:
        await ws.close()
    _, info = await get(http, f"{sim.base_url}/fapi/v1/exchangeInfo")
    syms = {s["symbol"]: s for s in info["symbols"]}
    assert syms["ETHUSDT"]["status"] == "CLOSE" and syms["ETHUSDT"]["deliveryDate"] == NOW + MIN
    assert syms["NEWUSDT"]["status"] == "TRADING" and syms["NEWUSDT"]["onboardDate"] == NOW + MIN
    _, rows = await get(http, f"{sim.base_url}/fapi/v1/klines?symbol=ETHUSDT&interval=1m&limit=3")
    assert [r[0] for r in rows] == [NOW - 2 * MIN, NOW - MIN, NOW]
    _, rows = await get(http, f"{sim.base_url}/fapi/v1/klines?symbol=NEWUSDT&interval=1m")
    assert [r[0] for r in rows] == [NOW + MIN, NOW + 2 * MIN, NOW + 3 * MIN]  # last one forming
    truth = sim.market.truth("usdt_perp", "1m", ["NEWUSDT"])
    assert truth.height == 2 and "NEWUSDT" in sim.market.symbols("usdt_perp", trading_at=sim.clock.now_ms())
    _, spot = await get(http, f"{sim.base_url}/api/v3/exchangeInfo?symbol=XRPUSDT")
    assert spot["symbols"][0]["status"] == "TRADING"  # the delisted spot symbol is back
    assert len(sim.market.info("spot", "XRPUSDT").segments) == 2


async def test_info_and_stats_reset(sim: SimServer, http: aiohttp.ClientSession) -> None:
    _, info = await get(http, f"{sim.base_url}/_sim/info")
    assert info["base_url"] == sim.base_url and info["seed"] == 1
    assert info["symbols"]["coin_perp"][0] == "BTCUSD_PERP"
    assert info["awkward"]["delisted"]["um"] == sim.market.awkward.delisted["um"]
    assert info["endpoints"]["ws"]["um"].endswith("/ws-um/market")
    await get(http, f"{sim.base_url}/fapi/v1/klines?symbol=BTCUSDT&interval=1m")
    _, stats = await get(http, f"{sim.base_url}/_sim/stats")
    assert stats["rest"]["um"]["requests"] == 1 and stats["used_weight"]["um"] == 5
    _, stats = await post(http, f"{sim.base_url}/_sim/stats/reset", {"windows": True})
    assert stats["rest"]["um"]["requests"] == 0 and stats["used_weight"]["um"] == 0
