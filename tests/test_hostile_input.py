"""Hostile input from upstream and from the lake itself: every bad value is refused (counted, skipped
or a one-line error) and never crashes a run nor lands in the lake.

Upstream answers come from real local servers (aiohttp for REST, websockets for streams) or are
fed to the real parsers; nothing of lake is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lake.errors import DataError
from lake.live.appender import Appender, KlineWriter
from lake.store.fs import LakeFS

MIN = 60_000
T0 = 1_704_067_200_000  # 2024-01-01, a 1m and 5m boundary
INF_JSON = "1e400"  # valid JSON; Python reads it as float('inf')


def _ws_event(t: str = str(T0), n: str = "5", big_t: str | None = None, o: str = '"1"') -> str:
    close = big_t if big_t is not None else str(T0 + MIN - 1)
    return (
        f'{{"e":"kline","E":{T0 + MIN},"s":"BTCUSDT","k":{{"t":{t},"T":{close},"s":"BTCUSDT","i":"1m",'
        f'"o":{o},"c":"1","h":"1","l":"1","v":"1","n":{n},"x":true,"q":"1","V":"1","Q":"1"}}}}'
    )


# -- websocket payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        _ws_event(t=INF_JSON),  # open time: int(inf) raised OverflowError
        _ws_event(big_t=INF_JSON),  # close time
        _ws_event(n=INF_JSON),  # trade count
        _ws_event(n="-Infinity"),
        _ws_event(t="NaN"),
    ],
)
def test_a_ws_kline_with_an_infinite_integer_is_counted_malformed_not_raised(raw: str) -> None:
    # Appender.feed promises that anything that is not a good closed candle is counted by reason.
    # An integer field of 1e400 (valid JSON) raised OverflowError out of feed(): in `lake live` that
    # ends the websocket connection's task, and any non-LakeError task failure stops the whole run.
    a = Appender("usdt_perp", "1m", ["BTCUSDT"])
    assert a.feed(raw) is False
    assert a.stats.bad["malformed"] == 1 and a.pending == 0


async def test_a_hostile_ws_message_does_not_stop_the_stream() -> None:
    # End to end over a real websockets server: the hostile event, then a good one. The good one
    # must still reach the appender (the connection's reader survived the bad one).
    from websockets.asyncio.server import serve

    from lake.live.ws import WsShard

    async def handler(ws: Any) -> None:
        await ws.send(_ws_event(t=INF_JSON))
        await ws.send(_ws_event())
        await asyncio.sleep(5)

    a = Appender("usdt_perp", "1m", ["BTCUSDT"])
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        shard = WsShard("um#0", f"ws://127.0.0.1:{port}", ["btcusdt@kline_1m"], a.feed)
        shard.start()
        try:
            for _ in range(400):
                if a.pending:
                    break
                await asyncio.sleep(0.01)
        finally:
            await shard.stop()
    assert a.pending == 1 and a.holds("BTCUSDT", T0)
    assert a.stats.bad["malformed"] == 1


# -- REST rows on the live path (repairs and catch-up go through the tail) --------------------------


def _row(t: int, **over: Any) -> list[Any]:
    r: list[Any] = [t, "1", "2", "0.5", "1.5", "10", t + MIN - 1, "15", 5, "4", "6", "0"]
    for i, v in over.items():
        r[int(i[1:])] = v
    return r


@pytest.mark.parametrize(
    "bad",
    [
        {"f1": "NaN"},  # open
        {"f4": "Infinity"},  # close
        {"f5": "-inf"},  # volume
        {"f7": "1e400"},  # quote volume, a decimal string that overflows to inf
        {"f1": None},  # a null price
        {"f8": None},  # a null trade count
    ],
)
async def test_live_rest_rows_with_non_finite_or_null_values_never_reach_the_tail(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    # The live writer stored such rows in the tail: the klines view showed NaN prices at once, and
    # every later compaction of the symbol failed on them (write_klines refuses them), so the
    # symbol's good tail rows never reached the partitions either. The symbol must fail alone.
    lfs = LakeFS(tmp_path)
    w = KlineWriter(lfs, "usdt_perp", "1m", threads=1)
    try:
        out = await w.write({"BTCUSDT": [_row(T0 + MIN, **bad)], "ETHUSDT": [_row(T0)]}, "rest")
        assert "BTCUSDT" in out.failed and "BTCUSDT" not in out.stored
        assert out.stored == {"ETHUSDT": [T0]}
        res = w.compact(0)
        assert not res.failed and res.symbols == ["ETHUSDT"]
    finally:
        w.close()


def test_a_rest_row_with_a_null_trade_count_is_not_stored(tmp_path: Path) -> None:
    # klines_from_rest keeps a null "n" as a null trade_num; write_klines checked every float for
    # null or non-finite values but not the trade count, so the partition stored the null.
    from lake.binance.klines import klines_from_rest
    from lake.store.klines import write_klines

    with pytest.raises(DataError):
        write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", klines_from_rest([_row(T0, f8=None)]))
    assert not (tmp_path / "klines").exists()


class _HostileRest:
    """A tiny USDⓈ-M-like server whose /klines answer is whatever the test sets."""

    def __init__(self, klines: Any) -> None:
        self.klines = klines
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> _HostileRest:
        app = web.Application()
        app.router.add_get("/fapi/v1/time", self._time)
        app.router.add_get("/fapi/v1/klines", self._klines)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": T0 + 10 * MIN})

    async def _klines(self, request: web.Request) -> web.Response:
        return web.Response(text=self.klines, content_type="application/json")


@pytest.fixture
async def hostile() -> AsyncIterator[_HostileRest]:
    srv = await _HostileRest("[]").start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    "answer",
    [
        "[{}]",  # a row that is an object
        "[5]",  # a row that is a number
        '[["x"]]',  # an open time that is not a number
        f"[[{INF_JSON}]]",  # an open time of 1e400
        "[[]]",  # an empty row
    ],
)
async def test_live_repair_of_hostile_kline_rows_is_that_symbols_error(
    hostile: _HostileRest, answer: str
) -> None:
    # fetch_closed did int(r[0]) on each row: KeyError/TypeError/ValueError/OverflowError escaped
    # fetch_many (which only records LakeError per symbol), failed the period check's task, and
    # any non-LakeError task failure stops `lake live`.
    from lake.ingest.rest_client import RestClient
    from lake.live.repair import fetch_many

    hostile.klines = answer
    async with RestClient("um", base_url=hostile.url, calibrate_s=0.01, retries=0) as client:
        results, errors = await fetch_many(client, "1m", {"BTCUSDT": (T0, T0 + 3 * MIN)})
    assert "BTCUSDT" in errors and "BTCUSDT" not in results


# -- exchangeInfo ---------------------------------------------------------------------------------

_GOOD_INFO = {
    "symbol": "BTCUSDT",
    "status": "TRADING",
    "contractType": "PERPETUAL",
    "quoteAsset": "USDT",
    "baseAsset": "BTC",
    "marginAsset": "USDT",
    "onboardDate": 1569398400000,
    "deliveryDate": 4133404800000,
    "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.10"}],
}


@pytest.mark.parametrize(
    "junk",
    [
        {"contractType": ["PERPETUAL"]},  # unhashable: `in frozenset` raised TypeError
        {"onboardDate": math.inf},  # JSON 1e400: int(inf) raised OverflowError
        {"deliveryDate": -math.inf},
        {"onboardDate": 10**30},  # a date no datetime can hold
        {"filters": 5},  # not a list: iterating it raised TypeError
        {"filters": "PRICE_FILTER"},
    ],
)
def test_one_junk_exchange_info_entry_does_not_stop_a_whole_market_run(junk: dict[str, Any]) -> None:
    # One exotic listing must never stop a whole-market run (as with an unusable name, which is
    # skipped): the other symbols are still listed and their exchange_info rows still written.
    from lake.ingest.universe import ExchangeSnapshot, snapshot_frame

    eth = {**_GOOD_INFO, "symbol": "ETHUSDT", "baseAsset": "ETH"}
    snap = ExchangeSnapshot("um", T0, {"symbols": [{**_GOOD_INFO, **junk}, eth]})
    names = [s.symbol for s in snap.members("usdt_perp", trading_only=False)]
    assert "ETHUSDT" in names
    df = snapshot_frame(snap, "usdt_perp")
    assert "ETHUSDT" in df["symbol"].to_list()


def test_an_exchange_info_symbols_entry_of_the_wrong_type_is_no_symbols() -> None:
    from lake.ingest.universe import ExchangeSnapshot

    for symbols in (5, "abc", {"a": 1}, [1, None, "x"]):
        assert ExchangeSnapshot("um", T0, {"symbols": symbols}).members("usdt_perp") == []


# -- funding --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row",
    [
        {"fundingTime": math.inf, "fundingRate": "0.0001"},  # OverflowError escaped
        {"fundingTime": 10**30, "fundingRate": "0.0001"},  # Polars' TypeError escaped
        {"fundingTime": T0, "fundingRate": "NaN"},  # stored as a NaN rate
        {"fundingTime": T0, "fundingRate": "0.0001", "markPrice": "Infinity"},
    ],
)
def test_hostile_funding_rows_are_a_data_error(row: dict[str, Any]) -> None:
    from lake.ingest.funding import funding_frame

    with pytest.raises(DataError):
        funding_frame([row])


# -- the lake's own directory names ---------------------------------------------------------------


def _stray_lake(tmp_path: Path, strays: list[str]) -> Path:
    import shutil

    from lake.store.klines import write_klines
    from tests.store.helpers import frame, opens

    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", frame(opens(T0, 12)))
    base = tmp_path / "klines/trade_type=usdt_perp/interval=5m"
    src = base / "symbol=BTCUSDT/date=2024-01-01/data.parquet"
    for rel in strays:
        d = tmp_path / "klines" / rel / "date=2024-01-01"
        d.mkdir(parents=True)
        shutil.copy(src, d / "data.parquet")
    return tmp_path


@pytest.mark.parametrize(
    ("stray", "skipped"),
    [
        ("trade_type=usdt_perp/interval=5m/symbol=", "interval=5m/symbol='"),
        ("trade_type=usdt_perp/interval=5m/symbol=btcusdt", "symbol=btcusdt'"),
        ("trade_type=usdt_perp/interval=5m/symbol=A'B;--", "symbol=A'B;--\""),
        ("trade_type=usdt_perp/interval=5m/symbol=X*", "symbol=X*'"),
        ("trade_type=usdt_perp/interval=7m/symbol=BTCUSDT", "interval=7m'"),
        ("trade_type=evil/interval=5m/symbol=BTCUSDT", "trade_type=evil'"),
    ],
)
def test_a_foreign_directory_in_the_lake_does_not_make_status_and_audit_unusable(
    tmp_path: Path, stray: str, skipped: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory lake never writes (another tool's, a hand copy, a hostile name) made `lake status`
    # and `lake audit` fail as a whole, even with --symbols BTCUSDT, with a message that did not say
    # where the name came from ("invalid symbol ''"). Readers skip such directories, as they skip a
    # stray date=garbage, and say which one they skipped.
    from lake.store.klines import list_series

    root = _stray_lake(tmp_path, [stray])
    assert list_series(root) == [("usdt_perp", "5m", "BTCUSDT")]
    from lake.cli import main

    # (the warning is taken from its logger: lake's log handler writes to the stderr of the first
    # command run in this process, which capsys does not see when another test ran one before)
    warned: list[str] = []
    keep = logging.Handler()
    keep.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lake.store.klines").addHandler(keep)
    try:
        for cmd in (["status"], ["audit", "--symbols", "BTCUSDT"]):
            warned.clear()
            code = 0
            try:
                main([*cmd, "--root", str(root)])
            except SystemExit as exc:
                code = exc.code or 0
            out = capsys.readouterr()
            assert code == 0, (cmd, out)
            # (the warning names the directory, repr-quoted: a name with a quote gets double quotes)
            assert any("skipping " in w and skipped in w for w in warned), warned
    finally:
        logging.getLogger("lake.store.klines").removeHandler(keep)
    # the DuckDB views are not filtered (they read what is there; a name in them is data, bound as a
    # value, never SQL): documented behaviour, checked here so a change is noticed
    import lake

    con = lake.connect(root)
    try:
        assert ("BTCUSDT",) in con.sql("SELECT DISTINCT symbol FROM klines").fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(
    "limits",
    [
        5,  # not a list: iterating it raised TypeError
        [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": math.inf}],
        [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 0}],
        [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 0, "limit": 2400}],
        [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": -1}],
    ],
)
def test_a_hostile_rate_limit_entry_is_no_limit_learnt(limits: Any) -> None:
    # rateLimits of the wrong type, or a limit of 1e400, raised out of exchange_info(); a limit of 0
    # or below reached WeightGovernor.set_limit, which raises ValueError: a traceback, not a run.
    # A window of 0 ms named a used-weight header no answer carries.
    from lake.ingest.rest_client import parse_rate_limit

    assert parse_rate_limit({"rateLimits": limits}) is None
