"""Independent review of `lake compare` (Quantclass) and the funding rates, against
/work/shared/reference/{quantclass,binance}.md rather than the simulator.

Each test failed before its fix:

* a damaged Quantclass 7z (a cut or corrupted download, a damaged file in ``--reference-dir``) let
  ``lzma.LZMAError`` (and, with a damaged header, KeyError/TypeError/AssertionError) escape py7zr:
  a traceback and exit 1 instead of a one-line ``DataError`` (exit 4);
* a CSV header that holds a column twice once its spaces are stripped (``open, open``) escaped as
  Polars' DuplicateError;
* ``lake compare --json`` printed an infinite error (ours ≠ 0 where theirs is 0, the seed's
  ``ours / theirs − 1``) as ``null``, exactly like a column nothing was compared in, so the worst
  mismatch read as "no data";
* the Quantclass client followed a redirect of the API with the ``api-key`` header, so aiohttp sent
  the key on to whatever host (or plain-http URL) the redirect named;
* ``fetch_funding`` asked for the same window for ever when a full page held no row of the window
  (a server or proxy ignoring startTime/endTime), although its comment promised it could not.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import py7zr
import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

from lake.commands import compare as compare_command
from lake.errors import DataError
from lake.ingest.funding import FUNDING_PAGE, fetch_funding
from lake.quantclass.client import API_PATH, QuantclassClient
from lake.quantclass.compare import compare_quantclass
from lake.quantclass.files import decode_archive, encode_archive, read_candles_csv
from lake.schema import VALUE_COLUMNS
from lake.settings import Settings
from lake.store.klines import write_klines
from lake.transform.build import build_offsets, scan_offsets
from tests.transform.helpers import T0_MS, random_candles

HEADER = (
    "candle_begin_time,symbol,open,high,low,close,volume,quote_volume,trade_num,"
    "taker_buy_base_asset_volume,taker_buy_quote_asset_volume,tag"
)
H = 3_600_000


def _csv(rows: int = 200) -> bytes:
    lines = [
        f"2024-10-08 05:00:00,SYM{i}USDT,1.5,2.25,0.5,1.75,10.125,15.5,3,4.25,6.5,HasSwap"
        for i in range(rows)
    ]
    return ("\n".join([HEADER, *lines]) + "\n").encode()


# ---------------------------------------------------------------------------------------------------
# Quantclass files


def test_a_damaged_archive_is_a_data_error_never_a_traceback() -> None:
    """Every single-byte corruption of the archive's packed stream is a DataError or (a byte that
    does not matter) the same candles; before the fix most were an escaped lzma.LZMAError."""
    csv = _csv()
    data = encode_archive(csv, "swap_1h0m.csv")
    want = read_candles_csv(csv)
    escaped: dict[str, int] = {}
    for i in range(32, len(data)):  # after the 32-byte signature header
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        try:
            got = decode_archive(bytes(damaged))
        except DataError:
            continue
        except Exception as exc:  # the bug: anything else reaches the CLI as a traceback
            escaped[type(exc).__name__] = escaped.get(type(exc).__name__, 0) + 1
            continue
        assert got.equals(want), f"byte {i}: a damaged archive read as different candles"
    assert escaped == {}
    truncated = data[: len(data) // 2]
    with pytest.raises(DataError, match="7z"):
        decode_archive(truncated)


def test_a_damaged_reference_file_is_exit_4_with_one_line(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 48, hole_rate=0.0))
    build_offsets(root, "usdt_perp", "1h", offsets="0m")
    ref = tmp_path / "ref"
    ref.mkdir()
    data = bytearray(encode_archive(_csv(), "swap_1h0m.csv"))
    for i in range(40, len(data) - 80, 7):  # the packed stream, not the headers
        data[i] ^= 0xFF
    (ref / "202401010800-swap_1h0m.7z").write_bytes(bytes(data))
    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    r = CliRunner().invoke(
        app, ["compare", "--type", "usdt_perp", "--root", str(root), "--reference-dir", str(ref)]
    )
    assert isinstance(r.exception, DataError), repr(r.exception)
    assert r.exception.exit_code == 4


def test_a_header_with_a_column_twice_once_stripped_is_a_data_error() -> None:
    csv = _csv(1).replace(b",high,", b", open,", 1)  # "open" and " open"
    with pytest.raises(DataError, match="Quantclass CSV"):
        read_candles_csv(csv)


# ---------------------------------------------------------------------------------------------------
# the API key stays with the API


async def test_the_api_key_is_not_sent_on_where_a_redirect_points() -> None:
    key, uuid = "key-do-not-leak", "uuid-do-not-leak"
    seen: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("api-key"))
        return web.json_response({"data": {"spot": "s", "swap": "w", "ts": "202410081500"}})

    async def start(app: web.Application, host: str) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        return runner, runner.addresses[0][1]

    other = web.Application()
    other.router.add_get(API_PATH, elsewhere)
    other_runner, other_port = await start(other, "127.0.0.2")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.2:{other_port}{API_PATH}?{request.query_string}")

    api = web.Application()
    api.router.add_get(API_PATH, redirect)
    api_runner, api_port = await start(api, "127.0.0.1")
    try:
        async with QuantclassClient(f"http://127.0.0.1:{api_port}", key, uuid, retries=0) as qc:
            with pytest.raises(DataError, match=r"redirects to http://127\.0\.0\.2") as info:
                await qc.latest("0m")
    finally:
        await api_runner.cleanup()
        await other_runner.cleanup()
    assert seen == []  # the other host never saw a request carrying the key
    assert key not in str(info.value) and uuid not in str(info.value)


# ---------------------------------------------------------------------------------------------------
# compare --json: an infinite error is not "nothing compared"


def test_json_tells_an_infinite_error_from_a_column_nothing_was_compared_in(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    df = random_candles(3, 300_000, 24, hole_rate=0.0, zero_rate=0.0)
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", df)
    build_offsets(root, "usdt_perp", "1h", offsets="0m")
    rows = scan_offsets(root, "usdt_perp", "1h").collect().sort("candle_begin_time").to_dicts()
    assert rows and all(r["volume"] > 0 for r in rows)

    def line(r: dict[str, Any], **override: str) -> str:
        cells = [f"{r['candle_begin_time']:%Y-%m-%d %H:%M:%S}", "BTCUSDT"]
        return ",".join([*cells, *(override.get(c, repr(r[c])) for c in VALUE_COLUMNS), "NoSwap"])

    ref = tmp_path / "ref"
    ref.mkdir()
    csv = "\n".join([HEADER, line(rows[0], volume="0"), *(line(r) for r in rows[1:])]) + "\n"
    with py7zr.SevenZipFile(ref / "202401010800-swap_1h0m.7z", "w") as archive:
        archive.writestr(csv.encode(), "swap_1h0m.csv")

    result = asyncio.run(compare_quantclass(Settings(root=str(root)), "usdt_perp", reference_dir=ref))
    assert result.max_error("volume") == float("inf")  # the seed's x / 0 − 1
    assert result.max_error("open") == 0.0

    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    r = CliRunner().invoke(
        app, ["compare", "--type", "usdt_perp", "--root", str(root), "--reference-dir", str(ref), "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["errors"]["volume"] is None  # standard JSON has no infinity
    assert out["infinite_errors"] == ["volume"]  # … so the JSON says which nulls are infinite


# ---------------------------------------------------------------------------------------------------
# funding paging


class _FundingServer:
    """fundingRate over ``times``: the oldest or newest ``limit`` rows of [startTime, endTime], or
    (``ignore``) the newest rows whatever the window; counts the calls and stops a loop."""

    def __init__(self, times: list[int], mode: str) -> None:
        self.times, self.mode, self.calls = times, mode, 0

    async def funding_rate(
        self, symbol: str, *, start_ms: int | None = None, end_ms: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls > 50:
            raise RuntimeError("the same window asked for again and again")
        assert start_ms is not None and end_ms is not None
        if self.mode == "ignore":
            picked = self.times[-limit:]
        else:
            inside = [t for t in self.times if start_ms <= t <= end_ms]
            picked = inside[:limit] if self.mode == "oldest" else inside[-limit:]
        return [
            {"symbol": symbol, "fundingTime": t, "fundingRate": "0.00010000", "markPrice": ""} for t in picked
        ]


@pytest.mark.parametrize("mode", ["oldest", "newest"])
def test_hourly_funding_pages_complete_in_either_order(mode: str) -> None:
    """1h funding (3 pages of 1000 rows, a few ms late at times): every row once, either page order."""
    times = [T0_MS + i * H + (4 if i % 5 == 0 else 0) for i in range(2 * FUNDING_PAGE + 500)]
    server = _FundingServer(times, mode)
    got = asyncio.run(fetch_funding(server, "BTCUSDT", T0_MS, T0_MS + len(times) * H))  # type: ignore[arg-type]
    assert got["funding_time"].dt.epoch("ms").to_list() == times
    assert got["mark_price"].null_count() == got.height  # markPrice "" (old rows): no price
    assert server.calls <= 8


def test_a_full_page_outside_the_window_is_an_error_not_an_endless_loop() -> None:
    times = [T0_MS + i * H for i in range(3 * FUNDING_PAGE)]
    server = _FundingServer(times, "ignore")  # answers the newest 1000 rows whatever is asked
    with pytest.raises(DataError, match="none in the window"):
        asyncio.run(fetch_funding(server, "BTCUSDT", T0_MS, T0_MS + 100 * H))  # type: ignore[arg-type]
    assert server.calls == 1
    # the newest rows asked for are still paged as before
    got = asyncio.run(fetch_funding(_FundingServer(times, "ignore"), "X", times[-10], times[-1] + 1))  # type: ignore[arg-type]
    assert got["funding_time"].dt.epoch("ms").to_list() == times[-10:]
