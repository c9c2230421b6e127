"""``WsShard`` against the simulator's websocket server (a real aiohttp server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from lake.live.ws import WsShard
from lake.sim.clock import to_ms
from lake.sim.testing import TEST_START, sim_server

NOW = to_ms(TEST_START)
MIN = 60_000


async def until(pred: Callable[[], bool], limit_s: float = 10.0) -> None:
    for _ in range(int(limit_s / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise TimeoutError("condition not reached")


def closing_opens(messages: list[str]) -> list[int]:
    out = []
    for m in messages:
        data = json.loads(m)
        data = data.get("data", data)
        if data.get("e") == "kline" and data["k"]["x"]:
            out.append(data["k"]["t"])
    return out


async def test_server_shutdown_moves_to_a_new_connection_before_the_old_closes() -> None:
    # Spot announces a shutdown with a serverShutdown event, then disconnects: the shard opens its
    # replacement at once (no reconnect gap, no backoff) and keeps the event from the consumer.
    async with sim_server() as sim:
        got: list[str] = []
        shard = WsShard("spot#0", sim.endpoints.ws["spot"], ["btcusdt@kline_1m"], lambda m, t: got.append(m))
        shard.start()
        try:
            assert await shard.wait_connected(5.0)
            await until(lambda: len(sim.ws.conns) == 1)
            sim.clock.advance(MIN)
            await until(lambda: len(closing_opens(got)) == 1)
            sim.ws.server_shutdown(notice_s=1.0, market="spot")
            await until(lambda: shard.stats.connects == 2 and len(sim.ws.conns) == 1)
            assert shard.stats.rotations == 1
            sim.clock.advance(MIN)
            await until(lambda: len(closing_opens(got)) == 2)
            await asyncio.sleep(1.2)  # past the notice: the server closes what it announced
            sim.clock.advance(MIN)
            await until(lambda: len(closing_opens(got)) == 3)
        finally:
            await shard.stop()
        assert closing_opens(got) == [NOW, NOW + MIN, NOW + 2 * MIN]
        assert not any("serverShutdown" in m for m in got)
        assert shard.stats.drops == 0 and shard.stats.connects == 2 and shard.stats.failures == 0
        assert sim.stats.ws["shutdown_notices"] == 1


async def test_a_refused_subscribe_reconnects_and_subscribes_again() -> None:
    # Binance answers a control message it rejects with {"error": {...}, "id": N}. The shard used to
    # ignore it: the streams it carried stayed silent for the connection's life (up to 23.5 h), every
    # period fetched them over REST. Now the shard reconnects (with backoff) and subscribes again.
    # A real websockets server in Binance's format: the first SUBSCRIBE is refused, later ones pass.
    from websockets.asyncio.server import serve

    subscribes: list[list[str]] = []

    async def handler(ws):  # type: ignore[no-untyped-def]
        async for raw in ws:
            req = json.loads(raw)
            subscribes.append(req["params"])
            if len(subscribes) == 1:
                await ws.send(json.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": req["id"]}))
                continue
            await ws.send(json.dumps({"result": None, "id": req["id"]}))
            for stream in req["params"]:
                k = {"t": NOW, "T": NOW + MIN - 1, "s": stream.split("@")[0].upper(), "x": True}
                await ws.send(json.dumps({"stream": stream, "data": {"e": "kline", "E": NOW + MIN, "k": k}}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        got: list[str] = []
        streams = ["btcusdt@kline_1m", "ethusdt@kline_1m"]
        shard = WsShard("um#0", f"ws://127.0.0.1:{port}", streams, lambda m, t: got.append(m), url_streams=1)
        shard.start()
        try:
            await until(lambda: any("ethusdt@kline_1m" in m and '"kline"' in m for m in got))
        finally:
            await shard.stop()
    assert subscribes == [["ethusdt@kline_1m"], ["ethusdt@kline_1m"]]  # the URL carries btcusdt
    assert shard.stats.refused == 1 and shard.stats.connects == 2
