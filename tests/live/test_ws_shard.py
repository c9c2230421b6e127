"""``WsShard`` against the simulator's websocket server (a real aiohttp server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

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
            # (the old connection is read until the server closes it, then the new one takes over)
            await until(
                lambda: shard.stats.connects == 2 and len(sim.ws.conns) == 1 and shard.stats.rotations == 1
            )
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


async def _run_for(server: Any, seconds: float) -> WsShard:
    """A one-stream shard against a local websockets ``server``, run for ``seconds``, then stopped."""
    port = server.sockets[0].getsockname()[1]
    shard = WsShard("spot#0", f"ws://127.0.0.1:{port}", ["btcusdt@kline_1m"], lambda m, t: None)
    shard.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await shard.stop()
    return shard


async def test_a_server_that_accepts_then_closes_is_not_hammered() -> None:
    """A server that accepts, sends one message and closes (a policy close): the backoff used to be
    reset by that one message, so the shard reconnected every ~0.15 s (33 times in 5 s in a review).
    Only a connection that stayed up ``stable_s`` resets it now."""
    from websockets.asyncio.server import serve

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.send(json.dumps({"result": None, "id": 0}))
        await ws.close(1008, "go away")

    async with serve(handler, "127.0.0.1", 0) as server:
        shard = await _run_for(server, 3.0)
    # backoff 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6, 1.6-3.2 s after each close: at most 6 in 3 s
    assert 3 <= shard.stats.connects <= 6, shard.stats


async def test_a_handshake_refused_with_429_waits_its_retry_after() -> None:
    """HTTP 429 on the upgrade (too many connection attempts from this IP) is not retried in the
    usual fraction of a second: the shard waits Retry-After (at least a minute)."""
    from websockets.asyncio.server import serve

    requests = 0

    def refuse(connection, request):  # type: ignore[no-untyped-def]
        nonlocal requests
        requests += 1
        response = connection.respond(429, "slow down\n")
        response.headers["Retry-After"] = "90"
        return response

    async def handler(ws):  # type: ignore[no-untyped-def]
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as server:
        shard = await _run_for(server, 1.5)
    assert requests == 1 and shard.stats.failures == 1
    assert "429" in shard.stats.last_error


async def test_a_stream_subscribed_while_the_connection_opens_is_not_lost() -> None:
    """subscribe() during the handshake found no connection to send on (or the one being replaced),
    and the new connection was opened with the older set: the stream stayed silent for the
    connection's life (23.5 h). The shard now brings a new connection to the desired set."""
    from websockets.asyncio.server import serve

    subscribes: list[list[str]] = []
    paths: list[str] = []

    async def slow(connection, request):  # type: ignore[no-untyped-def]
        paths.append(request.path)
        await asyncio.sleep(0.5)
        return None

    async def handler(ws):  # type: ignore[no-untyped-def]
        async for raw in ws:
            req = json.loads(raw)
            subscribes.append(req["params"])
            await ws.send(json.dumps({"result": None, "id": req["id"]}))

    async with serve(handler, "127.0.0.1", 0, process_request=slow) as server:
        port = server.sockets[0].getsockname()[1]
        shard = WsShard("um#0", f"ws://127.0.0.1:{port}", ["btcusdt@kline_1m"], lambda m, t: None)
        shard.start()
        try:
            await until(lambda: len(paths) == 1)
            await shard.subscribe(["ethusdt@kline_1m"])  # mid-handshake
            assert await shard.wait_connected(5.0)
            await until(lambda: subscribes == [["ethusdt@kline_1m"]])
        finally:
            await shard.stop()
    assert paths == ["/stream?streams=btcusdt@kline_1m"] and shard.stats.connects == 1


def test_error_replies_in_both_shapes_are_recognised() -> None:
    from lake.live.ws import _control_reply, _maybe_reply

    for msg, said in (
        ('{"error": {"code": 2, "msg": "Invalid request"}, "id": 3}', "code 2: Invalid request"),
        ('{"code": 2, "msg": "bad", "id": 3}', "code 2: bad"),
    ):
        assert _maybe_reply(msg) and _control_reply(msg) == (False, 3, said)
        assert _maybe_reply(msg.encode()) and _control_reply(msg.encode()) == (False, 3, said)
    assert _control_reply('{"result": null, "id": 3}') == (True, 3, "")
    assert _control_reply('{"stream": "x", "data": {"e": "kline"}}') is None


async def test_a_replaced_connection_is_read_until_the_overlap_ends() -> None:
    """Proactive replacement (the 24 h limit, here 1 s): the old connection used to be closed as
    soon as the new one was subscribed, dropping what it still carried (events the new one's
    streams would only deliver once their SUBSCRIBE was processed). It is read for overlap_s more."""
    from websockets.asyncio.server import serve

    second_open = asyncio.Event()
    sent_after: list[int] = []
    conns = 0

    async def handler(ws):  # type: ignore[no-untyped-def]
        nonlocal conns
        conns += 1
        if conns > 1:
            second_open.set()
            await ws.wait_closed()
            return
        seq = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                seq += 1
                if second_open.is_set():
                    sent_after.append(seq)
                await ws.send(json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "seq": seq}}))
                await asyncio.sleep(0.02)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        got: list[int] = []
        shard = WsShard(
            "um#0",
            f"ws://127.0.0.1:{port}",
            ["btcusdt@kline_1m"],
            lambda m, t: got.append(json.loads(m)["data"]["seq"]),
            lifetime_s=1.0,
            overlap_s=0.6,  # (capped at a quarter of the lifetime: 0.25 s)
        )
        shard.start()
        try:
            await until(lambda: shard.stats.rotations >= 1)
        finally:
            await shard.stop()
    delivered_late = [s for s in sent_after if s in set(got)]
    assert len(delivered_late) >= 5, (len(sent_after), len(delivered_late))
    assert got == sorted(got)


async def test_connection_attempts_are_limited_across_processes_sharing_a_state_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exchange counts connection attempts per IP: limiters on one state file (two `lake live`
    processes, one per interval) share the limit; a damaged file counts as no attempts."""
    import time

    from lake.live.ws import ConnectLimiter

    state = tmp_path / "ws-connects.json"
    a = ConnectLimiter(3, 0.5, state_file=state)
    b = ConnectLimiter(3, 0.5, state_file=state)
    t0 = time.monotonic()
    for lim in (a, b, a):
        await lim.acquire()
    assert time.monotonic() - t0 < 0.3
    await b.acquire()  # the fourth attempt waits for the first to leave the window
    assert time.monotonic() - t0 >= 0.45
    state.write_text("not json")
    t1 = time.monotonic()
    await a.acquire()
    assert time.monotonic() - t1 < 0.3


async def test_stop_while_a_replaced_connection_drains_closes_both() -> None:
    """Stopped during the overlap after a proactive replacement: the new connection, not yet the
    current one, used to stay open (review)."""
    from websockets.asyncio.server import serve

    open_conns: set[object] = set()

    async def handler(ws):  # type: ignore[no-untyped-def]
        open_conns.add(ws)
        try:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.send(
                        json.dumps({"stream": "btcusdt@kline_1m", "data": {"e": "kline", "seq": 0}})
                    )
                    await asyncio.sleep(0.02)
        finally:
            open_conns.discard(ws)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        shard = WsShard(
            "um#0",
            f"ws://127.0.0.1:{port}",
            ["btcusdt@kline_1m"],
            lambda m, t: None,
            lifetime_s=4.0,
            overlap_s=1.0,
        )
        shard.start()
        await until(lambda: shard.stats.connects == 2)
        await asyncio.sleep(0.2)  # inside the drain (1 s)
        await shard.stop()
        await until(lambda: not open_conns, limit_s=3.0)
    assert shard.stats.rotations == 0 and not shard._carried


async def test_an_unusable_attempt_counter_file_falls_back_to_counting_in_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lake.live.ws import ConnectLimiter

    lim = ConnectLimiter(2, 1.0, state_file=tmp_path)  # a directory: cannot be opened for writing
    await asyncio.wait_for(lim.acquire(), 1.0)
    assert lim.state_file is None
    await asyncio.wait_for(lim.acquire(), 1.0)
