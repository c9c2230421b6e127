"""Async Binance REST client for one market: every request governed, retried and translated.

    async with RestClient.from_settings(settings, "um") as client:     # syncs the server clock
        info = await client.exchange_info()                             # also adopts rateLimits
        rows = await client.klines("BTCUSDT", "5m", start_ms=t0, end_ms=t1 - 1, limit=499)
        now = client.server_now_ms()                                    # estimated server time

What every request goes through (``RestClient.get``):

1. a concurrency slot (``max_concurrency``), then a permit for its weight from the market's
   ``WeightGovernor`` (and, for ``/fapi/v1/fundingRate``, from the separate 500-per-5-minutes
   limiter); the clock is re-synced with the time endpoint when its uncertainty grows;
2. the response's ``X-MBX-USED-WEIGHT-<n><unit>`` header (matched case-insensitively) is fed back;
3. errors are translated at this boundary (see ``lake.errors``):

   * 429 → every permit of the market stops (in all processes sharing the budget file) for
     ``Retry-After`` seconds (at least until the next window), then the request is retried;
     ``RateLimitedError`` after ``max_rate_limited`` consecutive 429s;
   * 429 → a limit named in its message below the one in use is adopted (exchangeInfo may
     advertise more than is enforced);
   * 429 without ``Retry-After`` (undocumented for futures) → until the next window, or while the
     server clock is not synced yet, 0.5 s doubling per repeat (never an immediate resend);
   * 418 → logged loudly, the ban is waited out (``Retry-After``, else the end the body names:
     "IP banned until <server ms>", else 2 minutes), then retried; ``BannedError`` if the ban is
     longer than ``max_ban_wait_s``;
   * 5xx, 403, timeouts, dropped connections, unparsable bodies → retried ``retries`` times with
     capped, jittered exponential backoff, then ``UpstreamError``; an endpoint that has never
     answered gets only ``connect_retries`` retries, so a wrong URL fails within a few seconds;
   * 400/404 → ``NotFoundError`` for an unknown symbol (code -1121), else ``ValidationError``.

``Retry-After`` is read as real seconds (Binance's meaning; the simulator converts its virtual wait to
real seconds too); pass ``retry_after_unit="server"`` for a server announcing waits on its own clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from lake.binance.intervals import parse_interval
from lake.binance.markets import MARKETS, Endpoints, Market, get_market
from lake.binance.symbols import validate_symbol
from lake.errors import (
    BannedError,
    NotFoundError,
    RateLimitedError,
    UpstreamError,
    ValidationError,
)
from lake.ingest.governor import MINUTE_MS, ServerClock, WeightGovernor, budget_path
from lake.net import is_loopback, proxy_from_env

__all__ = [
    "FUNDING_LIMIT",
    "ClientStats",
    "Response",
    "RestClient",
    "parse_rate_limit",
]

log = logging.getLogger("lake.ingest.rest")

# /fapi/v1/fundingRate shares a 500 requests / 5 min / IP limit with /fapi/v1/fundingInfo.
FUNDING_LIMIT = (500, 5 * MINUTE_MS)
_BANNED_UNTIL = re.compile(r"banned until (\d{10,17})", re.IGNORECASE)
# Spot words it "current limit is 6000 request weight per 1 MINUTE"; the futures error-code pages
# "current limit is 2400 requests per minute" (no count: one); some answers are reported to name the
# IP ("current limit of IP(1.2.3.4) is 2400 requests per minute").
_WEIGHT_LIMIT = re.compile(
    r"current limit (?:of IP\([^)]*\) )?is (\d+) (?:request weight|requests) per (?:(\d+) )?([A-Za-z]+)",
    re.IGNORECASE,
)
_INTERVAL_MS = {"SECOND": 1000, "MINUTE": MINUTE_MS, "HOUR": 60 * MINUTE_MS, "DAY": 24 * 60 * MINUTE_MS}


def parse_rate_limit(exchange_info: Mapping[str, Any]) -> tuple[int, int, str] | None:
    """``(limit, window_ms, header)`` of the REQUEST_WEIGHT limit in exchangeInfo ``rateLimits``.

    Prefers the per-minute entry; ``header`` is the used-weight header naming that window
    (``X-MBX-USED-WEIGHT-1M``). ``None`` when there is no REQUEST_WEIGHT entry.
    """
    best: tuple[int, int, str] | None = None
    limits = exchange_info.get("rateLimits")
    # (a hostile or buggy answer: rateLimits not a list, a limit of 1e400, 0 or below: no limit
    # learnt from it, rather than a crash: WeightGovernor.set_limit raises on a limit <= 0)
    for rl in limits if isinstance(limits, list) else []:
        if not isinstance(rl, Mapping) or rl.get("rateLimitType") != "REQUEST_WEIGHT":
            continue
        unit = str(rl.get("interval", "")).upper()
        if unit not in _INTERVAL_MS:
            continue
        try:
            num = int(rl.get("intervalNum", 1))
            limit = int(rl["limit"])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
        if num <= 0 or limit <= 0:
            continue
        cand = (limit, num * _INTERVAL_MS[unit], f"X-MBX-USED-WEIGHT-{num}{unit[0]}")
        if unit == "MINUTE":
            return cand
        if best is None or cand[1] < best[1]:
            best = cand
    return best


@dataclass(frozen=True, slots=True)
class Response:
    """A successful (200) response."""

    data: Any
    status: int
    used_weight: int | None
    headers: Mapping[str, str]
    elapsed_s: float


@dataclass
class ClientStats:
    requests: int = 0
    weight: int = 0
    retries: int = 0
    status: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "weight": self.weight,
            "retries": self.retries,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "errors": dict(self.errors),
            "bytes": self.bytes,
        }


class RestClient:
    """REST client for one Binance market (``"spot"``, ``"um"`` or ``"cm"``).

    Use as an async context manager (or call ``start()``/``close()``). ``session`` may be shared
    between clients (it is then not closed here). ``state_dir`` enables the cross-process budget
    file; ``governor`` lets callers share one governor between clients of the same market.
    """

    def __init__(
        self,
        market: Market | str,
        *,
        endpoints: Endpoints | None = None,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        governor: WeightGovernor | None = None,
        timeout: float = 10.0,
        max_concurrency: int = 64,
        retries: int = 5,
        connect_retries: int = 2,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        reserve: float = 0.01,
        max_rate_limited: int = 20,
        max_ban_wait_s: float = 3600.0,
        retry_after_unit: str = "real",
        calibrate_s: float = 0.2,
    ) -> None:
        self.market = market if isinstance(market, Market) else get_market(market)
        ep = endpoints or Endpoints()
        self.base_url = (base_url or ep.rest[self.market.name]).rstrip("/")
        self._session = session
        self._own_session = session is None
        self.timeout = timeout
        self.retries = retries
        self.connect_retries = connect_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_rate_limited = max_rate_limited
        self.max_ban_wait_s = max_ban_wait_s
        if retry_after_unit not in ("server", "real"):
            raise ValueError("retry_after_unit must be 'server' or 'real'")
        self.retry_after_unit = retry_after_unit
        self.calibrate_s = calibrate_s
        # Extra clock samples at start until the server clock's rate is measured: only for a server
        # on this machine (a simulator may run faster than real time); the exchange's clock runs at
        # real time, the prior, and far away the extra samples would cost up to 2 s a start
        self.calibrate_max_extra = 10 if is_loopback(self.base_url) else 0
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        if governor is None:
            governor = WeightGovernor(
                self.market.name,
                limit=self.market.default_weight_limit,
                reserve=reserve,
                state_file=budget_path(state_dir, self.market.name, self.base_url) if state_dir else None,
            )
            self._own_governor = True
        else:
            self._own_governor = False
        self.governor = governor
        self.clock: ServerClock = governor.clock
        if governor.resync is None:
            governor.resync = self._unguarded_sync
        self.funding_governor: WeightGovernor | None = None
        if self.market.name == "um":
            self.funding_governor = WeightGovernor(
                "um-funding",
                limit=FUNDING_LIMIT[0],
                window_ms=FUNDING_LIMIT[1],
                reserve=0.02,
                clock=self.clock,
                state_file=budget_path(state_dir, "um-funding", self.base_url) if state_dir else None,
            )
        self.weight_header = "X-MBX-USED-WEIGHT-1M"
        self.stats = ClientStats()
        self._answered = False
        self._syncing = False
        self._started = False
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Any, market: Market | str, **kwargs: Any) -> RestClient:
        """A client configured from ``Settings`` (endpoints, state dir, timeout, concurrency)."""
        kwargs.setdefault("endpoints", settings.endpoints)
        if "state_dir" not in kwargs:  # one budget per user and exchange, whatever the lake (settings)
            name = market.name if isinstance(market, Market) else get_market(market).name
            kwargs["state_dir"] = settings.budget_dir(
                kwargs.get("base_url") or kwargs["endpoints"].rest[name]
            )
        kwargs.setdefault("timeout", settings.http_timeout)
        kwargs.setdefault("max_concurrency", settings.max_concurrency)
        return cls(market, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> RestClient:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the session and calibrate the server clock (two time requests ``calibrate_s`` apart)."""
        if self._started:
            return
        self._started = True
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=min(self.timeout, 5.0)),
                connector=aiohttp.TCPConnector(limit=self.max_concurrency, ttl_dns_cache=300),
                trust_env=proxy_from_env(self.base_url),  # HTTP(S)_PROXY / NO_PROXY (lake.net)
            )
        try:
            self.governor.adopt_shared_clock_rate()  # (until this clock's own samples measure it)
            await self.sync_clock()
            if self.clock.samples < 2:
                await asyncio.sleep(self.calibrate_s)
                await self.sync_clock()
            # Round trips slowed by a loaded machine can leave two samples calibrate_s apart unable
            # to measure the server clock's rate: the clock then assumes real time, and a simulator
            # running 20x is taken for it (windows misplaced by more every second, nothing prompting
            # a re-sync for 30 s). Lengthen the baseline until the rate is measured (a few samples).
            for _ in range(self.calibrate_max_extra):
                if self.clock.rate_rel_err != float("inf"):
                    break
                await asyncio.sleep(self.calibrate_s)
                await self.sync_clock()
            self.governor.share_clock_rate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_session and self._session is not None:
            await self._session.close()
        if self._own_governor:
            self.governor.close()
        if self.funding_governor is not None:
            self.funding_governor.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RestClient not started: use 'async with RestClient(...)' or await start()")
        return self._session

    # -- time ------------------------------------------------------------------------------------
    def server_now_ms(self) -> int:
        """Estimated current server time in ms (local clock mapped through the measured offset/rate)."""
        return int(self.clock.now_ms())

    async def sync_clock(self) -> int:
        """One time request (weight 1); feeds the clock and returns the server time."""
        self._syncing = True
        try:
            resp = await self._request(self.market.time_path, None, 1, timed=True)
        finally:
            self._syncing = False
        return int(resp.data["serverTime"])

    async def _unguarded_sync(self) -> None:
        """A time request outside the permit queue, for the governor while it waits (it reserved the
        weight): a clock sample, and the IP's used weight at a known server time (near a window's
        end, the governor's measure of other programs' use of it). A 429/418 answer pauses every
        request like any other."""
        if self._session is None or self._closed:
            return
        url = f"{self.base_url}{self.market.time_path}"
        sent = time.monotonic()
        async with self.session.get(url) as resp:
            body = await resp.read()
            status = resp.status
            headers = resp.headers
        recv = time.monotonic()
        self.stats.requests += 1
        self.stats.weight += 1
        self.stats.status[status] += 1
        used = _used_weight(headers, self.weight_header)
        if status == 200:
            server_ms = float(json.loads(body)["serverTime"])
            self.clock.observe(sent, recv, server_ms)
            if used is not None:
                # (the server's own stamp places the count in its window, whatever the clock's error)
                self.governor.observe(used, server_ms)
        elif used is not None:
            self.governor.observe(used)
        if status in (429, 418):
            await self._rate_limited(status, _retry_after(headers), body, "time (clock re-sync)", 1)

    async def server_time(self) -> int:
        """The server's time (ms) from the time endpoint."""
        return await self.sync_clock()

    def _sync_threshold_ms(self) -> float:
        return self.governor.window_ms * 0.005

    # -- endpoints -------------------------------------------------------------------------------
    async def exchange_info(self) -> dict[str, Any]:
        """``exchangeInfo`` of the market; the governor adopts its REQUEST_WEIGHT limit."""
        resp = await self.get(self.market.exchange_info_path, None, self.market.exchange_info_weight)
        data = resp.data
        if not isinstance(data, dict) or not isinstance(data.get("symbols"), list):
            raise UpstreamError(f"{self.base_url}{self.market.exchange_info_path}: unexpected payload")
        rl = parse_rate_limit(data)
        if rl is not None:
            limit, window_ms, header = rl
            self.governor.set_limit(limit, window_ms)
            self.weight_header = header
        return data

    async def klines(
        self,
        symbol: str,
        interval: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int | None = None,
    ) -> list[list[Any]]:
        """Raw kline rows (``startTime``/``endTime`` inclusive, as Binance takes them).

        ``limit`` defaults to the market's most weight-efficient size (1000 spot, 499 futures);
        the request's weight follows from it (``Market.kline_weight``).
        """
        validate_symbol(symbol)
        iv = parse_interval(interval, spot=self.market.name == "spot")
        lim = self.market.kline_request_limit if limit is None else int(limit)
        if not 1 <= lim <= self.market.kline_max_limit:
            raise ValidationError(f"kline limit {lim} outside 1..{self.market.kline_max_limit}")
        params: dict[str, str] = {"symbol": symbol, "interval": iv.name, "limit": str(lim)}
        if start_ms is not None:
            params["startTime"] = str(int(start_ms))
        if end_ms is not None:
            params["endTime"] = str(int(end_ms))
        resp = await self.get(self.market.klines_path, params, self.market.kline_weight(lim))
        if not isinstance(resp.data, list):
            got = type(resp.data).__name__
            raise UpstreamError(f"{self.market.klines_path} {symbol}: expected a list, got {got}")
        return resp.data

    async def funding_rate(
        self,
        symbol: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Raw funding rows ``{symbol, fundingTime, fundingRate, markPrice}`` (times inclusive)."""
        if self.market.funding_path is None:
            raise ValidationError(f"market {self.market.name} has no funding rates")
        validate_symbol(symbol)
        params: dict[str, str] = {"symbol": symbol, "limit": str(int(limit))}
        if start_ms is not None:
            params["startTime"] = str(int(start_ms))
        if end_ms is not None:
            params["endTime"] = str(int(end_ms))
        resp = await self.get(self.market.funding_path, params, 1, extra_governor=self.funding_governor)
        if not isinstance(resp.data, list):
            raise UpstreamError(f"{self.market.funding_path} {symbol}: expected a list")
        return resp.data

    # -- the request path ------------------------------------------------------------------------
    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None,
        weight: int,
        *,
        extra_governor: WeightGovernor | None = None,
    ) -> Response:
        """GET ``path`` with ``weight``: governed, retried, errors translated (see module docs)."""
        if not self._syncing and self._answered and self.clock.needs_sync(self._sync_threshold_ms()):
            await self.sync_clock()
        return await self._request(path, params, weight, extra_governor=extra_governor)

    async def _request(
        self,
        path: str,
        params: Mapping[str, str] | None,
        weight: int,
        *,
        extra_governor: WeightGovernor | None = None,
        timed: bool = False,
    ) -> Response:
        url = f"{self.base_url}{path}"
        what = f"GET {url}" + (f" {dict(params)}" if params else "")
        failures = 0
        limited = 0
        while True:
            async with self._slots:
                if extra_governor is not None:
                    extra = await extra_governor.acquire(1)
                    extra_governor.complete(extra)
                permit = await self.governor.acquire(weight)
                self.stats.requests += 1
                self.stats.weight += weight
                sent = time.monotonic()
                try:
                    async with self.session.get(url, params=params) as resp:
                        body = await resp.read()
                        status = resp.status
                        headers = resp.headers
                    recv = time.monotonic()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self.governor.complete(permit, None)
                    failures += 1
                    kind = type(exc).__name__
                    self.stats.errors[kind] += 1
                    refused = isinstance(exc, aiohttp.ClientConnectorError)
                    budget = self.retries if self._answered or not refused else self.connect_retries
                    if failures > budget:
                        detail = str(exc) or kind
                        raise UpstreamError(
                            f"cannot reach {url}: {detail} (after {failures} attempts)"
                            if refused
                            else f"{what}: {detail or kind} (after {failures} attempts)"
                        ) from exc
                    await self._backoff(failures, f"{what}: {kind}")
                    continue
            self.stats.status[status] += 1
            self.stats.bytes += len(body)
            used = _used_weight(headers, self.weight_header)
            self.governor.complete(permit, used)
            self._answered = True
            if status == 200:
                try:
                    data = json.loads(body)
                except ValueError as exc:
                    failures += 1
                    if failures > self.retries:
                        raise UpstreamError(f"{what}: response is not JSON") from exc
                    await self._backoff(failures, f"{what}: bad JSON")
                    continue
                if timed and isinstance(data, dict) and "serverTime" in data:
                    self.clock.observe(sent, recv, float(data["serverTime"]))
                return Response(data, status, used, headers, recv - sent)
            if status in (429, 418):
                limited += 1
                retry_after = _retry_after(headers)
                await self._rate_limited(status, retry_after, body, what, limited)
                continue
            if status >= 500 or status == 403:
                failures += 1
                if failures > self.retries:
                    raise UpstreamError(f"{what}: HTTP {status} {_msg(body)} (after {failures} attempts)")
                await self._backoff(failures, f"{what}: HTTP {status}")
                continue
            code, msg = _code_msg(body)
            if code == -1121 or "invalid symbol" in msg.lower():
                raise NotFoundError(f"{what}: {msg or 'invalid symbol'}")
            if status in (400, 404):
                raise ValidationError(f"{what}: HTTP {status} {msg}".rstrip())
            raise UpstreamError(f"{what}: HTTP {status} {msg}".rstrip())

    async def _rate_limited(
        self, status: int, retry_after: float | None, body: bytes, what: str, n: int
    ) -> None:
        gov = self.governor
        now = self.clock.now_ms()
        # until the next window certainly began, in real seconds (only meaningful once synced)
        window_left = 0.0
        if self.clock.synced:
            window_left = self.clock.real_seconds(
                (gov.window_of(now) + 1) * gov.window_ms - now + self.clock.uncertainty_ms()
            )
        ra_real: float | None = None
        if retry_after is not None:
            ra_real = (
                retry_after
                if self.retry_after_unit == "real"
                else self.clock.real_seconds(retry_after * 1000)
            )
        if status == 418:
            wait = ra_real if ra_real is not None else self._ban_left_s(body)
            if wait is None:
                wait = 120.0  # Binance's shortest ban
            log.error(
                "BANNED (HTTP 418) by %s: %s; waiting %.1fs before resuming", self.base_url, _msg(body), wait
            )
            if wait > self.max_ban_wait_s:
                raise BannedError(f"{what}: IP banned for {wait:.0f}s (HTTP 418) {_msg(body)}", retry_after)
        else:
            self._learn_limit(body)
            wait = max(ra_real or 0.0, window_left)
            if ra_real is None and not self.clock.synced:
                # no Retry-After and no idea where the server's window ends: back off (0.5, 1, 2 … 60
                # s) rather than resend at once (requests sent on after a 429 earn a 418 ban)
                wait = max(wait, min(60.0, 0.5 * 2.0 ** (n - 1)))
            log.warning(
                "rate limited (HTTP 429) by %s: %s; all requests paused %.2fs",
                self.base_url,
                _msg(body),
                wait,
            )
        if n > self.max_rate_limited:
            err = BannedError if status == 418 else RateLimitedError
            raise err(f"{what}: HTTP {status} {n} times in a row; giving up", retry_after)
        gov.pause(wait, f"HTTP {status}")
        self.clock.last_sync_mono = float("-inf")  # re-sync before trusting the window again

    def _learn_limit(self, body: bytes) -> None:
        """Adopt the limit a -1003 message names ("current limit is 2400 request weight per 1
        MINUTE" on spot, "current limit is 2400 requests per minute" on futures) when it is below the
        one in use: exchangeInfo may advertise more than the server enforces (COIN-M's docs say 6000
        in one place, 2400 in another)."""
        m = _WEIGHT_LIMIT.search(_code_msg(body)[1])
        if m is None:
            return
        limit, num, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3).upper().removesuffix("S")
        gov = self.governor
        if _INTERVAL_MS.get(unit, 0) * num == gov.window_ms and 0 < limit < gov.limit:
            log.warning(
                "%s: the server enforces %d weight per window, not %d: adopting it",
                self.base_url,
                limit,
                gov.limit,
            )
            gov.learn_limit(limit)

    def _ban_left_s(self, body: bytes) -> float | None:
        """Real seconds until the ban a 418 body announces ("IP banned until <server ms>") ends."""
        m = _BANNED_UNTIL.search(_code_msg(body)[1])
        if m is None:
            return None
        until = int(m.group(1))
        if until >= 10**15:  # a server answering in microseconds
            until //= 1000
        if self.clock.synced:
            return self.clock.real_seconds(until - self.clock.now_ms() + self.clock.uncertainty_ms())
        left = until / 1000.0 - time.time()  # no server clock yet: the local clock stands in for it
        return left + 1.0 if 0.0 < left <= 4 * 86_400 else None

    async def _backoff(self, attempt: int, what: str) -> None:
        self.stats.retries += 1
        cap = min(self.backoff_cap, self.backoff_base * (2 ** (attempt - 1)))
        delay = cap / 2 + random.uniform(0, cap / 2)
        log.info("retrying in %.2fs (attempt %d): %s", delay, attempt + 1, what)
        await asyncio.sleep(delay)


def _used_weight(headers: Mapping[str, str], name: str) -> int | None:
    # aiohttp's headers are case-insensitive (CIMultiDictProxy); lower-case keys also work for dicts
    raw = headers.get(name) or headers.get(name.lower())
    if raw is None:
        raw = headers.get("X-MBX-USED-WEIGHT") or headers.get("x-mbx-used-weight")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _code_msg(body: bytes) -> tuple[int | None, str]:
    try:
        doc = json.loads(body)
    except ValueError:
        return None, body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict):
        code = doc.get("code")
        return (int(code) if isinstance(code, int) else None), str(doc.get("msg", ""))
    return None, str(doc)[:200]


def _msg(body: bytes) -> str:
    code, msg = _code_msg(body)
    return f"({code}) {msg}" if code is not None else msg


assert set(MARKETS) == {"spot", "um", "cm"}
