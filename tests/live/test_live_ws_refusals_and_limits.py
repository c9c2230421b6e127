"""`lake live`'s websocket side against the simulator's real websocket server, the way Binance behaves:
a SUBSCRIBE refused (invalid stream, with and without an ``id``, with and without a close; too many
streams), a connection closed with a policy code, more streams than one connection may carry, the
server's pings, the 24 h limit (replaced before it, and forced on a client that did not), and the
REST repair of exactly what a reconnect missed. Kline edge cases (updates, duplicates, order, late
closes, unknown streams) on the appender itself."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lake.live.appender import Appender
from lake.live.runner import LiveConfig, LiveRunner
from lake.live.ws import WsPool, WsShard, stream_name
from lake.settings import Settings
from lake.sim.clock import to_ms
from lake.sim.testing import TEST_START, sim_server, test_config

from .helpers import M, assert_equals_truth, closing_events, lake_frame, run_while, until

TT = "usdt_perp"
NOW = to_ms(TEST_START)


def _conns(sim: Any) -> int:
    return int(sim.stats.snapshot()["ws"].get("connections", 0))


# -- a refused SUBSCRIBE -----------------------------------------------------------------------------


async def test_a_stream_the_server_refuses_is_dropped_and_the_others_stay_on_the_websocket(
    tmp_path: Path,
) -> None:
    """Binance refuses a SUBSCRIBE naming a stream it cannot parse (``invalid stream``) and closes the
    connection. The shard used to reconnect for ever (backoff capped at 30 s) and resubscribe the same
    batch: every connection died at once, so all its streams stayed dark and every period was repaired
    over REST. Now the refused batch is narrowed down over a few connections, the one stream is
    dropped (alerted), the others stay live on one connection, and the dropped symbol is still kept
    complete over REST."""
    async with sim_server(test_config(speed=30.0, n_symbols_by_market={"um": 16})) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        bad = live[4]  # (url_streams=1, batches of 4: in a batch with three good ones)
        refused = stream_name(bad, "1m")
        sim.ws.refuse_streams = {refused}
        sim.ws.close_after_refusal = True
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(
                trade_types=(TT,),
                intervals=("1m",),
                grace_s=30.0,
                history=3,
                ws_url_streams=1,
                ws_subscribe_batch=4,
            ),
        )
        marks: dict[str, int] = {}

        async def scenario() -> None:
            feed = runner.feeds[0]
            await until(lambda: feed.pool is not None and feed.pool.shards, 30)
            assert feed.pool is not None
            shard = feed.pool.shards[0]
            await until(lambda: refused in getattr(shard, "rejected", {}), 30)
            marks["from"] = feed.iv.floor(feed.now_ms()) + M  # the first period wholly after
            await until(lambda: (feed.published or 0) >= marks["from"], 30)
            marks["conns"] = _conns(sim)
            await until(lambda: (feed.published or 0) >= marks["from"] + 3 * M, 30)
            runner.stop("enough")

        summary = await run_while(runner, scenario(), 60)
        wm = assert_equals_truth(sim, tmp_path, TT, "1m", live)
        end_conns = _conns(sim)
        ws_stats = sim.stats.snapshot()["ws"]
    assert end_conns == marks["conns"]  # no reconnect once the stream was found
    assert ws_stats["refused_subscribes"] <= 3  # the batch of 4, a half of 2, the stream alone
    after = lake_frame(tmp_path, TT, "1m").filter(pl.col("t").is_between(marks["from"], wm))
    assert after.height == 4 * len(live)
    assert set(after.filter(pl.col("symbol") == bad)["source"]) == {"rest"}
    assert set(after.filter(pl.col("symbol") != bad)["source"]) == {"ws"}
    assert summary["feeds"][0]["ws"]["rejected"] == [refused]


async def test_an_error_reply_without_an_id_is_matched_to_its_request() -> None:
    """The spot docs' error replies carry no ``id``. The shard did not recognise them as refusals:
    the refused batch (good streams with the bad one) stayed silent for the connection's life. The
    reply answers the oldest request not yet answered (the server answers in order): the batch is
    narrowed down on the same connection, and only the bad stream is left out."""
    async with sim_server() as sim:
        bad = "dogeusdt@kline_1m"  # (as if the server could not parse its name)
        sim.ws.refuse_streams = {bad}
        sim.ws.refusal_id = False
        # the URL carries bnbusdt; then SUBSCRIBE [btcusdt, dogeusdt], refused, and [ethusdt, solusdt]
        streams = [f"{s}@kline_1m" for s in ("bnbusdt", "btcusdt", "dogeusdt", "ethusdt", "solusdt")]
        good = [s for s in streams if s != bad]
        got: list[str | bytes] = []
        # spot: 5 incoming messages per second, which the narrowing's extra SUBSCRIBEs must respect
        shard = WsShard(
            "spot#0",
            sim.endpoints.ws["spot"],
            streams,
            lambda m, t: got.append(m),
            msgs_per_sec=5,
            url_streams=1,
            subscribe_batch=2,
        )
        shard.start()
        try:
            await until(lambda: bad in getattr(shard, "rejected", {}), 10)
            sim.clock.advance(M)
            await until(lambda: len(closing_events(got)) >= 4, 10)
            await asyncio.sleep(0.2)  # (anything else would have come with them)
        finally:
            await shard.stop()
        ws_stats = sim.stats.snapshot()["ws"]
    assert sorted(closing_events(got)) == [(s, NOW) for s in good]
    assert shard.stats.connects == 1 and shard.stats.drops == 0
    assert shard.desired == set(good) and shard.stats.rejected == 1
    assert ws_stats.get("closed_rate_limit", 0) == 0


async def test_too_many_streams_backs_off_names_the_cause_and_drops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A connection over the server's stream cap (a cap lower than the one lake plans with) is closed
    with 1008 on every attempt: the shard reconnects with the capped, jittered backoff, logs an error
    that says why, and keeps all its streams (the refusal is not about one of them)."""
    caps = {"spot": 1024, "um": 3, "cm": 200}
    async with sim_server(test_config(ws_stream_caps=caps)) as sim:
        streams = [f"s{i}usdt@kline_1m" for i in range(5)]
        shard = WsShard(
            "um#0", sim.endpoints.ws["um"], streams, lambda m, t: None, url_streams=1, subscribe_batch=2
        )
        with caplog.at_level(logging.WARNING, logger="lake.live.ws"):
            shard.start()
            try:
                await asyncio.sleep(3.0)
            finally:
                await shard.stop()
        conns = _conns(sim)
    # backoff 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s after each close: at most 5 attempts in 3 s
    assert 2 <= conns <= 5, conns
    assert shard.desired == set(streams) and not shard.rejected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and all("too many streams" in e and "1008" in e for e in errors), errors


async def test_a_server_that_closes_with_a_policy_code_after_a_while_is_not_hammered() -> None:
    """The backoff was reset by any connection that delivered data and stayed up ``stable_s``: a
    server that closes every connection with 1008 just after that was reconnected to at once, every
    time (Binance: "IPs that are repeatedly disconnected may be banned"). A policy close never
    resets the backoff now."""
    async with sim_server(test_config(speed=60.0, ws_intermediate=True)) as sim:
        sim.ws.policy_close_after_s = 0.3
        got: list[str | bytes] = []
        shard = WsShard(
            "um#0",
            sim.endpoints.ws["um"],
            ["btcusdt@kline_1m", "ethusdt@kline_1m"],
            lambda m, t: got.append(m),
            stable_s=0.2,
        )
        shard.start()
        try:
            await asyncio.sleep(5.0)
        finally:
            await shard.stop()
        conns = _conns(sim)
        closed = sim.stats.snapshot()["ws"].get("closed_policy", 0)
    assert got and closed >= 2  # data flowed before each close
    # up 0.3 s, then backoff 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6, 1.6-3.2 s: at most 6 attempts in
    # 5 s (without the backoff, one every ~0.4 s: a dozen)
    assert conns <= 6, conns


# -- limits ------------------------------------------------------------------------------------------


async def test_more_streams_than_one_connection_carries_are_split_and_all_delivered() -> None:
    """The plan splits the streams over connections within the cap (here the server's cap is 3, as
    COIN-M's is 200 and the others' 1024); a listing goes to a connection with room, else a new one.
    Every closing event arrives once and the server never closes a connection for too many streams."""
    caps = {"spot": 1024, "um": 3, "cm": 200}
    async with sim_server(test_config(ws_stream_caps=caps, n_symbols_by_market={"um": 20})) as sim:
        symbols = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        got: list[str | bytes] = []
        pool = WsPool("um", sim.endpoints.ws["um"], "1m", lambda m, t: got.append(m), cap=3, msgs_per_sec=10)
        await pool.start(symbols[:8])
        try:
            assert [len(s.desired) for s in pool.shards] == [3, 3, 2]
            assert await pool.wait_connected(10.0)
            await until(lambda: sum(len(c.subs) for c in sim.ws.conns) == 8, 10)
            sim.clock.advance(M)
            await until(lambda: len(closing_events(got)) >= 8, 10)
            await pool.update(add=symbols[8:10])
            assert [len(s.desired) for s in pool.shards] == [3, 3, 3, 1]
            assert await pool.wait_connected(10.0)
            await until(lambda: sum(len(c.subs) for c in sim.ws.conns) == 10, 10)
            sim.clock.advance(M)
            await until(lambda: len(closing_events(got)) >= 18, 10)
            await asyncio.sleep(0.2)
        finally:
            await pool.stop()
        ws_stats = sim.stats.snapshot()["ws"]
    first = sorted(stream_name(s, "1m") for s in symbols[:8])
    assert sorted(s for s, t in closing_events(got) if t == NOW) == first
    assert sorted(s for s, t in closing_events(got) if t == NOW + M) == sorted(
        stream_name(s, "1m") for s in symbols[:10]
    )
    assert ws_stats.get("closed_stream_cap", 0) == 0 and pool.health()["drops"] == 0


async def test_the_servers_pings_are_answered_and_keep_the_connection() -> None:
    """The server pings (Binance spot every 20 s, futures every 3 min) and drops a client that does not
    pong; here every 0.2 s with a 0.1 s deadline. The connection stays up and no message is lost."""
    heartbeat = {"spot": 0.2, "um": 0.2, "cm": 0.2}
    async with sim_server(test_config(ws_heartbeat_s=heartbeat)) as sim:
        got: list[str | bytes] = []
        shard = WsShard("um#0", sim.endpoints.ws["um"], ["btcusdt@kline_1m"], lambda m, t: got.append(m))
        shard.start()
        try:
            assert await shard.wait_connected(5.0)
            await asyncio.sleep(1.5)  # seven pings
            sim.clock.advance(M)
            await until(lambda: len(closing_events(got)) == 1, 5)
        finally:
            await shard.stop()
    assert shard.stats.connects == 1 and shard.stats.drops == 0


# -- the 24 h limit, reconnects and their repair ------------------------------------------------------


async def test_connections_replaced_before_the_lifetime_limit_lose_nothing(tmp_path: Path) -> None:
    """Connections are replaced before the server's lifetime limit (24 h; here 2 virtual minutes, 4 s)
    by a new one opened and subscribed first: the server never has to close one, and every closing
    event of the live periods arrives over the websocket (none is repaired over REST)."""
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 6}, ws_lifetime_s=240.0)) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(
                trade_types=(TT,),
                intervals=("1m",),
                periods=5,
                grace_s=30.0,
                history=3,
                ws_lifetime_s=1.5,
                ws_url_streams=2,
                ws_subscribe_batch=2,
            ),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=60)
        assert_equals_truth(sim, tmp_path, TT, "1m", live)
        ws_stats = sim.stats.snapshot()["ws"]
    feed = summary["feeds"][0]
    assert feed["ws"]["rotations"] >= 2 and feed["ws"]["drops"] == 0
    assert ws_stats.get("closed_lifetime", 0) == 0
    lake = lake_frame(tmp_path, TT, "1m")
    # (before the first closing event: the start-up's catch-up and first check, over REST)
    first_ws = lake.filter(pl.col("source") == "ws")["t"].min()
    live_periods = lake.filter(pl.col("t") >= first_ws)
    assert live_periods["t"].n_unique() >= 4 and set(live_periods["source"]) == {"ws"}


async def test_rest_repairs_exactly_the_candles_missed_while_reconnecting(tmp_path: Path) -> None:
    """The server ends every connection at its lifetime (as Binance at 24 h) and the client does not
    replace it first: the closing events sent while it reconnects are lost. The period check fetches
    exactly those over REST: a candle whose closing event arrived is never fetched again, and none
    that did not is left out."""
    cfg = test_config(speed=30.0, n_symbols_by_market={"um": 6}, ws_lifetime_s=90.0)
    async with sim_server(cfg) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=(TT,), intervals=("1m",), periods=5, grace_s=30.0, history=3),
        )
        feed = runner.feeds[0]
        received: set[tuple[str, int]] = set()
        original = feed.appender.feed

        def spy(raw: str | bytes, recv: float | None = None, *, retry: bool = False) -> bool:
            if not retry:
                data = json.loads(raw)
                data = data.get("data", data)
                if data.get("e") == "kline" and data["k"]["x"] is True:
                    received.add((data["k"]["s"], data["k"]["t"]))
            return original(raw, recv, retry=retry)

        feed.appender.feed = spy  # type: ignore[method-assign]
        summary = await asyncio.wait_for(runner.run(), timeout=60)
        wm = assert_equals_truth(sim, tmp_path, TT, "1m", live)
        closed_lifetime = sim.stats.snapshot()["ws"].get("closed_lifetime", 0)
    assert closed_lifetime >= 2 and summary["feeds"][0]["ws"]["drops"] >= 2
    first_live = min(t for _s, t in received)  # (earlier periods: the start-up catch-up)
    lake = lake_frame(tmp_path, TT, "1m").filter(pl.col("t").is_between(first_live, wm))
    stored = {(s, t): src for s, t, src in lake.select("symbol", "t", "source").iter_rows()}
    missed = {k for k in stored if k not in received}
    assert missed  # the reconnects lost some
    assert {k for k, src in stored.items() if src == "rest"} == missed
    assert {k for k, src in stored.items() if src == "ws"} == set(stored) - missed


# -- kline events ------------------------------------------------------------------------------------


def _event(symbol: str, t: int, *, x: bool, close: str = "1.5", stream: str | None = None) -> str:
    k = {
        "t": t,
        "T": t + M - 1,
        "s": symbol,
        "i": "1m",
        "f": 1,
        "L": 2,
        "o": "1.0",
        "c": close,
        "h": "2.0",
        "l": "0.5",
        "v": "10",
        "n": 3,
        "x": x,
        "q": "15",
        "V": "5",
        "Q": "7.5",
        "B": "0",
    }
    data = {"e": "kline", "E": t + M + 5, "s": symbol, "k": k}
    return json.dumps({"stream": stream or stream_name(symbol, "1m"), "data": data})


def test_kline_events_updates_duplicates_order_late_and_unknown_streams() -> None:
    """Only ``x: true`` is stored, once per (symbol, open), whatever the order; a close that arrives
    seconds late is stored if nothing has the candle yet, and dropped as a duplicate of the REST
    repair otherwise (unless the values differ); events of a symbol not followed are refused."""
    stored = {("ETHUSDT", NOW)}  # repaired over REST before its close event came (late)
    rest_rows = {("SOLUSDT", NOW): "1.5"}  # repaired just after its close, with these values
    ap = Appender(
        TT,
        "1m",
        {"BTCUSDT", "ETHUSDT", "SOLUSDT"},
        is_stored=lambda s, t: (s, t) in stored or (s, t) in rest_rows,
        supersedes=lambda s, t, row: rest_rows.pop((s, t), row[4]) != row[4],
    )
    assert not ap.feed(_event("BTCUSDT", NOW + M, x=False))  # an update: never stored
    assert ap.feed(_event("BTCUSDT", NOW + M, x=True))
    assert ap.feed(_event("BTCUSDT", NOW, x=True))  # out of order: the older one after
    assert not ap.feed(_event("BTCUSDT", NOW + M, x=True))  # duplicate
    assert not ap.feed(_event("BTCUSDT", NOW + M, x=False, close="9"))  # an update after the close
    assert not ap.feed(_event("ETHUSDT", NOW, x=True))  # late, already stored: a duplicate
    assert ap.feed(_event("SOLUSDT", NOW, x=True, close="1.7"))  # late, other values: replaces REST's
    assert not ap.feed(_event("DOGEUSDT", NOW, x=True))  # a stream we never subscribed
    assert not ap.feed(_event("BTCUSDT", NOW + 2 * M, x=True, stream="dogeusdt@kline_1m")[:-1] + "x")
    buf = ap.take()
    assert sorted(buf) == [("BTCUSDT", NOW), ("BTCUSDT", NOW + M), ("SOLUSDT", NOW)]
    assert buf[("BTCUSDT", NOW + M)][0][4] == "1.5" and buf[("SOLUSDT", NOW)][0][4] == "1.7"
    st = ap.stats
    assert (st.updates, st.closed, st.duplicates, st.superseded) == (2, 3, 2, 1)
    assert st.bad["unknown_symbol"] == 1 and st.bad["json"] == 1
