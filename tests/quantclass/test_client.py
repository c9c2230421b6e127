"""The Quantclass client against a tiny local aiohttp server: answers, errors, retries, secrets."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lake.errors import ConfigError, DataError, NotFoundError, UpstreamError
from lake.quantclass.client import API_PATH, QuantclassClient
from lake.quantclass.files import SHANGHAI, encode_archive
from lake.settings import Settings

KEY, UUID = "secret-key-123", "uuid-456"
CSV = b"candle_begin_time,symbol,open,high,low,close,volume,quote_volume,trade_num,taker_buy_base_asset_volume,taker_buy_quote_asset_volume,tag\n2024-10-08 05:00:00,BTCUSDT,1,2,0.5,1.5,10,15,3,4,6,HasSwap\n"


class Server:
    def __init__(self) -> None:
        self.status = 200
        self.fail_times = 0
        self.busy = 0
        self.calls = 0
        self.seen: list[tuple[str | None, str | None]] = []
        self.url = ""

    async def api(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.seen.append((request.headers.get("api-key"), request.query.get("uuid")))
        if self.fail_times:
            self.fail_times -= 1
            return web.Response(status=503)
        if self.status != 200:
            return web.Response(status=self.status, text="no")
        if request.query.get("offset") == "bad":  # an error page echoing the request
            return web.Response(
                text=f"<html>uuid={request.query.get('uuid')} key={request.headers.get('api-key')}"
            )
        if request.query.get("offset") == "refused":  # an error answered with HTTP 200
            return web.json_response({"code": 4001, "msg": f"no such user {request.query.get('uuid')}"})
        if request.query.get("offset") == "echo-ts":  # the uuid echoed where a time belongs
            return web.json_response({"data": {"spot": "s", "swap": "w", "ts": request.query.get("uuid")}})
        if request.query.get("offset") == "echo-query":  # the query string echoed, still encoded
            return web.json_response({"code": 1, "msg": f"bad request {request.query_string}"})
        if request.query.get("offset") == "busy":
            self.busy += 1
            if self.busy == 1:
                return web.Response(status=429, headers={"Retry-After": "0"})
        files = f"{self.url}/files"
        return web.json_response(
            {
                "data": {
                    "spot": f"{files}/x-spot.7z?_upt=1",
                    "swap": f"{files}/x-swap.7z?_upt=2",
                    "ts": "202410081500",
                }
            }
        )

    async def file(self, request: web.Request) -> web.Response:
        return web.Response(body=encode_archive(CSV, "spot_1h0m.csv"))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    app = web.Application()
    app.router.add_get(API_PATH, s.api)
    app.router.add_get("/files/{name}", s.file)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    s.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield s
    await runner.cleanup()


async def test_latest_and_candles(server: Server) -> None:
    async with QuantclassClient(server.url, KEY, UUID) as qc:
        latest = await qc.latest("15m")
        df = await qc.candles(latest.spot)
    assert server.seen == [(KEY, UUID)]
    assert latest.ts == dt.datetime(2024, 10, 8, 15, tzinfo=SHANGHAI) and latest.url("swap").endswith(
        "x-swap.7z?_upt=2"
    )
    assert df.rows(named=True)[0]["candle_begin_time"] == dt.datetime(2024, 10, 8, 5, tzinfo=dt.UTC)


async def test_transient_errors_are_retried(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lake.quantclass.client._FIRST_RETRY_S", 0.0)  # (not asyncio.sleep: aiohttp uses it)
    server.fail_times = 2
    async with QuantclassClient(server.url, KEY, UUID, retries=3) as qc:
        await qc.latest("0m")
    assert server.calls == 3
    server.fail_times = 10
    async with QuantclassClient(server.url, KEY, UUID, retries=2) as qc:
        with pytest.raises(UpstreamError, match="503"):
            await qc.latest("0m")


@pytest.mark.parametrize(
    ("status", "error"), [(401, ConfigError), (403, ConfigError), (404, NotFoundError), (400, DataError)]
)
async def test_errors_never_show_the_secrets(
    server: Server, status: int, error: type[Exception], caplog: pytest.LogCaptureFixture
) -> None:
    server.status = status
    caplog.set_level(logging.DEBUG)
    async with QuantclassClient(server.url, KEY, UUID) as qc:
        with pytest.raises(error) as info:
            await qc.latest("0m")
        assert KEY not in str(info.value) and UUID not in str(info.value)
        assert KEY not in repr(qc) and UUID not in repr(qc)
    assert KEY not in caplog.text and UUID not in caplog.text


async def test_unexpected_body_and_unreachable_server(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with QuantclassClient(server.url, KEY, UUID) as qc:
        with pytest.raises(DataError, match="no JSON") as info:
            await qc.latest("bad")
        assert KEY not in str(info.value) and UUID not in str(info.value)  # the page echoed both
        with pytest.raises(DataError, match=r"refused offset refused: no such user \*\*\*") as info:
            await qc.latest("refused")
        assert UUID not in str(info.value)
        await qc.latest("busy")  # a 429 is waited out and retried
    assert server.busy == 2
    monkeypatch.setattr("lake.quantclass.client._FIRST_RETRY_S", 0.0)  # (not asyncio.sleep: aiohttp uses it)
    async with QuantclassClient("http://127.0.0.1:9", KEY, UUID, retries=1) as qc:
        with pytest.raises(UpstreamError):
            await qc.latest("0m")


def test_credentials_required_for_the_real_api() -> None:
    with pytest.raises(ConfigError, match="quantclass_api_key"):
        QuantclassClient.from_settings(Settings())
    assert QuantclassClient.from_settings(
        Settings(quantclass_api_key="k", quantclass_uuid="u")
    ).base_url.startswith("https://api.quantclass.cn")


@pytest.mark.parametrize("uuid", [UUID, "u+v w/x=y&z%"])
async def test_echoed_secrets_are_masked_also_url_encoded(server: Server, uuid: str) -> None:
    """A server that echoes the UUID where the time belongs, or echoes the query string as it came
    (percent-encoded: ``+``, space, ``/`` change form), shows no secret in the error."""
    async with QuantclassClient(server.url, KEY, uuid) as qc:
        with pytest.raises(DataError, match="unexpected Quantclass API answer") as info:
            await qc.latest("echo-ts")
        assert uuid not in str(info.value) and "***" in str(info.value)
        with pytest.raises(DataError, match="refused offset echo-query") as info:
            await qc.latest("echo-query")
        shown = str(info.value)
        assert "offset=echo-query" in shown and "uuid=***" in shown, shown
