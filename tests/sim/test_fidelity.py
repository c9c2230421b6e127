"""Fidelity: python-binance, pointed at the simulator, parses its exchange info and klines."""

from __future__ import annotations

import asyncio
import warnings

from lake.binance.klines import klines_from_rest
from lake.sim import SimHandle, SimServer
from lake.sim.clock import to_ms
from lake.sim.testing import TEST_START

with warnings.catch_warnings():
    # python-binance imports a deprecated websockets name; that is its problem, not the simulator's.
    warnings.simplefilter("ignore", DeprecationWarning)
    from binance import AsyncClient, Client
    from binance.enums import HistoricalKlinesType

NOW = to_ms(TEST_START)


def _urls(base: str) -> dict[str, str]:
    return {"API_URL": f"{base}/api", "FUTURES_URL": f"{base}/fapi", "FUTURES_COIN_URL": f"{base}/dapi"}


async def test_python_binance_async_client(sim: SimServer) -> None:
    client = AsyncClient()
    for k, v in _urls(sim.base_url).items():
        setattr(client, k, v)
    try:
        await client.ping()
        assert (await client.get_server_time())["serverTime"] == NOW
        info = await client.get_exchange_info()
        assert any(s["symbol"] == "BTCUSDT" for s in info["symbols"])
        assert (await client.get_symbol_info("ETHBTC"))["quoteAsset"] == "BTC"
        rows = await client.get_klines(symbol="BTCUSDT", interval="1h", limit=5)
        assert len(rows) == 5 and rows[-1][0] == NOW
        hist = await client.get_historical_klines("ETHUSDT", "1h", "2025-03-14", "2025-03-15")
        assert [r[0] for r in hist] == [to_ms("2025-03-14") + h * 3_600_000 for h in range(25)]
        truth = sim.market.truth("usdt_spot", "1h", ["ETHUSDT"], "2025-03-14", "2025-03-15T01:00").drop(
            "symbol"
        )
        assert klines_from_rest(hist).drop("source").equals(truth)

        fut = await client.futures_exchange_info()
        assert {s["contractType"] for s in fut["symbols"]} >= {"PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER"}
        rows = await client.futures_klines(symbol="BTCUSDT", interval="5m", limit=499)
        assert len(rows) == 499
        hist = await client.futures_historical_klines("ETHUSDT", "1d", "2025-02-01", "2025-03-01")
        assert len(hist) == 29
        coin = await client.futures_coin_exchange_info()
        assert all("contractStatus" in s for s in coin["symbols"])
        rows = await client.futures_coin_klines(symbol="BTCUSD_PERP", interval="1h", limit=3)
        assert [r[0] for r in rows] == [NOW - 2 * 3_600_000, NOW - 3_600_000, NOW]
        first = await client._get_earliest_valid_timestamp("BTCUSDT", "1d", HistoricalKlinesType.FUTURES)
        assert first == sim.market.universe.history_start
        rates = await client.futures_funding_rate(symbol="BTCUSDT", limit=3)
        assert len(rates) == 3
    finally:
        await client.close_connection()


def test_python_binance_sync_client(shared_sim: SimHandle) -> None:
    cls = type("SimClient", (Client,), _urls(shared_sim.base_url))
    client = cls()  # pings on construction
    try:
        assert client.get_server_time()["serverTime"] == NOW
        assert len(client.get_exchange_info()["symbols"]) == 10
        rows = client.futures_klines(symbol="ETHUSDT", interval="1m", limit=1500)
        assert len(rows) == 1500 and rows[-1][0] == NOW
        assert client.response is not None and client.response.headers["X-MBX-USED-WEIGHT-1M"]
    finally:
        client.close_connection()
        # python-binance's sync client creates (and sets) an event loop it never closes.
        if not client.loop.is_running():
            client.loop.close()
            asyncio.set_event_loop(None)
