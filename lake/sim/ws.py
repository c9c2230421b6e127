"""Websocket market streams (kline streams only), per market base path.

URLs (``Endpoints.simulator``): ``/ws-spot``, ``/ws-um/market``, ``/ws-cm``; under each ``/ws/<stream>``
(raw; several raw streams may be joined with ``/``; bare ``/ws`` then SUBSCRIBE) and
``/stream?streams=a/b`` (combined: events wrapped as ``{"stream": name, "data": event}``).

Control messages ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` / ``SET_PROPERTY`` /
``GET_PROPERTY`` are answered like Binance (``{"result": null, "id": 1}``). Error replies use the flat
``{"code", "msg", "id"}`` shape of the spot docs (UNVERIFIED for futures).

Each connection has a pusher task. When the virtual clock reaches a minute boundary (plus the
``ws_close_delay_s`` fault) it sends the ``x: true`` event of every subscribed stream whose candle closes
there (event time ``E`` = boundary + delay + ``ws_close_lag_ms``), with exactly the truth values (no event when the candle has
no 1m data). Spot ``<symbol>@kline_1s`` streams close at every second boundary the same way, from a
cursor of their own (futures do not serve 1s: such a stream is accepted and stays silent).
``x: false`` updates of the forming candles go out every ``ws_update_ms`` of virtual time (1s streams:
``ws_update_ms_1s``, 1000 ms as Binance), but at most ``ws_intermediate_per_s`` rounds per real
second. Limits enforced by closing the connection (code 1008): more than the stream cap (1024;
COIN-M 200), more incoming messages per second than allowed (5 spot, 10 futures; text messages only,
aiohttp answers pings itself). The server pings
every ``ws_heartbeat_s`` (aiohttp heartbeat; a missing pong closes the connection after half that).
``ws_lifetime_s`` (off by default) closes connections after that much virtual time, like Binance's 24 h.
``server_shutdown(notice_s)`` (also ``POST /_sim/faults {"ws_shutdown": {"notice_s": …, "market": …}}``)
sends the ``serverShutdown`` event ``{"e": "serverShutdown", "E": …}`` (unwrapped, also on combined
streams: UNVERIFIED) and closes the connections ``notice_s`` real seconds later; so does stopping the
server (spot connections only, no notice).
Refused streams (test knobs, set on the ``WsHub``): Binance checks a stream name's syntax and answers
a ``SUBSCRIBE`` naming one it refuses with ``{"error": {"code": 2, "msg": "Invalid request: invalid
stream"}, "id": N}``, subscribing none of the request's streams (a well-formed name of an unknown
symbol is accepted and stays silent, as here). ``refuse_streams`` lists the stream names refused that
way; ``refusal_id`` (default True) whether the reply carries the request's ``id`` (the spot docs'
error examples have none); ``close_after_refusal`` (default False) closes the connection (1008) after
the reply, as observed. Streams in the URL are not checked (Binance's answer there is UNVERIFIED).
``policy_close_after_s`` (default None) closes every connection with 1008 (policy violation) that many
real seconds after it opened, as Binance closes a connection that breaks its limits (the code it uses
is UNVERIFIED).
How Binance refuses a connection over the stream cap is UNVERIFIED too: by default it is closed (1008,
"too many streams"), whether the URL or a ``SUBSCRIBE`` takes it over; with ``cap_refusal_reply``
(default False) a ``SUBSCRIBE`` that would is answered ``{"error": {"code": 2, "msg": "Too many
streams"}, "id": N}`` instead, subscribing none of its streams, and the connection stays.
Not simulated: connection-attempt limits, ``timeUnit`` URL parameter, non-kline streams (accepted, silent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from lake.binance.intervals import INTERVALS, Interval
from lake.sim.clock import MS_PER_MINUTE
from lake.sim.faults import Faults
from lake.sim.fmt import ws_kline_event
from lake.sim.limits import Stats
from lake.sim.market import SimMarket
from lake.sim.seconds import MS_PER_SECOND

__all__ = ["WS_BASES", "WsHub"]

WS_BASES = {"spot": "/ws-spot", "um": "/ws-um/market", "cm": "/ws-cm"}
_KLINE = re.compile(r"([^@/A-Z]+)@kline_(\w+)")  # lowercase symbol (CJK has no case)
_ID = re.compile(r"[A-Za-z0-9]{1,36}")
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    market: str
    combined: bool
    subs: dict[str, tuple[str, Interval] | None] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    incoming: deque[float] = field(default_factory=deque)
    opened: float = field(default_factory=time.monotonic)
    opened_virtual: int = 0


class WsHub:
    """All websocket connections of a server."""

    def __init__(self, market: SimMarket, faults: Faults, stats: Stats):
        self.market = market
        self.config = market.config
        self.clock = market.clock
        self.faults = faults
        self.stats = stats
        self.conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # (symbol, interval, open ms, time.monotonic() once handed to the socket) of recent closing
        # events: a client on the same machine measures its latency from the send, not from its own
        # receipt (CLOCK_MONOTONIC is one clock for all processes on Linux)
        self.closing_sent: deque[tuple[str, str, int, float]] = deque(maxlen=200_000)
        self._tasks: set[asyncio.Task[None]] = set()
        self.refuse_streams: set[str] = set()  # SUBSCRIBE naming one of these is refused (see above)
        self.refusal_id = True
        self.close_after_refusal = False
        self.policy_close_after_s: float | None = None  # close each connection with 1008 after this
        self.cap_refusal_reply = False  # a SUBSCRIBE over the stream cap: an error reply, not a close

    def add_routes(self, app: web.Application) -> None:
        for m, base in WS_BASES.items():
            app.router.add_get(f"{base}/ws", self._handler(m, combined=False))
            app.router.add_get(f"{base}/ws/{{streams:.+}}", self._handler(m, combined=False))
            app.router.add_get(f"{base}/stream", self._handler(m, combined=True))
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.clock.add_listener(self._clock_changed)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.clock.remove_listener(self._clock_changed)
        for c in list(self.conns):
            if c.market == "spot" and not c.ws.closed:
                with contextlib.suppress(Exception):
                    await c.ws.send_str(json.dumps({"e": "serverShutdown", "E": self.clock.now_ms()}))
            await c.ws.close(code=1001, message=b"server shutdown")

    def server_shutdown(self, notice_s: float = 0.0, market: str | None = None) -> None:
        """Announce a shutdown to every open connection (of ``market``): a ``serverShutdown`` event
        now, the close (1001) ``notice_s`` real seconds later. Connections opened meanwhile stay.
        Thread-safe (callable from a ``SimHandle``'s caller thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the simulator is not running")
        conns = [c for c in self.conns if market is None or c.market == market]

        def go() -> None:
            task = loop.create_task(self._shutdown(conns, notice_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_soon_threadsafe(go)

    async def _shutdown(self, conns: list[_Conn], notice_s: float) -> None:
        event = json.dumps({"e": "serverShutdown", "E": self.clock.now_ms()}, separators=(",", ":"))
        for c in conns:
            if not c.ws.closed:
                with contextlib.suppress(Exception):
                    await c.ws.send_str(event)
                    self.stats.count("ws", "shutdown_notices")
        await asyncio.sleep(notice_s)
        for c in conns:
            if not c.ws.closed:
                with contextlib.suppress(Exception):
                    await c.ws.close(code=1001, message=b"server shutdown")

    def _clock_changed(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for c in self.conns:
            c.wake.set()

    # ---- connection -------------------------------------------------------------------------------
    def _handler(self, market: str, *, combined: bool) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = request.query.get("streams", "") if combined else request.match_info.get("streams", "")
            streams = [s for s in raw.split("/") if s]
            ws = web.WebSocketResponse(heartbeat=float(self.config.ws_heartbeat_s.get(market, 180.0)))
            await ws.prepare(request)
            conn = _Conn(ws, request, market, combined, opened_virtual=self.clock.now_ms())
            self.stats.count("ws", "connections")
            if not self._subscribe(conn, streams):
                self.stats.count("ws", "closed_stream_cap")
                await ws.close(code=1008, message=b"too many streams")
                return ws
            self.conns.add(conn)
            pusher = asyncio.create_task(self._push_loop(conn))
            try:
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        continue
                    if not self._rate_ok(conn):
                        self.stats.count("ws", "closed_rate_limit")
                        await ws.close(code=1008, message=b"too many requests")
                        break
                    reply = self._control(conn, msg.data)
                    if reply is None:
                        self.stats.count("ws", "closed_stream_cap")
                        await ws.close(code=1008, message=b"too many streams")
                        break
                    await ws.send_str(json.dumps(reply, separators=(",", ":")))
                    if "error" in reply and self.close_after_refusal:
                        self.stats.count("ws", "closed_refusal")
                        await ws.close(code=1008, message=b"invalid request")
                        break
            finally:
                self.conns.discard(conn)
                pusher.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await pusher
            return ws

        return handle

    def _rate_ok(self, conn: _Conn) -> bool:
        now = time.monotonic()
        q = conn.incoming
        q.append(now)
        while q and q[0] <= now - 1.0:
            q.popleft()
        return len(q) <= int(self.config.ws_msgs_per_s.get(conn.market, 5))

    def _subscribe(self, conn: _Conn, streams: Iterable[str]) -> bool:
        for s in streams:
            if s not in conn.subs:
                m = _KLINE.fullmatch(s)
                iv = INTERVALS.get(m.group(2)) if m else None
                ok = m and iv is not None and (conn.market == "spot" or not iv.spot_only)
                conn.subs[s] = (m.group(1).upper(), iv) if m and iv is not None and ok else None
        conn.wake.set()
        return len(conn.subs) <= int(self.config.ws_stream_caps.get(conn.market, 1024))

    def _control(self, conn: _Conn, text: str) -> dict[str, Any] | None:
        """The reply to one control message; None means: close the connection (stream cap)."""
        try:
            req = json.loads(text)
        except ValueError:
            return {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
        if not isinstance(req, dict):
            return {"code": 2, "msg": "Invalid request: expected an object"}
        rid = req.get("id")
        if not (
            rid is None
            or (isinstance(rid, int) and not isinstance(rid, bool))
            or (isinstance(rid, str) and _ID.fullmatch(rid))
        ):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        method, params = req.get("method"), req.get("params", [])
        if method not in _METHODS:
            return {"code": 2, "msg": f"Invalid request: unknown variant {method}", "id": rid}
        if not isinstance(params, list) or not all(isinstance(p, (str, bool)) for p in params):
            return {"code": 1, "msg": "Invalid value type: expected a list of strings", "id": rid}
        if method == "SUBSCRIBE":
            if self.refuse_streams.intersection(str(p) for p in params):
                self.stats.count("ws", "refused_subscribes")
                error = {"code": 2, "msg": "Invalid request: invalid stream"}
                return {"error": error, "id": rid} if self.refusal_id else {"error": error}
            names = [str(p) for p in params]
            cap = int(self.config.ws_stream_caps.get(conn.market, 1024))
            if self.cap_refusal_reply and len(conn.subs.keys() | set(names)) > cap:
                self.stats.count("ws", "refused_stream_cap")
                return {"error": {"code": 2, "msg": "Too many streams"}, "id": rid}
            if not self._subscribe(conn, names):
                return None
        elif method == "UNSUBSCRIBE":
            for p in params:
                conn.subs.pop(str(p), None)
        elif method == "LIST_SUBSCRIPTIONS":
            return {"result": list(conn.subs), "id": rid}
        elif method == "SET_PROPERTY":
            if len(params) != 2 or params[0] != "combined" or not isinstance(params[1], bool):
                return {"code": 0, "msg": "Unknown property", "id": rid}
            conn.combined = params[1]
        else:
            if params != ["combined"]:
                return {"code": 0, "msg": "Unknown property", "id": rid}
            return {"result": conn.combined, "id": rid}
        return {"result": None, "id": rid}

    # ---- pushing ----------------------------------------------------------------------------------
    async def _send(self, conn: _Conn, stream: str, event: dict[str, Any]) -> None:
        body = {"stream": stream, "data": event} if conn.combined else event
        await conn.ws.send_str(json.dumps(body, separators=(",", ":")))

    async def _push_loop(self, conn: _Conn) -> None:
        cfg, clock = self.config, self.clock
        cursor = clock.now_ms() // MS_PER_MINUTE * MS_PER_MINUTE
        sec_cursor = clock.now_ms() // MS_PER_SECOND * MS_PER_SECOND  # 1s streams
        last_real, last_virtual = 0.0, clock.now_ms()
        last_virtual_1s = last_virtual
        update_ms = int(cfg.ws_update_ms.get(conn.market, 250))
        while not conn.ws.closed:
            conn.wake.clear()
            drop = self.faults.ws_drop_every_s
            if drop is not None and time.monotonic() - conn.opened >= drop:
                self.stats.count("ws", "dropped")
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
                return
            policy = self.policy_close_after_s
            if policy is not None and time.monotonic() - conn.opened >= policy:
                self.stats.count("ws", "closed_policy")
                await conn.ws.close(code=1008, message=b"policy violation")
                return
            now = clock.now_ms()
            life = cfg.ws_lifetime_s
            if life is not None and now - conn.opened_virtual >= life * 1000:
                self.stats.count("ws", "closed_lifetime")
                await conn.ws.close(code=1000, message=b"connection lifetime reached")
                return
            # A candle's final event goes out once the clock reaches its close (plus the delay fault);
            # its event time is a little after the close time.
            delay = int(self.faults.ws_close_delay_s * 1000)
            cursor = await self._close_through(conn, cursor, now, delay, MS_PER_MINUTE)
            has_1s = any(p is not None and p[1].ms == MS_PER_SECOND for p in conn.subs.values())
            if has_1s:
                sec_cursor = await self._close_through(conn, sec_cursor, now, delay, MS_PER_SECOND)
            else:  # a 1s stream subscribed later starts at its subscription
                sec_cursor = max(sec_cursor, (now - delay) // MS_PER_SECOND * MS_PER_SECOND)
            real_ok = time.monotonic() - last_real >= 1.0 / cfg.ws_intermediate_per_s
            due = now - last_virtual >= update_ms and real_ok
            due_1s = has_1s and now - last_virtual_1s >= cfg.ws_update_ms_1s and real_ok
            if cfg.ws_intermediate and conn.subs and (due or due_1s):
                last_real = time.monotonic()
                if due:
                    last_virtual = now
                if due_1s:
                    last_virtual_1s = now
                await self._partials(conn, now, others=due, seconds=due_1s)
            timeout = min(1.0, clock.real_seconds(cursor + MS_PER_MINUTE + delay - now))
            if has_1s:
                timeout = min(timeout, clock.real_seconds(sec_cursor + MS_PER_SECOND + delay - now))
            if cfg.ws_intermediate and conn.subs:
                timeout = min(
                    timeout, max(0.01, 1.0 / cfg.ws_intermediate_per_s - (time.monotonic() - last_real))
                )
            if drop is not None:
                timeout = min(timeout, max(0.0, drop - (time.monotonic() - conn.opened)))
            if policy is not None:
                timeout = min(timeout, max(0.0, policy - (time.monotonic() - conn.opened)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wake.wait(), timeout=max(timeout, 0.001))

    async def _close_through(self, conn: _Conn, cursor: int, now: int, delay: int, step: int) -> int:
        """Send the closing events of every ``step`` boundary after ``cursor`` the clock has passed
        (plus the delay fault; at most ``ws_catchup_max`` of them after a jump); the new cursor.
        ``step``: a minute (every stream but 1s) or a second (1s streams)."""
        cfg = self.config
        if now < cursor:  # the clock went backwards
            cursor = now // step * step
        ready = (now - delay - cursor) // step
        if ready > cfg.ws_catchup_max:
            cursor += (ready - cfg.ws_catchup_max) * step
        while cursor + step + delay <= now:
            cursor += step
            await self._closings(
                conn, cursor, cursor + delay + cfg.ws_close_lag_ms, seconds=step == MS_PER_SECOND
            )
        return cursor

    async def _closings(self, conn: _Conn, boundary: int, event_ms: int, *, seconds: bool = False) -> None:
        """Closing events of the streams whose candle closes at ``boundary``: the 1s streams with
        ``seconds``, the others without."""
        skip = self.faults.ws_skip_close_symbols
        uni = self.market.universe
        for stream, parsed in list(conn.subs.items()):
            if parsed is None:
                continue
            symbol, iv = parsed
            if (iv.ms == MS_PER_SECOND) != seconds or iv.floor(boundary) != boundary or symbol in skip:
                continue
            info = uni.get(conn.market, symbol)
            if info is None:
                continue
            opened = iv.floor(boundary - 1)
            c = self.market.candles(info, iv, opened, opened + 1)
            if len(c) and (self.config.ws_close_quiet or c.v[0] > 0):
                await self._send(conn, stream, ws_kline_event(info, iv, c, 0, closed=True, event_ms=event_ms))
                self.closing_sent.append((symbol, iv.name, opened, time.monotonic()))
                self.stats.count("ws", "closing_events")

    async def _partials(self, conn: _Conn, now: int, *, others: bool = True, seconds: bool = False) -> None:
        """``x: false`` updates of the forming candles: of the 1s streams with ``seconds``, of the
        others with ``others``."""
        uni = self.market.universe
        for stream, parsed in list(conn.subs.items()):
            if parsed is None:
                continue
            symbol, iv = parsed
            if not (seconds if iv.ms == MS_PER_SECOND else others):
                continue
            info = uni.get(conn.market, symbol)
            if info is None or not info.listed_at(now):
                continue
            c = self.market.forming(info, iv, now)
            if c is not None:
                await self._send(conn, stream, ws_kline_event(info, iv, c, 0, closed=False, event_ms=now))
                self.stats.count("ws", "partial_events")
