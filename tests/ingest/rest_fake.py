"""A tiny Binance-like REST server for unit tests of the client and governor (not the simulator).

It keeps a virtual clock running ``speed``× real time, counts weight per server-time minute, answers
429 (with Retry-After in server seconds) when a request would exceed the limit, and records the
highest weight admitted per window. Klines are synthetic and deterministic.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lake.binance.markets import MARKETS

__all__ = ["FakeExchange"]


@dataclass
class FakeExchange:
    speed: float = 60.0
    limit: int = 2400
    start_ms: int = 1_700_000_000_000
    listed_ms: int = 1_690_000_000_000
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    fail_next: int = 0  # answer the next N kline calls with 503
    force_429: int = 0
    retry_after_s: float | None = None
    used: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_used: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._m0 = time.monotonic()
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._m0) * 1000 * self.speed)

    def _charge(self, weight: int) -> tuple[bool, int, int]:
        now = self.now_ms()
        w = now // 60_000
        if self.used[w] + weight > self.limit:
            return False, self.used[w], now
        self.used[w] += weight
        self.max_used = max(self.max_used, self.used[w])
        return True, self.used[w], now

    def _weight(self, request: web.Request) -> int:
        path = request.path
        market = "spot" if path.startswith("/api/") else ("um" if path.startswith("/fapi/") else "cm")
        m = MARKETS[market]
        if path.endswith("/klines"):
            return m.kline_weight(int(request.query.get("limit", "500")))
        if path.endswith("/exchangeInfo"):
            return m.exchange_info_weight
        return 1

    @web.middleware
    async def _mw(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.paths[request.path] += 1
        weight = self._weight(request)
        if self.force_429 > 0:
            self.force_429 -= 1
            ok, used, now = False, self.used[self.now_ms() // 60_000], self.now_ms()
        else:
            ok, used, now = self._charge(weight)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        if not ok:
            ra = self.retry_after_s if self.retry_after_s is not None else (60_000 - now % 60_000) / 1000
            headers["Retry-After"] = str(int(ra + 0.999))
            self.statuses[429] += 1
            return web.json_response(
                {"code": -1003, "msg": "Too much request weight used"}, status=429, headers=headers
            )
        if request.path.endswith("/klines") and self.fail_next > 0:
            self.fail_next -= 1
            self.statuses[503] += 1
            body = {"code": -1001, "msg": "Service Unavailable."}
            return web.json_response(body, status=503, headers=headers)
        resp = await handler(request)
        resp.headers.update(headers)
        self.statuses[resp.status] += 1
        return resp

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms()})

    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "serverTime": self.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": self.limit,
                    }
                ],
                "symbols": [
                    {
                        "symbol": s,
                        "status": "TRADING",
                        "quoteAsset": "USDT",
                        "baseAsset": s[:-4],
                        "contractType": "PERPETUAL",
                        "marginAsset": "USDT",
                        "onboardDate": self.listed_ms,
                        "filters": [
                            {"filterType": "PRICE_FILTER", "tickSize": "0.10"},
                            {"filterType": "LOT_SIZE", "stepSize": "0.001"},
                            {"filterType": "MIN_NOTIONAL", "notional": "5"},
                        ],
                    }
                    for s in self.symbols
                ],
            }
        )

    async def _klines(self, request: web.Request) -> web.Response:
        q = request.query
        sym = q["symbol"]
        if sym not in self.symbols:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        step = 300_000 if q["interval"] == "5m" else 60_000
        limit = int(q.get("limit", "500"))
        start = int(q.get("startTime", "0"))
        end = int(q.get("endTime", str(self.now_ms())))
        t = max(start, self.listed_ms)
        t = -(-t // step) * step
        rows = []
        while t <= end and len(rows) < limit and t + step <= self.now_ms():
            p = 100 + (t // step) % 7 + len(sym)
            rows.append(
                [
                    t,
                    str(p),
                    str(p + 1),
                    str(p - 1),
                    str(p),
                    "10.0",
                    t + step - 1,
                    "1000.0",
                    5,
                    "4.0",
                    "400.0",
                    "0",
                ]
            )
            t += step
        return web.Response(body=json.dumps(rows).encode(), content_type="application/json")

    async def start(self) -> FakeExchange:
        app = web.Application(middlewares=[self._mw])
        for prefix in ("/api/v3", "/fapi/v1", "/dapi/v1"):
            app.router.add_get(f"{prefix}/time", self._time)
            app.router.add_get(f"{prefix}/exchangeInfo", self._info)
            app.router.add_get(f"{prefix}/klines", self._klines)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
