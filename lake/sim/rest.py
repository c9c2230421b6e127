"""REST endpoints of the three markets on one aiohttp app.

Paths: ``{prefix}/klines``, ``/exchangeInfo``, ``/time``, ``/ping`` for prefixes ``/api/v3`` (spot, also
``uiKlines``), ``/fapi/v1`` (USDⓈ-M) and ``/dapi/v1`` (COIN-M), plus ``/fundingRate`` on futures.

Every response carries ``X-MBX-USED-WEIGHT-1M`` (spot also the legacy ``X-MBX-USED-WEIGHT``; futures
send it in lower case, ``x-mbx-used-weight-1m``). Order of
checks per request: fault draw (5xx / hang), ban (418), forced 429, weight budget (429/418), handler.
Errors are ``{"code": …, "msg": …}`` with Binance's codes: -1121 invalid symbol, -1120 invalid interval
(also for ``1s`` on futures: Binance serves ``1s`` on spot only), -1100 malformed number, -1102 missing
parameter, -1130 bad limit, -1023 start after end, -1127 COIN-M span over 200 days (message
UNVERIFIED), -1003 rate limits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from lake.binance.intervals import INTERVALS
from lake.binance.markets import MARKETS
from lake.sim.clock import MS_PER_DAY
from lake.sim.exinfo import exchange_info, funding_rows, funding_times
from lake.sim.faults import Faults
from lake.sim.limits import Decision, Stats, WeightLimiter
from lake.sim.market import SimMarket
from lake.sim.rows import RowServer
from lake.sim.universe import SymbolInfo

__all__ = ["ApiError", "RestApi"]

_BIG = 2**62
_JSON = "application/json"


class ApiError(Exception):
    """A Binance-style error answer: HTTP ``status`` with body ``{"code", "msg"}``."""

    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _int(q: Mapping[str, str], name: str) -> int | None:
    v = q.get(name)
    if v is None or v == "":
        return None
    if not v.lstrip("-").isdigit() or len(v) > 20:
        raise ApiError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        )
    return int(v)


def _funding_slots(
    market: SimMarket, perps: list[SymbolInfo], lo: int, hi: int, limit: int, *, newest: bool
) -> list[tuple[int, str]]:
    """(fundingTime, symbol) of the first (or newest) ``limit`` funding events in ``[lo, hi]``, ascending.

    Each perpetual has its own schedule (``funding_times``: 8h or 4h, a few ms late at times).
    """
    found = sorted((t, i.symbol) for i in perps for t in funding_times(market, i, lo, hi))
    return found[-limit:] if newest else found[:limit]


def _const(weight: int) -> Callable[[web.Request], int]:
    def w(request: web.Request) -> int:
        return weight

    return w


def _required(q: Mapping[str, str], name: str) -> str:
    v = q.get(name)
    if not v:
        raise ApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return v


class RestApi:
    """The REST handlers; ``add_routes(app)`` mounts them."""

    def __init__(self, market: SimMarket, limiter: WeightLimiter, faults: Faults, stats: Stats):
        self.market = market
        self.config = market.config
        self.clock = market.clock
        self.limiter = limiter
        self.faults = faults
        self.stats = stats
        self.rows = RowServer(market)

    def add_routes(self, app: web.Application) -> None:
        for name, m in MARKETS.items():
            p = m.api_prefix
            kl = self._guard(name, self._kline_weight, self.klines)
            app.router.add_get(f"{p}/klines", kl)
            if name == "spot":
                app.router.add_get(f"{p}/uiKlines", kl)
            app.router.add_get(
                f"{p}/exchangeInfo", self._guard(name, _const(m.exchange_info_weight), self.exinfo)
            )
            app.router.add_get(f"{p}/time", self._guard(name, _const(1), self.time))
            app.router.add_get(f"{p}/ping", self._guard(name, _const(1), self.ping))
            if m.funding_path:
                # USDⓈ-M fundingRate has its own 500/5min budget instead of REQUEST_WEIGHT.
                w = _const(0 if name == "um" else 1)
                app.router.add_get(m.funding_path, self._guard(name, w, self.funding, funding=name == "um"))

    # ---- plumbing ---------------------------------------------------------------------------------
    def _headers(self, market: str, used: int, retry_after: int | None = None) -> dict[str, str]:
        # Futures send the header in lower case (binance.md §2: match it case-insensitively)
        if market == "spot":
            h = {"X-MBX-USED-WEIGHT-1M": str(used), "X-MBX-USED-WEIGHT": str(used)}
        else:
            h = {"x-mbx-used-weight-1m": str(used)}
        if retry_after is not None and (market == "spot" or self.config.futures_retry_after):
            h["Retry-After"] = str(retry_after)
        return h

    def _respond(self, market: str, status: int, body: bytes, d: Decision, charged: int) -> web.Response:
        self.stats.record_rest(market, status, d.used, charged, d.window)
        return web.Response(
            status=status,
            body=body,
            content_type=_JSON,
            charset="UTF-8",
            headers=self._headers(market, d.used, d.retry_after),
        )

    def _limited(self, market: str, d: Decision) -> web.Response:
        lim = self.limiter.limits[market]
        # the wording of each market's error-code page: spot counts weight, the futures "requests"
        if d.status == 418:
            until = d.ban_until if d.ban_until is not None else self.clock.now_ms()
            if market == "spot":
                msg = f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to avoid bans."
            else:
                msg = f"Way too many requests; IP banned until {until}. Please use the websocket for live updates to avoid bans."
        elif market == "spot":
            msg = f"Too much request weight used; current limit is {lim} request weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
        else:
            msg = f"Too many requests; current limit is {lim} requests per minute. Please use the websocket for live updates to avoid polling the API."
        return self._respond(market, d.status, _dumps({"code": -1003, "msg": msg}), d, 0)

    def _guard(
        self,
        market: str,
        weight: Callable[[web.Request], int],
        handler: Callable[[web.Request, str], bytes],
        *,
        funding: bool = False,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def endpoint(request: web.Request) -> web.Response:
            fault = self.faults.rest_fault()
            if fault is not None:
                return await self._fault(market, fault)
            banned = self.limiter.banned(market)
            if banned is not None:
                return self._limited(market, banned)
            if self.faults.take_forced_429():
                return self._limited(market, self.limiter.reject(market))
            w = weight(request)
            d = self.limiter.take_funding(market) if funding else self.limiter.take(market, w)
            if d.status != 200:
                return self._limited(market, d)
            try:
                body = handler(request, market)
                status = 200
            except ApiError as e:
                body, status = _dumps({"code": e.code, "msg": e.msg}), e.status
            return self._respond(market, status, body, d, w)

        return endpoint

    async def _fault(self, market: str, kind: str) -> web.Response:
        d = Decision(200, self.limiter.used(market))
        if kind == "hang":
            await asyncio.sleep(self.faults.rest_hang_s)
            body = {
                "code": -1007,
                "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
            }
            return self._respond(market, 504, _dumps(body), d, 0)
        status = self.faults.rest_error_status
        msg = (
            "Service Unavailable."
            if status == 503
            else "Internal error; unable to process your request. Please try again."
        )
        return self._respond(market, status, _dumps({"code": -1001, "msg": msg}), d, 0)

    def _kline_weight(self, request: web.Request) -> int:
        try:
            limit = int(request.query.get("limit", "500"))
        except ValueError:
            limit = 500
        return MARKETS[self._market_of(request)].kline_weight(limit)

    @staticmethod
    def _market_of(request: web.Request) -> str:
        p = request.path
        return "spot" if p.startswith("/api/") else "um" if p.startswith("/fapi/") else "cm"

    def _symbol(self, market: str, q: Mapping[str, str]) -> SymbolInfo:
        info = self.market.universe.get(market, _required(q, "symbol"))
        if info is None or info.first_ms > self.clock.now_ms():
            raise ApiError(-1121, "Invalid symbol.")
        return info

    # ---- endpoints --------------------------------------------------------------------------------
    def klines(self, request: web.Request, market: str) -> bytes:
        q = request.query
        info = self._symbol(market, q)
        iv = INTERVALS.get(_required(q, "interval"))
        if iv is None or (iv.spot_only and market != "spot"):
            raise ApiError(-1120, "Invalid interval.")
        limit = _int(q, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= MARKETS[market].kline_max_limit:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        start, end = _int(q, "startTime"), _int(q, "endTime")
        micro = False
        if market == "spot":
            # Spot accepts ms or µs inputs and answers in µs when asked to.
            start = start // 1000 if start is not None and start >= 10**14 else start
            end = end // 1000 if end is not None and end >= 10**14 else end
            micro = request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"
        if start is not None and end is not None and start > end:
            raise ApiError(-1023, "Start time is greater than end time.")
        now = self.clock.now_ms()
        cfg = self.config
        if start is not None and cfg.start_in_candle:
            start = iv.floor(start)
        if market == "cm" and cfg.cm_recent_rows:
            span = cfg.cm_max_span_days * MS_PER_DAY
            if start is not None and end is not None:
                if end - start > span:
                    raise ApiError(
                        -1127, f"More than {cfg.cm_max_span_days} days between startTime and endTime."
                    )
                lo, hi = start, end
            elif start is not None:
                lo, hi = start, min(start + span, now)
            elif end is not None:
                lo, hi = end - span, end
            else:
                lo, hi = -_BIG, now
            newest = True
        elif start is None or (market == "um" and cfg.um_recent_rows and end is not None):
            lo, hi, newest = (-_BIG if start is None else start), (end if end is not None else _BIG), True
        else:
            lo, hi, newest = start, (end if end is not None else _BIG), False
        body, _ = self.rows.select(info, iv, lo, hi, limit, now, newest_first=newest, micro=micro)
        return body

    def exinfo(self, request: web.Request, market: str) -> bytes:
        now = self.clock.now_ms()
        uni = self.market.universe
        infos = [i for i in uni.symbols[market].values() if i.first_ms <= now]
        q = request.query
        if market == "spot":
            if q.get("symbol"):
                infos = [self._symbol(market, q)]
            elif q.get("symbols"):
                try:
                    wanted = json.loads(q["symbols"])
                except ValueError as exc:
                    raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from exc
                known = {i.symbol: i for i in infos}
                if not isinstance(wanted, list) or any(s not in known for s in wanted):
                    raise ApiError(-1121, "Invalid symbol.")
                infos = [known[s] for s in wanted]
            if q.get("symbolStatus"):
                infos = [i for i in infos if uni.status(i, now) == q["symbolStatus"]]
        limit = self.config.advertised_weight_limits.get(market, self.limiter.limits[market])
        return _dumps(exchange_info(self.market, market, now, int(limit), infos))

    def time(self, request: web.Request, market: str) -> bytes:
        return _dumps({"serverTime": self.clock.now_ms()})

    def ping(self, request: web.Request, market: str) -> bytes:
        return b"{}"

    def funding(self, request: web.Request, market: str) -> bytes:
        q = request.query
        if market == "cm" or q.get("symbol"):
            infos = [self._symbol(market, q)]
        else:
            infos = [
                i for i in self.market.universe.symbols[market].values() if i.first_ms <= self.clock.now_ms()
            ]
        limit = _int(q, "limit")
        limit = 100 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        start, end = _int(q, "startTime"), _int(q, "endTime")
        now = self.clock.now_ms()
        lo = start if start is not None else 0
        hi = min(end if end is not None else now, now)
        perps = [i for i in infos if i.contract_type == "PERPETUAL"]
        newest = start is None or market in self.config.funding_newest_first
        found = _funding_slots(self.market, perps, lo, hi, limit, newest=newest)
        by_symbol: dict[str, list[int]] = {}
        for t, sym in found:
            by_symbol.setdefault(sym, []).append(t)
        made = {}  # one walk per symbol, however the rows interleave
        for i in perps:
            if i.symbol in by_symbol:
                for r in funding_rows(self.market, i, by_symbol[i.symbol]):
                    made[(r["fundingTime"], i.symbol)] = r
        rows = [made[k] for k in found]
        return _dumps(rows)
