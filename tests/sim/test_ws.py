"""Websocket kline streams: control messages, closing events equal to the truth, limits, faults."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from lake.binance.klines import parse_ws_kline
from lake.sim import SimServer
from lake.sim.clock import to_ms
from lake.sim.testing import TEST_START, sim_server

NOW = to_ms(TEST_START)
MIN = 60_000


async def recv(ws: aiohttp.ClientWebSocketResponse, wait: float = 3.0) -> Any:
    msg = await ws.receive(timeout=wait)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def nothing(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> bool:
    try:
        await ws.receive(timeout=wait)
    except TimeoutError:
        return True
    return False


async def closed(ws: aiohttp.ClientWebSocketResponse, wait: float = 3.0) -> int | None:
    msg = await ws.receive(timeout=wait)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), msg
    return ws.close_code


async def test_control_messages(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.endpoints.ws["spot"] + "/ws") as ws:
        await ws.send_json(
            {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@kline_5m"], "id": 1}
        )
        assert await recv(ws) == {"result": None, "id": 1}
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": "abc"})
        assert await recv(ws) == {"result": ["btcusdt@kline_1m", "ethusdt@kline_5m"], "id": "abc"}
        await ws.send_json({"method": "UNSUBSCRIBE", "params": ["ethusdt@kline_5m"], "id": 2})
        assert await recv(ws) == {"result": None, "id": 2}
        await ws.send_json({"method": "GET_PROPERTY", "params": ["combined"], "id": 3})
        assert await recv(ws) == {"result": False, "id": 3}
        await asyncio.sleep(1.0)  # stay under 5 messages per second
        await ws.send_json({"method": "SET_PROPERTY", "params": ["combined", True], "id": 4})
        assert await recv(ws) == {"result": None, "id": 4}
        await ws.send_str("not json")
        assert (await recv(ws))["code"] == 3
        await ws.send_json({"method": "NOPE", "id": 5})
        reply = await recv(ws)
        assert reply["code"] == 2 and reply["id"] == 5
        await asyncio.sleep(1.0)
        await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": None})
        assert await recv(ws) == {"result": ["btcusdt@kline_1m"], "id": None}


async def test_closing_event_equals_truth(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.endpoints.ws["um"] + "/ws/btcusdt@kline_1m") as ws:
        await asyncio.sleep(0.05)
        assert await nothing(ws, 0.2)  # frozen clock: nothing closes
        sim.clock.advance(MIN)
        ev = await recv(ws)
        k = ev["k"]
        assert ev["e"] == "kline" and ev["s"] == "BTCUSDT" and k["x"] is True and k["i"] == "1m"
        assert (k["t"], k["T"]) == (NOW, NOW + MIN - 1) and ev["E"] > k["T"]
        assert list(k) == [
            "t",
            "T",
            "s",
            "i",
            "f",
            "L",
            "o",
            "c",
            "h",
            "l",
            "v",
            "n",
            "x",
            "q",
            "V",
            "Q",
            "B",
        ]
        truth = sim.market.truth("usdt_perp", "1m", ["BTCUSDT"], NOW, NOW + MIN).row(0, named=True)
        assert [float(k[c]) for c in ("o", "h", "l", "c", "v", "q", "V", "Q")] == [
            truth[c] for c in ("open", "high", "low", "close", "volume", "quote_volume",
                               "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume")
        ]  # fmt: skip
        assert k["n"] == truth["trade_num"] == k["L"] - k["f"] + 1
        # Same strings as the REST row of that candle.
        q = {"symbol": "BTCUSDT", "interval": "1m", "startTime": str(NOW), "limit": "1"}
        async with http.get(f"{sim.base_url}/fapi/v1/klines", params=q) as r:
            row = (await r.json())[0]
        assert parse_ws_kline(ev).row[:11] == tuple(row[:11])  # field 11, "ignore", is not in the event
        sim.clock.advance(3 * MIN)  # several boundaries at once: one event each, in order
        assert [(await recv(ws))["k"]["t"] for _ in range(3)] == [NOW + MIN, NOW + 2 * MIN, NOW + 3 * MIN]


async def test_combined_stream_wrapper(sim: SimServer, http: aiohttp.ClientSession) -> None:
    url = sim.endpoints.ws["cm"] + "/stream?streams=btcusd_perp@kline_5m/ethusd_perp@kline_1m"
    async with http.ws_connect(url) as ws:
        await asyncio.sleep(0.05)
        sim.clock.advance(5 * MIN)
        got = [await recv(ws) for _ in range(6)]
        assert all(set(m) == {"stream", "data"} for m in got)
        streams = [m["stream"] for m in got]
        # One event per closing boundary, in subscription order within a boundary.
        assert streams == ["ethusd_perp@kline_1m"] * 4 + ["btcusd_perp@kline_5m", "ethusd_perp@kline_1m"]
        five = got[4]["data"]["k"]
        truth = sim.market.truth("coin_perp", "5m", ["BTCUSD_PERP"], NOW, NOW + 5 * MIN).row(0, named=True)
        assert float(five["v"]) == truth["volume"] and float(five["q"]) == truth["quote_volume"]
        assert five["i"] == "5m" and got[4]["data"]["s"] == "BTCUSD_PERP"


async def test_no_events_in_maintenance(sim: SimServer, http: aiohttp.ClientSession) -> None:
    a, b = sim.market.awkward.maintenance["um"][-1]
    sim.clock.set(a - 2 * MIN)
    async with http.ws_connect(sim.endpoints.ws["um"] + "/ws/btcusdt@kline_1m/ethusdt@kline_1h") as ws:
        await asyncio.sleep(0.05)
        sim.clock.set(a + 5 * MIN)
        got = [(await recv(ws))["k"]["t"] for _ in range(2)]
        assert got == [a - 2 * MIN, a - MIN]
        assert await nothing(ws)
        sim.clock.set(b + MIN + 1000)
        got = [(await recv(ws))["k"] for _ in range(2)]
        assert await nothing(ws)
        # The 1h candle holding the window's first minutes closes (it has data); the next hour, entirely
        # inside the window, gets no event; 1m resumes at the window's end.
        hour = a - a % 3_600_000
        assert [(k["s"], k["i"], k["t"]) for k in got] == [("ETHUSDT", "1h", hour), ("BTCUSDT", "1m", b)]
        assert b - hour < 3 * 3_600_000


async def test_monthly_and_weekly_close_at_calendar_boundaries(http: aiohttp.ClientSession) -> None:
    async with sim_server(start="2025-03-31T23:59:00Z", history_days=40) as sim:
        url = sim.endpoints.ws["um"] + "/stream?streams=ethusdt@kline_1M/ethusdt@kline_1w/ethusdt@kline_1d"
        async with http.ws_connect(url) as ws:
            await asyncio.sleep(0.05)
            sim.clock.advance(MIN)
            got = {m["stream"]: m["data"]["k"] for m in [await recv(ws, 10) for _ in range(2)]}
            assert set(got) == {"ethusdt@kline_1M", "ethusdt@kline_1d"}  # 2025-04-01 is a Tuesday
            assert got["ethusdt@kline_1M"]["t"] == to_ms("2025-03-01")
            truth = sim.market.truth("usdt_perp", "1M", ["ETHUSDT"], "2025-03-01", "2025-04-01").row(
                0, named=True
            )
            assert float(got["ethusdt@kline_1M"]["c"]) == truth["close"]
            assert got["ethusdt@kline_1M"]["n"] == truth["trade_num"]


async def test_stream_cap_closes_connection(sim: SimServer, http: aiohttp.ClientSession) -> None:
    names = [f"s{i}usd_perp@kline_1m" for i in range(201)]  # COIN-M: 200 per connection
    async with http.ws_connect(sim.endpoints.ws["cm"] + "/stream?streams=" + "/".join(names)) as ws:
        assert await closed(ws) == 1008
    async with http.ws_connect(sim.endpoints.ws["cm"] + "/stream?streams=" + "/".join(names[:200])) as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": [names[200]], "id": 1})
        assert await closed(ws) == 1008


async def test_incoming_message_rate_limit(sim: SimServer, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(sim.endpoints.ws["spot"] + "/ws") as ws:
        for i in range(6):  # spot: 5 per second
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": i})
        replies = 0
        while True:
            msg = await ws.receive(timeout=3)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            replies += 1
        assert replies == 5 and ws.close_code == 1008
    assert sim.stats.snapshot()["ws"]["closed_rate_limit"] == 1


async def test_intermediate_updates_are_capped(http: aiohttp.ClientSession) -> None:
    async with (
        sim_server(speed=600.0, ws_intermediate=True, ws_intermediate_per_s=4.0) as sim,
        http.ws_connect(sim.endpoints.ws["um"] + "/ws/btcusdt@kline_1h") as ws,
    ):
        t0 = time.monotonic()
        partial = []
        while time.monotonic() - t0 < 1.0:
            try:
                ev = await recv(ws, wait=0.5)
            except TimeoutError:
                continue
            assert ev["k"]["x"] is False
            partial.append(ev)
        assert 2 <= len(partial) <= 6
        vols = [float(e["k"]["v"]) for e in partial]
        assert vols == sorted(vols) and vols[-1] > 0  # the forming candle grows


async def test_fault_skip_and_delay_closing_events(sim: SimServer, http: aiohttp.ClientSession) -> None:
    sim.control_faults({"ws_skip_close_symbols": ["BTCUSDT"], "ws_close_delay_s": 20})
    async with http.ws_connect(
        sim.endpoints.ws["um"] + "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    ) as ws:
        await asyncio.sleep(0.05)
        sim.clock.advance(MIN + 10_000)
        assert await nothing(ws)  # held back 20 s (virtual)
        sim.clock.advance(10_001)
        ev = await recv(ws)
        assert ev["stream"] == "ethusdt@kline_1m" and ev["data"]["E"] >= NOW + MIN + 20_000
        assert await nothing(ws)


async def test_fault_drop_connections(http: aiohttp.ClientSession) -> None:
    async with sim_server() as sim:
        sim.faults.update({"ws_drop_every_s": 0.2})
        async with http.ws_connect(sim.endpoints.ws["spot"] + "/ws/btcusdt@kline_1m") as ws:
            msg = await ws.receive(timeout=3)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert sim.stats.snapshot()["ws"]["dropped"] == 1


@pytest.mark.parametrize("market", ["spot", "um", "cm"])
async def test_all_market_paths(sim: SimServer, http: aiohttp.ClientSession, market: str) -> None:
    sym = {"spot": "ethbtc", "um": "btcusdc", "cm": "btcusd_perp"}[market]
    async with http.ws_connect(f"{sim.endpoints.ws[market]}/ws/{sym}@kline_1m") as ws:
        await asyncio.sleep(0.05)
        sim.clock.advance(MIN)
        assert (await recv(ws))["s"] == sym.upper()


async def test_server_pings_and_lifetime(http: aiohttp.ClientSession) -> None:
    beats = {"spot": 0.2, "um": 0.2, "cm": 0.2}
    async with (
        sim_server(ws_heartbeat_s=beats, ws_lifetime_s=3600) as sim,
        http.ws_connect(sim.endpoints.ws["spot"] + "/ws/btcusdt@kline_1m", autoping=False) as ws,
    ):
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.PING
        await ws.pong(msg.data)
        sim.clock.advance(3_600_000)
        kinds = set()
        while not ws.closed:
            m = await ws.receive(timeout=3)
            kinds.add(m.type)
            if m.type == aiohttp.WSMsgType.PING:
                await ws.pong(m.data)
            if m.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert aiohttp.WSMsgType.CLOSE in kinds and ws.close_code == 1000


async def test_quiet_candles_can_skip_the_closing_event(http: aiohttp.ClientSession) -> None:
    async with sim_server(ws_close_quiet=False) as sim:
        sym = sim.market.awkward.illiquid["um"][0]
        quiet = sim.market.zero_volume_opens("um", sym, NOW - 86_400_000, NOW)[-1]
        start, end = quiet - 2 * MIN, quiet + 2 * MIN
        sim.clock.set(start)
        async with http.ws_connect(f"{sim.endpoints.ws['um']}/ws/{sym.lower()}@kline_1m") as ws:
            await asyncio.sleep(0.05)
            sim.clock.set(end)
            got = []
            while True:
                try:
                    got.append((await recv(ws, 0.5))["k"]["t"])
                except TimeoutError:
                    break
        truth = sim.market.truth("um", "1m", [sym], start, end)
        traded = [
            int(t.timestamp() * 1000)
            for t, v in zip(truth["candle_begin_time"], truth["volume"], strict=True)
            if v > 0
        ]
        assert quiet not in got and got == traded and len(got) >= 2


async def test_server_shutdown_notice_then_close(sim: SimServer, http: aiohttp.ClientSession) -> None:
    url = f"{sim.endpoints.ws['spot']}/stream?streams=btcusdt@kline_1m"
    async with http.ws_connect(url) as ws, http.ws_connect(f"{sim.endpoints.ws['um']}/ws") as other:
        await asyncio.sleep(0.05)
        body = {"ws_shutdown": {"notice_s": 0.5, "market": "spot"}}
        async with http.post(f"{sim.base_url}/_sim/faults", json=body) as r:
            assert r.status == 200
            assert (await r.json())["applied"] == [
                {"action": "ws_shutdown", "notice_s": 0.5, "market": "spot"}
            ]
        t0 = time.monotonic()
        assert await recv(ws) == {"e": "serverShutdown", "E": NOW}
        assert await closed(ws) == 1001 and time.monotonic() - t0 >= 0.4
        assert not other.closed and await nothing(other)  # only the market announced
    assert sim.stats.ws["shutdown_notices"] == 1
