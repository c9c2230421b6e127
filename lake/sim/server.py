"""``SimServer``: one aiohttp server with REST, websockets, the archive and control endpoints.

Control endpoints (not rate limited, not counted)::

    GET  /_sim/info            config summary, symbols per trade type, awkward symbols and windows
    GET  /_sim/stats           {"rest": {market: {requests, status{...,"5xx"}, max_used_weight, weight_limit,
                                windows: [[window_start_ms, max_used], ...],
                                weight_total, over_limit}}, "ws": {...}, "archive": {...}, "used_weight": {...}}
    POST /_sim/stats/reset     zero the counters (and, with {"windows": true}, the weight windows and bans)
    GET  /_sim/clock           {"now": ms, "iso": "...", "speed": x}
    POST /_sim/clock           {"set": ms|ISO} | {"advance": ms} | {"advance_s": s} and/or {"speed": x}
    GET  /_sim/ws_sent         {"clock": "monotonic", "events": [[symbol, interval, open_ms, sent], ...]}: when
                               recent closing events were handed to the socket (time.monotonic())
    GET  /_sim/faults          the fault knobs (see ``faults.py``)
    POST /_sim/faults          any subset of the knobs, plus one-shot actions:
                               {"list": [{"market": "um", "symbol": "NEWUSDT", "at": opt}],
                                "delist": [{"market": "um", "symbol": "ETHUSDT", "at": opt}],
                                "reupload": [{"market": "spot", "symbol": "BTCUSDT", "date": "2025-01-02"}]}
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from lake.binance.markets import TRADE_TYPES, Endpoints
from lake.errors import LakeError, ValidationError
from lake.sim.archive import Archive
from lake.sim.clock import VirtualClock, to_ms
from lake.sim.config import SimConfig
from lake.sim.faults import Faults
from lake.sim.limits import Stats, WeightLimiter
from lake.sim.market import SimMarket
from lake.sim.rest import RestApi
from lake.sim.ws import WsHub

__all__ = ["ExtraRoutes", "SimHandle", "SimServer", "run_in_thread"]

ExtraRoutes = Callable[[web.Application, SimMarket, VirtualClock], None]


class SimServer:
    """The simulator server. ``async with SimServer(config) as sim:`` then use ``sim.base_url``.

    ``extra_routes(app, market, clock)`` may add more routes (e.g. a Quantclass-compatible API).
    """

    def __init__(self, config: SimConfig | None = None, *, extra_routes: ExtraRoutes | None = None):
        self.config = (config or SimConfig()).resolved()
        self.clock = VirtualClock(int(self.config.start), self.config.speed)  # type: ignore[arg-type]
        self.market = SimMarket(self.config, self.clock)
        self.faults = Faults(self.config.faults)
        self.stats = Stats(self.config)
        self.limiter = WeightLimiter(self.config, self.clock)
        self.rest = RestApi(self.market, self.limiter, self.faults, self.stats)
        self.ws = WsHub(self.market, self.faults, self.stats)
        self.archive = Archive(self.market, self.faults, self.stats)
        self.app = web.Application()
        self.rest.add_routes(self.app)
        self.ws.add_routes(self.app)
        self.archive.add_routes(self.app)
        self._add_control_routes(self.app)
        if extra_routes is not None:
            extra_routes(self.app, self.market, self.clock)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> SimServer:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        await site.start()
        self._runner = runner
        addr = runner.addresses[0]
        self.port = int(addr[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not running")
        return f"http://{self.config.host}:{self.port}"

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.simulator(self.base_url)

    def info(self) -> dict[str, Any]:
        """What ``GET /_sim/info`` answers."""
        m = self.market
        ep = self.endpoints
        return {
            "base_url": self.base_url,
            "endpoints": {
                "rest": dict(ep.rest),
                "ws": dict(ep.ws),
                "archive": ep.archive,
                "archive_list": ep.archive_list,
            },
            "seed": self.config.seed,
            "start": self.config.start,
            "history_start": m.universe.history_start,
            "clock": self.clock.snapshot(),
            "weight_limits": dict(self.limiter.limits),
            "symbols": {tt: m.symbols(tt) for tt in TRADE_TYPES},
            "awkward": m.awkward.to_json(),
        }

    # ---- control ----------------------------------------------------------------------------------
    def _add_control_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_sim/info", self._get_info)
        r.add_get("/_sim/stats", self._get_stats)
        r.add_post("/_sim/stats/reset", self._reset_stats)
        r.add_get("/_sim/clock", self._get_clock)
        r.add_post("/_sim/clock", self._post_clock)
        r.add_get("/_sim/faults", self._get_faults)
        r.add_get("/_sim/ws_sent", self._get_ws_sent)
        r.add_post("/_sim/faults", self._post_faults)

    async def _get_info(self, request: web.Request) -> web.Response:
        return _json(self.info())

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats_json())

    async def _get_clock(self, request: web.Request) -> web.Response:
        return _json(self.clock.snapshot())

    async def _get_ws_sent(self, request: web.Request) -> web.Response:
        return _json({"clock": "monotonic", "events": [list(e) for e in self.ws.closing_sent]})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.to_json())

    def stats_json(self) -> dict[str, Any]:
        out = self.stats.snapshot()
        out["used_weight"] = {m: self.limiter.used(m) for m in self.limiter.limits}
        return out

    async def _reset_stats(self, request: web.Request) -> web.Response:
        body = await _body(request)
        self.stats.reset()
        if body.get("windows"):
            self.limiter.reset()
        return _json(self.stats_json())

    async def _post_clock(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            self.control_clock(body)
        except (LakeError, ValueError, TypeError) as e:
            return _json({"error": str(e)}, status=400)
        return _json(self.clock.snapshot())

    def control_clock(self, body: dict[str, Any]) -> None:
        """Apply a ``POST /_sim/clock`` body."""
        if "speed" in body:
            self.clock.set_speed(float(body["speed"]))
        if "set" in body:
            self.clock.set(to_ms(body["set"]))
        if "advance" in body:
            self.clock.advance(int(body["advance"]))
        if "advance_s" in body:
            self.clock.advance(int(float(body["advance_s"]) * 1000))

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            applied = self.control_faults(body)
        except (LakeError, ValueError, TypeError, KeyError) as e:
            return _json({"error": str(e)}, status=400)
        return _json({**self.faults.to_json(), "applied": applied})

    def control_faults(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply a ``POST /_sim/faults`` body: knobs plus list/delist/reupload actions."""
        actions = {k: v for k, v in body.items() if k in ("list", "delist", "reupload")}  # in body order
        applied: list[dict[str, Any]] = []
        shutdown = body.get("ws_shutdown")
        self.faults.update({k: v for k, v in body.items() if k not in actions and k != "ws_shutdown"})
        if shutdown is not None:
            if not isinstance(shutdown, dict):
                raise ValidationError("'ws_shutdown' takes an object {notice_s, market}")
            self.ws.server_shutdown(float(shutdown.get("notice_s", 0.0)), shutdown.get("market"))
            applied.append({"action": "ws_shutdown", **shutdown})
        for kind, items in actions.items():
            if not isinstance(items, list):
                raise ValidationError(f"{kind!r} takes a list of objects")
            for it in items:
                if kind == "list":
                    info = self.market.list_symbol(it["market"], it["symbol"], it.get("at"))
                    applied.append({"action": kind, "symbol": info.symbol, "segments": info.segments})
                elif kind == "delist":
                    info = self.market.delist_symbol(it["market"], it["symbol"], it.get("at"))
                    applied.append({"action": kind, "symbol": info.symbol, "segments": info.segments})
                else:
                    t = self.archive.reupload(it["market"], it["symbol"], it["date"])
                    applied.append({"action": kind, "symbol": it["symbol"], "corrected_open": t})
        return applied


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj, default=str), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    data = await request.json()
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object")
    return data


class SimHandle:
    """A simulator running in a background thread (for synchronous code and subprocess tests)."""

    def __init__(self, server: SimServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.server = server
        self._loop = loop
        self._thread = thread

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def endpoints(self) -> Endpoints:
        return self.server.endpoints

    @property
    def market(self) -> SimMarket:
        return self.server.market

    @property
    def clock(self) -> VirtualClock:
        return self.server.clock

    @property
    def stats(self) -> Stats:
        return self.server.stats

    @property
    def faults(self) -> Faults:
        return self.server.faults

    def stop(self) -> None:
        """Stop the server and its thread (idempotent)."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def __enter__(self) -> SimHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_in_thread(
    config: SimConfig | None = None, *, extra_routes: ExtraRoutes | None = None, timeout: float = 30.0
) -> SimHandle:
    """Start a ``SimServer`` on its own event loop in a daemon thread; returns once it listens."""
    server = SimServer(config, extra_routes=extra_routes)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as e:  # reported to the starting thread
            failure.append(e)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=main, name="lake-sim", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise RuntimeError("the simulator did not start in time")
    if failure:
        raise failure[0]
    return SimHandle(server, loop, thread)
