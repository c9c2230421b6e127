"""Spot 1s candles: generated from the final 1m candles (aggregating back to them exactly), served
by REST, the websocket and the archive on spot only."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lake.binance.intervals import INTERVALS
from lake.errors import ValidationError
from lake.sim import SimMarket, SimServer
from lake.sim.candles import FIELDS, Candles, aggregate, partial
from lake.sim.cli import sim_app
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE, to_ms
from lake.sim.fmt import csv_bytes, rest_rows, ws_kline_event
from lake.sim.market import truth_frame
from lake.sim.seconds import generate_seconds
from lake.sim.testing import TEST_START, sim_server, test_config

NOW = to_ms(TEST_START)  # 2025-03-15 12:00:00, frozen
S1 = INTERVALS["1s"]
SEC = 1000
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

# Days of the test market's spot symbols that carry the awkward truths (see SimMarket.awkward).
SPECIAL = [
    ("BTCUSDT", "2024-12-30"),  # maintenance 01:00-02:00
    ("BNBUSDT", "2025-03-11"),  # illiquid (many zero-volume minutes) and maintenance 06:05-08:40
    ("SOLUSDT", "2025-03-08"),  # listed at 08:00
    ("XRPUSDT", "2025-02-27"),  # delisted at 03:00
    ("DOGEUSDT", "2024-11-23"),  # delisted at 02:00 (relisted later)
    ("DOGEUSDT", "2025-01-29"),  # relisted at 06:00
    ("ETHBTC", "2025-03-15"),  # today, past the clock too
    ("BTCUSDT", "2024-10-16"),  # the first day of history
]


@pytest.fixture(scope="module")
def market() -> SimMarket:
    return SimMarket(test_config())


@pytest.fixture(scope="module")
def corrected() -> SimMarket:
    """A market of its own for the property test, which corrects days as it goes."""
    return SimMarket(test_config())


def _day(iso: str) -> int:
    return to_ms(iso) // MS_PER_DAY


# ---- invariants ---------------------------------------------------------------------------------
def check_seconds(m: Candles, s: Candles) -> None:
    """Everything the 1s candles of a day promise about the day's 1m candles ``m``."""
    n_min = len(m)
    assert len(s) == 60 * n_min
    if not n_min:
        return
    assert np.array_equal(s.t, (m.t[:, None] + np.arange(60) * SEC).ravel())
    agg = aggregate(s, s.t - s.t % MS_PER_MINUTE)
    for k in FIELDS:
        assert np.array_equal(getattr(agg, k), getattr(m, k)), k
    g = {k: getattr(s, k).reshape(n_min, 60) for k in FIELDS}
    traded = g["v"] > 0
    quiet = ~traded
    # per second
    assert (g["v"] >= 0).all() and (g["n"] >= traded).all() and (g["q"] >= 0).all()
    assert (g["tb"] >= 0).all() and (g["tb"] <= g["v"]).all()
    assert (g["tq"] >= 0).all() and (g["tq"] <= g["q"]).all()
    for k in ("n", "q", "tb", "tq"):
        assert (g[k][quiet] == 0).all(), k
    assert (g["f"][quiet] == -1).all() and (g["L"][quiet] == -1).all()
    assert (g["h"] >= np.maximum(g["o"], g["c"])).all() and (g["l"] <= np.minimum(g["o"], g["c"])).all()
    assert (g["o"][quiet] == g["c"][quiet]).all() and (g["h"][quiet] == g["c"][quiet]).all()
    assert (g["l"][quiet] == g["c"][quiet]).all()
    lo, hi = m.l[:, None], m.h[:, None]
    for k in ("o", "h", "l", "c"):
        assert ((g[k] >= lo) & (g[k] <= hi))[traded].all(), k
    # per minute
    k_traded = traded.sum(axis=1)
    tm = m.v > 0
    assert (k_traded[~tm] == 0).all()
    assert (k_traded[tm] >= 1).all() and (k_traded[tm] <= np.minimum(60, np.minimum(m.n, m.v))[tm]).all()
    rows = np.flatnonzero(tm)
    first = np.argmax(traded, axis=1)[rows]
    last = 59 - np.argmax(traded[:, ::-1], axis=1)[rows]
    assert np.array_equal(g["o"][rows, first], m.o[rows]) and np.array_equal(g["c"][rows, last], m.c[rows])
    assert (np.where(traded, g["h"], -1).max(axis=1) == m.h)[rows].all()
    assert (np.where(traded, g["l"], 2**62).min(axis=1) == m.l)[rows].all()
    # a quiet second carries the last price: the previous second's close, else the previous minute's
    prev_c = np.concatenate((m.o[:1], m.c[:-1]))
    start = np.where(tm, prev_c, m.c)
    before = np.concatenate((start[:, None], g["c"][:, :-1]), axis=1)
    assert (g["c"][quiet] == before[quiet]).all()
    # trade ids: contiguous runs of the minute's range, in time order
    n_ = np.where(traded, g["n"], 0)
    assert (g["L"] - g["f"] + 1 == n_)[traded].all()
    run_end = m.f[:, None] + np.cumsum(n_, axis=1) - 1
    assert (g["L"] == run_end)[traded].all()


def seconds_digest(market: SimMarket, pairs: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for sym, day in pairs:
        s = market.seconds(market.info("spot", sym), _day(day))
        for k in FIELDS:
            h.update(getattr(s, k).tobytes())
    return h.hexdigest()


# ---- generation ---------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pick=st.one_of(
        st.sampled_from(SPECIAL),
        st.tuples(
            st.sampled_from(["BTCUSDT", "ETHUSDT", "BNBUSDT", "DOGEUSDT", "XRPUSDT", "ETHBTC", "BTCUSDC"]),
            st.integers(0, 150).map(lambda d: str(np.datetime64("2024-10-16") + np.timedelta64(d, "D"))),
        ),
    ),
    correct=st.booleans(),
)
def test_seconds_aggregate_to_the_minutes_exactly(
    corrected: SimMarket, pick: tuple[str, str], correct: bool
) -> None:
    market = corrected
    sym, day = pick
    info = market.info("spot", sym)
    d = _day(day)
    if correct and (market.minutes(info, d).v > 0).any():
        before = market.seconds(info, d)
        t = market.correct_day("spot", sym, day)  # a re-upload: one minute's volume +1%
        after = market.seconds(info, d)
        assert after is not before
        moved = (after.t >= t) & (after.t < t + MS_PER_MINUTE)
        assert after.v[moved].sum() > before.v[moved].sum()
        for k in FIELDS:  # the other minutes' seconds stay as they were
            assert np.array_equal(getattr(after, k)[~moved], getattr(before, k)[~moved]), k
    m = market.minutes(info, d)
    s = market.seconds(info, d)
    check_seconds(m, s)
    again = generate_seconds(info, d, m)  # deterministic: the same from scratch
    for k in FIELDS:
        assert np.array_equal(getattr(again, k), getattr(s, k)), k


def test_special_days_have_their_shape(market: SimMarket) -> None:
    for sym, day in SPECIAL:
        info = market.info("spot", sym)
        m, s = market.minutes(info, _day(day)), market.seconds(info, _day(day))
        check_seconds(m, s)
        assert 0 < len(m) < 1440 or sym in ("BNBUSDT", "ETHBTC", "BTCUSDT")
    bnb = market.seconds(market.info("spot", "BNBUSDT"), _day("2025-03-11"))
    m = market.minutes(market.info("spot", "BNBUSDT"), _day("2025-03-11"))
    assert (m.v == 0).sum() > 50 and len(m) == 1440 - 155  # quiet minutes, and the maintenance hole
    assert not ((bnb.t >= to_ms("2025-03-11T06:05")) & (bnb.t < to_ms("2025-03-11T08:40"))).any()
    sol = market.seconds(market.info("spot", "SOLUSDT"), _day("2025-03-08"))
    assert sol.t[0] == to_ms("2025-03-08T08:00")
    with pytest.raises(ValidationError):
        market.seconds(market.info("um", "BTCUSDT"), _day("2025-03-10"))


def _synthetic_minutes(seed: int, regime: str) -> Candles:
    """Valid 1m candles with extreme values (the simulator's generator never makes some of these)."""
    rng = np.random.default_rng(seed)
    day = _day("2025-01-05")
    mod = np.sort(rng.choice(1440, size=int(rng.integers(1, 1441)), replace=False))
    n_min = len(mod)
    big = 2**53 - 1
    if regime == "tiny":
        v = rng.integers(1, 4, n_min)
        n = rng.integers(1, 4, n_min)
        q = rng.integers(0, 3, n_min)
    elif regime == "huge":
        v = rng.integers(10**10, 10**11, n_min)
        n = rng.integers(1, 6001, n_min)
        q = rng.integers(big // 2, big, n_min)
    else:
        v = rng.integers(1, 10**6, n_min)
        n = rng.integers(1, 200, n_min)
        q = rng.integers(0, 10**12, n_min)
    quiet = rng.random(n_min) < (0.5 if regime == "mixed" else 0.05)
    v, n, q = np.where(quiet, 0, v), np.where(quiet, 0, n), np.where(quiet, 0, q)
    tb = np.floor(v * rng.random(n_min) ** rng.choice([0.01, 1.0, 100.0])).astype(np.int64)
    tq = np.floor(q * rng.random(n_min) ** rng.choice([0.01, 1.0, 100.0])).astype(np.int64)
    tb, tq = np.minimum(tb, v), np.minimum(tq, q)
    lo = rng.integers(1, 10**6, n_min)
    hi = lo + rng.integers(0, 10**4, n_min) * rng.integers(0, 2, n_min)
    o = lo + np.floor(rng.random(n_min) * (hi - lo + 1)).astype(np.int64)
    c = lo + np.floor(rng.random(n_min) * (hi - lo + 1)).astype(np.int64)
    o, hi, lo = np.where(quiet, c, o), np.where(quiet, c, hi), np.where(quiet, c, lo)
    last = day * 10**7 + np.cumsum(n) - 1
    return Candles(
        t=day * MS_PER_DAY + mod * MS_PER_MINUTE, o=o, h=hi, l=lo, c=c, v=v, q=q, n=n, tb=tb, tq=tq,
        f=np.where(n > 0, last - n + 1, -1), L=np.where(n > 0, last, -1),
    )  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), regime=st.sampled_from(["tiny", "huge", "normal", "mixed"]))
def test_extreme_minutes_split_exactly(market: SimMarket, seed: int, regime: str) -> None:
    info = dataclasses.replace(market.info("spot", "BTCUSDT"), key=seed)
    m = _synthetic_minutes(seed, regime)
    check_seconds(m, generate_seconds(info, _day("2025-01-05"), m))


def test_deterministic_across_processes(market: SimMarket) -> None:
    pairs = SPECIAL[:4]
    code = (
        "from lake.sim import SimMarket; from lake.sim.testing import test_config; "
        "from tests.sim.test_seconds import seconds_digest, SPECIAL; "
        "print(seconds_digest(SimMarket(test_config()), SPECIAL[:4]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],  # the repository root: `tests` imports from there
    )
    # the same in this process: the module's market (seconds cached by now) and a new one
    assert (
        out.stdout.strip() == seconds_digest(market, pairs) == seconds_digest(SimMarket(test_config()), pairs)
    )


def test_truth_forming_and_cli(market: SimMarket, tmp_path: Any) -> None:
    info = market.info("spot", "ETHUSDT")
    lo, hi = to_ms("2025-03-14T23:59:50"), to_ms("2025-03-15T00:00:10")
    df = market.truth("usdt_spot", "1s", "ETHUSDT", lo, hi)
    assert df.height == 20 and df["candle_begin_time"].dt.epoch("ms").to_list() == list(range(lo, hi, SEC))
    sec = market.candles(info, S1, lo, hi)
    assert df.equals(truth_frame(info, sec))
    one = market.candles(info, S1, lo + 500, lo + 501)  # a candle is found from inside its second too
    assert len(one) == 0 and len(market.candles(info, S1, lo, lo + 1)) == 1
    # the 1m truth is the aggregate of the 1s truth
    sec_day = market.truth("usdt_spot", "1s", "ETHUSDT", "2025-03-14", "2025-03-15")
    m_day = market.truth("usdt_spot", "1m", "ETHUSDT", "2025-03-14", "2025-03-15")
    agg = sec_day.group_by_dynamic("candle_begin_time", every="1m").agg(
        pl.col("volume").sum(), pl.col("trade_num").sum(), pl.col("close").last()
    )
    assert agg["volume"].round(8).to_list() == m_day["volume"].round(8).to_list()
    assert agg["trade_num"].to_list() == m_day["trade_num"].to_list()
    assert agg["close"].to_list() == m_day["close"].to_list()
    # the forming second: partial values of its final candle
    now = NOW + 1500
    f = market.forming(info, S1, now)
    final = market.candles(info, S1, NOW + SEC, NOW + 2 * SEC)
    want = partial(final, 0.5)
    assert f is not None and all(np.array_equal(getattr(f, k), getattr(want, k)) for k in FIELDS)
    # lake sim truth --interval 1s (spot; futures exit 2)
    out = tmp_path / "t.parquet"
    args = ["truth", "--type", "usdt_spot", "--interval", "1s", "--symbols", "ETHUSDT", "--start",
            "2025-03-14T23:59:50Z", "--end", "2025-03-15T00:00:10Z", "--sim-start", TEST_START,
            "--history-days", "150", "--output", str(out)]  # fmt: skip
    r = CliRunner().invoke(sim_app, args)
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(out).equals(df)
    r = CliRunner().invoke(
        sim_app, ["truth", "--type", "usdt_perp", "--interval", "1s", "--sim-start", TEST_START]
    )
    assert r.exit_code == 2 and "1s" in r.output
    # all history at 1s would be tens of GB: a bounded span is asked for
    with pytest.raises(ValidationError, match="31 days"):
        market.truth("usdt_spot", "1s", "ETHUSDT")
    lo = NOW - 31 * MS_PER_DAY
    assert market.truth("usdt_spot", "1s", "ETHUSDT", lo, lo + 5000).height == 5


# ---- REST ---------------------------------------------------------------------------------------
async def _klines(http: aiohttp.ClientSession, sim: SimServer, path: str = "/api/v3/klines", headers: dict[str, str] | None = None, **params: Any) -> tuple[int, Any, Any]:  # fmt: skip
    q = {"symbol": "BTCUSDT", "interval": "1s", **{k: str(v) for k, v in params.items()}}
    async with http.get(f"{sim.base_url}{path}", params=q, headers=headers or {}) as r:
        return r.status, r.headers, await r.json(content_type=None)


def _want(sim: SimServer, lo: int, hi: int, symbol: str = "BTCUSDT", micro: bool = False) -> list[list[Any]]:
    info = sim.market.info("spot", symbol)
    return rest_rows(info, S1, sim.market.candles(info, S1, lo, hi), micro=micro)


async def test_rest_1s_rows_and_selection(sim: SimServer, http: aiohttp.ClientSession) -> None:
    # across an hour and a day boundary
    st_ = to_ms("2025-03-13T23:59:30")
    status, headers, rows = await _klines(http, sim, startTime=st_, limit=1000)
    assert status == 200 and len(rows) == 1000 and int(headers["X-MBX-USED-WEIGHT-1M"]) == 2
    for r in rows:
        assert len(r) == 12 and all(isinstance(r[i], int) for i in (0, 6, 8))
        assert all(isinstance(r[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11)) and r[11] == "0"
        assert r[6] == r[0] + 999
    assert [r[0] for r in rows] == list(range(st_, st_ + 1000 * SEC, SEC))
    assert rows == _want(sim, st_, st_ + 1000 * SEC)
    assert any(float(r[5]) > 0 for r in rows) and any(float(r[5]) == 0 for r in rows)
    # paging on: the next page starts where the last ended
    status, headers, more = await _klines(http, sim, startTime=rows[-1][0] + 1, limit=1000)
    assert more[0][0] == rows[-1][0] + SEC and int(headers["X-MBX-USED-WEIGHT-1M"]) == 4
    # across the maintenance window (06:05-08:40): 30 seconds before it, then from its end
    st_ = to_ms("2025-03-11T06:04:30")
    _, _, rows = await _klines(http, sim, startTime=st_, limit=1000)
    opens = [r[0] for r in rows]
    assert opens[:30] == list(range(st_, st_ + 30 * SEC, SEC)) and opens[30] == to_ms("2025-03-11T08:40")
    assert rows == _want(sim, st_, to_ms("2025-03-11T08:40") + 970 * SEC)
    # the same backwards (endTime only: the newest rows up to it)
    _, _, back = await _klines(http, sim, endTime=to_ms("2025-03-11T08:40:05"), limit=40)
    assert [r[0] for r in back][-6:] == [to_ms("2025-03-11T08:40") + i * SEC for i in range(6)]
    assert len(back) == 40 and back[0][0] == to_ms("2025-03-11T06:04:26")
    # startTime inside a second starts at the next one; both times bound the rows
    _, _, rows = await _klines(http, sim, startTime=st_ + 500, endTime=st_ + 5 * SEC, limit=1000)
    assert [r[0] for r in rows] == [st_ + i * SEC for i in range(1, 6)]
    # µs on request
    _, _, rows = await _klines(http, sim, headers={"X-MBX-TIME-UNIT": "MICROSECOND"}, startTime=st_, limit=3)
    assert rows == _want(sim, st_, st_ + 3 * SEC, micro=True) and rows[0][6] == (st_ + 999) * 1000 + 999
    # no times: the newest rows, the last one the forming second (partial values)
    sim.clock.set(NOW + 2500)
    _, _, rows = await _klines(http, sim, path="/api/v3/uiKlines", limit=5)
    assert [r[0] for r in rows] == [NOW - 2 * SEC + i * SEC for i in range(5)]
    assert rows[:4] == _want(sim, NOW - 2 * SEC, NOW + 2 * SEC)
    info = sim.market.info("spot", "BTCUSDT")
    forming = partial(sim.market.candles(info, S1, NOW + 2 * SEC, NOW + 3 * SEC), 0.5)
    assert rows[4] == rest_rows(info, S1, forming)[0]
    # limits and futures
    assert (await _klines(http, sim, limit=1001))[2]["code"] == -1130
    for path, sym in (("/fapi/v1/klines", "BTCUSDT"), ("/dapi/v1/klines", "BTCUSD_PERP")):
        status, _, body = await _klines(http, sim, path=path, symbol=sym)
        assert (status, body) == (400, {"code": -1120, "msg": "Invalid interval."})


# ---- websocket ----------------------------------------------------------------------------------
async def _drain(ws: aiohttp.ClientWebSocketResponse, wait: float = 0.3) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            msg = await ws.receive(timeout=wait)
        except TimeoutError:
            return out
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(json.loads(msg.data))


async def test_ws_kline_1s_closes_every_second_and_updates_every_1000ms(http: aiohttp.ClientSession) -> None:
    cfg = test_config(ws_intermediate=True, ws_intermediate_per_s=1000.0)
    async with sim_server(cfg) as sim:
        url = sim.endpoints.ws["spot"] + "/stream?streams=btcusdt@kline_1s/bnbusdt@kline_1s/btcusdt@kline_1m"
        async with (
            http.ws_connect(url) as ws,
            http.ws_connect(sim.endpoints.ws["um"] + "/ws/btcusdt@kline_1s") as um,
        ):
            await asyncio.sleep(0.1)
            events = await _drain(ws, 0.1)
            for i in range(1, 9):
                sim.clock.advance(500)
                if i % 2:  # mid-second: nothing is due
                    await asyncio.sleep(0.05)
                    continue
                # a second boundary: 2 closings and 2 updates of the 1s streams (and an update of the
                # 1m stream every 2 s) arrive before the clock moves on
                for _ in range(4 + (i % 4 == 0)):
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    events.append(json.loads(msg.data))
            events += await _drain(ws)
            assert await _drain(um) == []  # futures have no 1s: the stream is accepted, silent
        end = NOW + 4000
        by: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for e in events:
            by.setdefault((e["stream"], e["data"]["k"]["x"]), []).append(e["data"])
        for sym in ("BTCUSDT", "BNBUSDT"):
            stream = f"{sym.lower()}@kline_1s"
            closing = by[(stream, True)]
            info = sim.market.info("spot", sym)
            c = sim.market.candles(info, S1, NOW, end)
            assert [e["k"]["t"] for e in closing] == list(range(NOW, end, SEC))
            lag = sim.market.config.ws_close_lag_ms
            assert closing == [
                ws_kline_event(info, S1, c, i, closed=True, event_ms=int(c.t[i]) + SEC + lag)
                for i in range(len(c))
            ]
            k = closing[0]["k"]
            assert (k["i"], k["T"], k["s"]) == ("1s", NOW + 999, sym) and isinstance(k["n"], int)
            updates = by[(stream, False)]
            assert [e["E"] for e in updates] == [NOW + 1000, NOW + 2000, NOW + 3000, NOW + 4000]
            for e in updates:
                t = e["E"] - e["E"] % SEC
                want = partial(sim.market.candles(info, S1, t, t + 1), (e["E"] - t) / SEC)
                assert e == ws_kline_event(info, S1, want, 0, closed=False, event_ms=e["E"])
        # the 1m stream on the same connection: updates every 2000 ms, no closing yet
        assert [e["E"] for e in by[("btcusdt@kline_1m", False)]] == [NOW + 2000, NOW + 4000]
        assert ("btcusdt@kline_1m", True) not in by


# ---- archive ------------------------------------------------------------------------------------
def _key(freq: str, sym: str, period: str, market: str = "spot", iv: str = "1s") -> str:
    pre = "data/spot" if market == "spot" else f"data/futures/{market}"
    return f"{pre}/{freq}/klines/{sym}/{iv}/{sym}-{iv}-{period}.zip"


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, Any]:
    async with http.get(url) as r:
        return r.status, await r.read(), r.headers


async def _listed(http: aiohttp.ClientSession, sim: SimServer, prefix: str) -> list[str]:
    _, body, _ = await _get(http, f"{sim.endpoints.archive_list}?prefix={prefix}&delimiter=/")
    root = ET.fromstring(body)
    dirs = [e.text or "" for e in root.iterfind(f"{NS}CommonPrefixes/{NS}Prefix")]
    return dirs + [e.text or "" for e in root.iterfind(f"{NS}Contents/{NS}Key")]


def _csv_frame(text: bytes) -> pl.DataFrame:
    cols = ["t", "open", "high", "low", "close", "volume", "close_time", "quote_volume", "trade_num",
            "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume", "ignore"]  # fmt: skip
    return pl.read_csv(
        io.BytesIO(text), has_header=False, new_columns=cols, infer_schema_length=0
    ).with_columns(
        pl.col("t", "close_time", "trade_num").cast(pl.Int64),
        pl.col(*cols[1:6], *cols[7:8], *cols[9:11]).cast(pl.Float64),
    )


def _assert_file_is_truth(sim: SimServer, sym: str, text: bytes, lo: int, hi: int, micro: bool) -> None:
    info = sim.market.info("spot", sym)
    c = sim.market.candles(info, S1, lo, hi)
    assert text == csv_bytes(info, S1, c, micro=micro, header=False)
    df = _csv_frame(text)
    unit = 1000 if micro else 1
    assert df["t"].to_list() == (c.t * unit).tolist()
    assert df["close_time"].to_list() == ((c.t + 999) * unit + (999 if micro else 0)).tolist()
    want = truth_frame(info, c)
    for col in want.columns[2:]:
        assert df[col].to_list() == want[col].to_list(), col


async def test_archive_daily_1s(sim: SimServer, http: aiohttp.ClientSession) -> None:
    daily = await _listed(http, sim, "data/spot/daily/klines/BTCUSDT/")
    monthly = await _listed(http, sim, "data/spot/monthly/klines/BTCUSDT/")
    assert "data/spot/daily/klines/BTCUSDT/1s/" in daily and "data/spot/monthly/klines/BTCUSDT/1s/" in monthly
    for m in ("um", "cm"):
        sym = "BTCUSDT" if m == "um" else "BTCUSD_PERP"
        for freq in ("daily", "monthly"):
            assert not any(
                "/1s/" in p for p in await _listed(http, sim, f"data/futures/{m}/{freq}/klines/{sym}/")
            )
        assert (await _get(http, f"{sim.endpoints.archive}/{_key('daily', sym, '2025-03-10', m)}"))[0] == 404
    files = await _listed(http, sim, "data/spot/daily/klines/BTCUSDT/1s/BTCUSDT-1s-2025-03-1")
    assert files[-2:] == [
        _key("daily", "BTCUSDT", "2025-03-14"),
        _key("daily", "BTCUSDT", "2025-03-14") + ".CHECKSUM",
    ]
    # a day in ms (2024) with a maintenance hour, and one in µs (2025) with a maintenance window
    for day, micro in (("2024-12-30", False), ("2025-03-11", True)):
        k = _key("daily", "BTCUSDT", day)
        status, data, _ = await _get(http, f"{sim.endpoints.archive}/{k}")
        assert status == 200
        _, ck, _ = await _get(http, f"{sim.endpoints.archive}/{k}.CHECKSUM")
        assert ck.decode() == f"{hashlib.sha256(data).hexdigest()}  BTCUSDT-1s-{day}.zip"
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            assert z.namelist() == [f"BTCUSDT-1s-{day}.csv"]
            text = z.read(z.namelist()[0])
        assert text.count(b"\n") == 86_400 - (3600 if day == "2024-12-30" else 155 * 60)
        _assert_file_is_truth(sim, "BTCUSDT", text, to_ms(day), to_ms(day) + MS_PER_DAY, micro)


async def test_archive_monthly_1s_is_streamed(http: aiohttp.ClientSession) -> None:
    async with sim_server() as sim:
        # DOGEUSDT was relisted on 2025-01-29 06:00: its January file is small
        k = _key("monthly", "DOGEUSDT", "2025-01")
        assert k in await _listed(http, sim, "data/spot/monthly/klines/DOGEUSDT/1s/")
        url = f"{sim.endpoints.archive}/{k}"
        status, data, headers = await _get(http, url)
        assert status == 200 and headers.get("Transfer-Encoding") == "chunked"
        _, ck, _ = await _get(http, url + ".CHECKSUM")
        assert ck.decode() == f"{hashlib.sha256(data).hexdigest()}  DOGEUSDT-1s-2025-01.zip"
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            (name,) = z.namelist()
            text = z.read(name)
        assert name == "DOGEUSDT-1s-2025-01.csv" and text.count(b"\n") == (2 * 1440 + 18 * 60) * 60
        _assert_file_is_truth(sim, "DOGEUSDT", text, to_ms("2025-01-01"), to_ms("2025-02-01"), True)
        status, again, headers = await _get(http, url)  # the size is known now
        assert again == data and headers["Content-Length"] == str(len(data))
        async with http.head(url) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(len(data))
        sim.control_faults({"corrupt_zips": [k]})
        _, bad, _ = await _get(http, url)
        assert len(bad) == len(data) and bad[:65536] == data[:65536] and bad != data
        assert (await _get(http, url + ".CHECKSUM"))[1] == ck
        assert sim.archive.built >= 3
    # switched off: daily 1s files only
    async with sim_server(archive_monthly_1s=False) as sim:
        assert await _listed(http, sim, "data/spot/monthly/klines/DOGEUSDT/1s/") == []
        assert "data/spot/monthly/klines/DOGEUSDT/1s/" not in await _listed(
            http, sim, "data/spot/monthly/klines/DOGEUSDT/"
        )
        assert (await _get(http, f"{sim.endpoints.archive}/{k}"))[0] == 404
        assert (await _get(http, f"{sim.endpoints.archive}/{_key('daily', 'DOGEUSDT', '2025-01-30')}"))[
            0
        ] == 200
