"""The REST client against a tiny local Binance-like server: weight, 429, 5xx, errors, unreachable."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from lake.errors import NotFoundError, UpstreamError
from lake.ingest.rest_client import RestClient, _used_weight, parse_rate_limit

from .rest_fake import FakeExchange


@pytest.fixture
async def fake() -> AsyncIterator[FakeExchange]:
    fx = await FakeExchange(speed=60.0, limit=300).start()
    try:
        yield fx
    finally:
        await fx.stop()


def test_parse_rate_limit_and_header_case() -> None:
    info = {
        "rateLimits": [
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
        ]
    }
    assert parse_rate_limit(info) == (6000, 60_000, "X-MBX-USED-WEIGHT-1M")
    assert parse_rate_limit({"rateLimits": []}) is None
    assert _used_weight({"x-mbx-used-weight-1m": "17"}, "X-MBX-USED-WEIGHT-1M") == 17
    assert _used_weight({"X-MBX-USED-WEIGHT": "3"}, "X-MBX-USED-WEIGHT-1M") == 3
    assert _used_weight({}, "X-MBX-USED-WEIGHT-1M") is None


async def test_client_calibrates_clock_and_adopts_limit(fake: FakeExchange, tmp_path: Path) -> None:
    fake.limit = 1234
    async with RestClient("um", base_url=fake.base_url, state_dir=tmp_path) as c:
        assert c.clock.rate == pytest.approx(60.0, rel=0.05)
        assert abs(c.server_now_ms() - fake.now_ms()) < 500
        await c.exchange_info()
        assert c.governor.limit == 1234
        rows = await c.klines("BTCUSDT", "5m", start_ms=fake.now_ms() - 10 * 300_000, limit=5)
        assert len(rows) == 5 and rows[0][0] % 300_000 == 0
    assert any(name.startswith("budget-um-") for name in os.listdir(tmp_path))


async def test_client_stays_under_the_limit_with_many_requests(fake: FakeExchange) -> None:
    fake.limit = 60
    async with RestClient("um", base_url=fake.base_url, max_concurrency=16) as c:
        await c.exchange_info()
        t0 = time.monotonic()
        # 180 requests of weight 1 against 60 per window: at least two window resets
        await asyncio.gather(*(c.klines("ETHUSDT", "5m", limit=10) for _ in range(180)))
        assert time.monotonic() - t0 < 10
    assert fake.statuses[429] == 0
    assert fake.max_used <= 60


async def test_client_honours_429_and_retries(fake: FakeExchange) -> None:
    async with RestClient("um", base_url=fake.base_url) as c:
        fake.force_429 = 2
        fake.retry_after_s = 1
        t0 = time.monotonic()
        rows = await c.klines("BTCUSDT", "5m", limit=3)
        assert len(rows) == 3
        assert time.monotonic() - t0 >= 0.9  # waited Retry-After (real seconds)
        assert c.governor.stats.pauses >= 1
        assert c.stats.status[429] == 2


async def test_client_retries_5xx_then_gives_up(fake: FakeExchange) -> None:
    async with RestClient("um", base_url=fake.base_url, backoff_base=0.01, retries=3) as c:
        fake.fail_next = 2
        assert len(await c.klines("BTCUSDT", "5m", limit=2)) == 2
        fake.fail_next = 10
        with pytest.raises(UpstreamError, match="HTTP 503"):
            await c.klines("BTCUSDT", "5m", limit=2)


async def test_client_unknown_symbol(fake: FakeExchange) -> None:
    async with RestClient("um", base_url=fake.base_url) as c:
        with pytest.raises(NotFoundError, match="Invalid symbol"):
            await c.klines("NOPEUSDT", "5m", limit=2)


async def test_client_unreachable_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match=r"cannot reach http://127\.0\.0\.1:9/fapi/v1/time"):
        async with RestClient("um", base_url="http://127.0.0.1:9", backoff_base=0.05):
            pass
    assert time.monotonic() - t0 < 5


async def test_418_without_retry_after_waits_until_the_ban_in_the_body_ends() -> None:
    # Retry-After on futures 418s is undocumented. The body says when the ban ends (server ms):
    # "IP banned until 1741...". Waiting a fixed guess instead (2 minutes) is too long for a short
    # ban and far too short for a long one (and requests sent while banned extend the ban).
    from lake.sim.testing import sim_server

    limits = {"spot": 6000, "um": 20, "cm": 2400}
    # speed 60: the 120 virtual seconds of a first ban are 2 real seconds
    async with sim_server(speed=60.0, weight_limits=limits, futures_retry_after=False, ban_after=1) as sim:
        async with RestClient("um", endpoints=sim.endpoints, max_ban_wait_s=30.0, calibrate_s=0.1) as c:
            url = f"{sim.base_url}/fapi/v1/klines?symbol=BTCUSDT&interval=5m&limit=500"
            async with aiohttp.ClientSession() as s:
                codes = []
                for _ in range(10):  # weight 5 each against 20: four 200s, a 429, then a ban
                    async with s.get(url) as r:
                        codes.append(r.status)
                        assert "Retry-After" not in r.headers
                    if r.status == 418:
                        break
            assert codes[-1] == 418
            t0 = time.monotonic()
            rows = await c.klines("BTCUSDT", "5m", limit=3)
            waited = time.monotonic() - t0
        assert len(rows) == 3
        assert c.stats.status[418] == 1 and c.stats.status[200] >= 1
        assert waited < 10.0  # ~2 s; the fixed guess was 120 s
        assert sim.stats.status_count("um", 418) == 2  # the raw client's, and the one we learnt from


async def test_429_without_retry_after_before_the_clock_is_synced_backs_off() -> None:
    # A 429 answering the very first (time) request, without Retry-After: the client cannot know
    # where the server's window ends, and resending at once is what earns a 418 ban.
    from lake.sim.testing import sim_server

    async with sim_server(futures_retry_after=False) as sim:
        sim.faults.update({"force_429": 2})
        t0 = time.monotonic()
        async with RestClient("um", endpoints=sim.endpoints, calibrate_s=0.05) as c:
            waited = time.monotonic() - t0
            assert c.stats.status[429] == 2 and c.governor.stats.pauses == 2
            assert c.clock.synced
    assert sim.stats.status_count("um", 429) == 2
    assert waited >= 1.5  # 0.5 s, then 1 s
