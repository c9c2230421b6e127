"""The simulator behaves like Binance where an older simulator did not (each test failed on it).

Sources: ../shared/reference/binance.md where it speaks; where it is silent, the test says so.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import aiohttp

from lake.sim import SimServer

H = 3_600_000


async def _get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[aiohttp.ClientResponse, Any]:
    async with http.get(url, params=params) as r:
        return r, await r.json(content_type=None)


async def test_usdm_funding_is_not_one_8h_grid(sim: SimServer, http: aiohttp.ClientSession) -> None:
    # The reference is silent on fundingTime values; Binance's own data shows them: many USDⓈ-M
    # perpetuals moved from 8h to 4h funding (the archive's fundingRate CSV carries
    # funding_interval_hours, binance.md §5), and fundingTime is at times a few ms after the hour.
    # A client assuming an exact 8h grid passed against a simulator that had one.
    _, rows = await _get(http, f"{sim.base_url}/fapi/v1/fundingRate", limit="1000")
    assert len(rows) == 1000
    times: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        assert set(r) == {"symbol", "fundingTime", "fundingRate", "markPrice"}
        assert isinstance(r["fundingTime"], int) and isinstance(r["fundingRate"], str)
        times[r["symbol"]].append(r["fundingTime"])
    assert [(r["fundingTime"], r["symbol"]) for r in rows] == sorted(
        (r["fundingTime"], r["symbol"]) for r in rows
    )
    late = [t % H for ts in times.values() for t in ts if t % H]
    assert late and max(late) < 1000  # ms late, never a different hour
    spacing = {(b - b % H) - (a - a % H) for ts in times.values() for a, b in itertools.pairwise(ts)}
    assert {4 * H, 8 * H} <= spacing
    # COIN-M perpetuals fund every 8h on the hour
    _, cm = await _get(http, f"{sim.base_url}/dapi/v1/fundingRate", symbol="BTCUSD_PERP", limit="1000")
    cm_t = [r["fundingTime"] for r in cm]
    assert len(cm_t) > 100 and all(t % (8 * H) == 0 for t in cm_t)


async def test_usdm_funding_windows_are_inclusive_of_late_stamps(
    sim: SimServer, http: aiohttp.ClientSession
) -> None:
    # startTime/endTime filter the fundingTime as sent (inclusive, binance.md §3), late ms included
    _, rows = await _get(http, f"{sim.base_url}/fapi/v1/fundingRate", limit="1000")
    late = next(r for r in rows if r["fundingTime"] % H)
    t, sym = late["fundingTime"], late["symbol"]
    url = f"{sim.base_url}/fapi/v1/fundingRate"
    _, one = await _get(http, url, symbol=sym, startTime=str(t), endTime=str(t))
    assert [r["fundingTime"] for r in one] == [t]
    _, none = await _get(http, url, symbol=sym, startTime=str(t - t % H), endTime=str(t - 1))
    assert none == []


async def test_futures_weight_header_arrives_lower_case(sim: SimServer, http: aiohttp.ClientSession) -> None:
    # binance.md §2: futures headers arrive lower case (x-mbx-used-weight-1m); match case-insensitively
    q = {"symbol": "BTCUSDT", "interval": "1m", "limit": "1"}
    for path in ("/fapi/v1/klines", "/dapi/v1/klines"):
        params = q if path.startswith("/fapi") else {**q, "symbol": "BTCUSD_PERP"}
        async with http.get(f"{sim.base_url}{path}", params=params) as r:
            names = [k for k, _ in r.raw_headers]
            assert b"x-mbx-used-weight-1m" in names and b"X-MBX-USED-WEIGHT-1M" not in names
            assert r.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    async with http.get(f"{sim.base_url}/api/v3/klines", params=q) as r:
        assert r.headers["x-mbx-used-weight-1m"] == r.headers["X-MBX-USED-WEIGHT"] == "2"
