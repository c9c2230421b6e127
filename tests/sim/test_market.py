"""The deterministic market: derivation rule, awkward truths, exact decimals, determinism."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from lake.binance.intervals import INTERVALS, parse_interval
from lake.binance.markets import TRADE_TYPES
from lake.errors import ValidationError
from lake.sim import SimMarket
from lake.sim.candles import Candles, aggregate
from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.fmt import rest_rows
from lake.sim.testing import TEST_START, test_config

DAY = "2025-03-10"
NEXT = "2025-03-11"


@pytest.fixture(scope="module")
def market() -> SimMarket:
    return SimMarket(test_config())


def _c(**cols: list[int]) -> Candles:
    n = len(cols["t"])
    full = {
        k: np.asarray(cols.get(k, [0] * n), dtype=np.int64)
        for k in ("t", "o", "h", "l", "c", "v", "q", "n", "tb", "tq")
    }
    return Candles(**full, f=np.full(n, -1, dtype=np.int64), L=np.full(n, -1, dtype=np.int64))


def test_zero_volume_sub_candle_does_not_move_open_high_low() -> None:
    # A quiet minute first (price 50, outside the traded range 100..110), then two traded minutes.
    sub = _c(t=[0, 1, 2], o=[50, 100, 105], h=[50, 110, 108], l=[50, 99, 104], c=[50, 105, 107], v=[0, 5, 3])
    agg = aggregate(sub, np.zeros(3, dtype=np.int64))
    assert (agg.o[0], agg.h[0], agg.l[0], agg.c[0], agg.v[0]) == (100, 110, 99, 107, 8)
    # A quiet minute last (price 200): the close is still the last close.
    sub = _c(t=[0, 1], o=[100, 200], h=[110, 200], l=[90, 200], c=[105, 200], v=[4, 0])
    agg = aggregate(sub, np.zeros(2, dtype=np.int64))
    assert (agg.o[0], agg.h[0], agg.l[0], agg.c[0]) == (100, 110, 90, 200)


def test_all_quiet_bucket_is_flat_at_previous_close() -> None:
    sub = _c(t=[0, 1, 2], o=[70, 70, 70], h=[70, 70, 70], l=[70, 70, 70], c=[70, 70, 70])
    agg = aggregate(sub, np.zeros(3, dtype=np.int64))
    assert (agg.o[0], agg.h[0], agg.l[0], agg.c[0], agg.v[0], agg.n[0]) == (70, 70, 70, 70, 0, 0)


def _reference(minutes: pl.DataFrame, every: str) -> pl.DataFrame:
    """A straightforward re-implementation of Binance's rule with Polars."""
    traded = pl.col("volume") > 0
    return (
        minutes.sort("candle_begin_time")
        .group_by_dynamic("candle_begin_time", every=every)
        .agg(
            pl.col("open").filter(traded).first().alias("o"),
            pl.col("high").filter(traded).max().alias("h"),
            pl.col("low").filter(traded).min().alias("l"),
            pl.col("close").last(),
            pl.col("volume").sum(),
            pl.col("trade_num").sum(),
        )
        .with_columns(
            pl.col("o").fill_null(pl.col("close")).alias("open"),
            pl.col("h").fill_null(pl.col("close")).alias("high"),
            pl.col("l").fill_null(pl.col("close")).alias("low"),
        )
        .select("candle_begin_time", "open", "high", "low", "close", "volume", "trade_num")
    )


@pytest.mark.parametrize("interval", ["5m", "15m", "1h", "4h"])
def test_derived_intervals_follow_the_rule(market: SimMarket, interval: str) -> None:
    sym = market.awkward.illiquid["um"][0]  # many zero-volume minutes
    m1 = market.truth("um", "1m", [sym], DAY, NEXT)
    assert (m1["volume"] == 0).sum() > 20
    want = _reference(m1, interval)
    got = market.truth("um", interval, [sym], DAY, NEXT).select(want.columns)
    assert got.drop("volume").equals(want.drop("volume"))
    # Float sums of decimals differ in the last bits; the simulator sums exact integers.
    assert ((got["volume"] - want["volume"]).abs() <= 1e-9 * want["volume"].abs().max()).all()


def test_zero_volume_minutes_are_visible_in_derived_candles(market: SimMarket) -> None:
    """Including quiet minutes in o/h/l would change some 5m candles: the rule is observable in the data."""
    sym = market.awkward.illiquid["spot"][0]
    m1 = market.truth("spot", "1m", [sym], DAY, NEXT)
    naive = m1.group_by_dynamic("candle_begin_time", every="5m").agg(
        pl.col("high").max(), pl.col("low").min()
    )
    got = market.truth("spot", "5m", [sym], DAY, NEXT)
    differs = (naive["high"] != got["high"]) | (naive["low"] != got["low"])
    assert differs.sum() > 0
    quiet = m1.filter(pl.col("volume") == 0)
    assert (quiet["open"] == quiet["close"]).all() and (quiet["high"] == quiet["low"]).all()
    assert (quiet["trade_num"] == 0).all()


def test_hand_checked_hour(market: SimMarket) -> None:
    m1 = market.truth("usdt_perp", "1m", ["BTCUSDT"], "2025-03-10T13:00", "2025-03-10T14:00")
    h = market.truth("usdt_perp", "1h", ["BTCUSDT"], "2025-03-10T13:00", "2025-03-10T14:00").row(
        0, named=True
    )
    assert m1.height == 60 and (m1["volume"] > 0).all()
    assert h["open"] == m1["open"][0] and h["close"] == m1["close"][-1]
    assert h["high"] == m1["high"].max() and h["low"] == m1["low"].min()
    assert h["trade_num"] == m1["trade_num"].sum()
    # Sums of exact decimals: compare in integer units of the lot step / quote decimals.
    info = market.info("um", "BTCUSDT")
    assert round(h["volume"] * 10**info.qty_dec) == round((m1["volume"] * 10**info.qty_dec).round().sum())
    assert round(h["quote_volume"] * 10**info.quote_dec) == round(
        (m1["quote_volume"] * 10**info.quote_dec).round().sum()
    )


def test_calendar_alignment(market: SimMarket) -> None:
    w = market.truth("usdt_perp", "1w", ["BTCUSDT"], "2025-01-01", TEST_START)
    assert (w["candle_begin_time"].dt.weekday() == 1).all()  # Monday
    mo = market.truth("usdt_perp", "1M", ["BTCUSDT"], "2024-11-01", TEST_START)
    assert [d.day for d in mo["candle_begin_time"]] == [1] * mo.height
    assert mo["candle_begin_time"].dt.month().to_list() == [11, 12, 1, 2]
    d3 = market.truth("usdt_perp", "3d", ["BTCUSDT"], "2025-02-01", TEST_START)
    assert all((t.timestamp() * 1000) % (3 * MS_PER_DAY) == 0 for t in d3["candle_begin_time"])
    # A month equals the sum of its days.
    days = market.truth("usdt_perp", "1d", ["BTCUSDT"], "2025-02-01", "2025-03-01")
    feb = mo.filter(pl.col("candle_begin_time").dt.month() == 2).row(0, named=True)
    assert feb["trade_num"] == days["trade_num"].sum() and feb["close"] == days["close"][-1]
    assert feb["high"] == days["high"].max() and feb["open"] == days["open"][0]


def test_maintenance_windows_have_no_candles_anywhere(market: SimMarket) -> None:
    for m, windows in market.awkward.maintenance.items():
        a, b = windows[-1]
        assert b - a >= 60 * 60_000
        for tt in [t for t, v in TRADE_TYPES.items() if v.market_name == m]:
            df = market.truth(tt, "1m", None, a - 3_600_000, b + 3_600_000)
            inside = df.filter(pl.col("candle_begin_time").is_between(_dt(a), _dt(b - 1)))
            assert inside.height == 0
            # Symbols with data around the window all resume at the same minute.
            after = (
                df.filter(pl.col("candle_begin_time") >= _dt(b))
                .group_by("symbol")
                .agg(pl.col("candle_begin_time").min())
            )
            assert (after["candle_begin_time"] == _dt(b)).all()
        for iv in ("5m", "15m", "1h"):
            ms = INTERVALS[iv].ms
            assert ms is not None
            df = market.truth(m, iv, None, a - 3_600_000, b + 3_600_000)
            # No candle lies entirely inside the window.
            opens = [t.timestamp() * 1000 for t in df["candle_begin_time"]]
            assert not any(a <= t and t + ms <= b for t in opens)


def _dt(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def test_listing_events(market: SimMarket) -> None:
    aw = market.awkward
    uni = market.universe
    for m in ("spot", "um", "cm"):
        recent = market.info(m, aw.recent[m][0])
        df = market.truth(m, "1d", [recent.symbol])
        assert df["candle_begin_time"].min() == _dt(recent.first_ms - recent.first_ms % MS_PER_DAY)
        assert 3 <= df.height <= 20
        first_minute = market.truth(
            m, "1m", [recent.symbol], recent.first_ms - 3_600_000, recent.first_ms + 60_000
        )
        assert first_minute["candle_begin_time"].to_list() == [_dt(recent.first_ms)]

        gone = market.info(m, aw.delisted[m][0])
        end = gone.end_ms
        assert end is not None and uni.status(gone, market.clock.now_ms()) != "TRADING"
        tail = market.truth(m, "1m", [gone.symbol], end - 600_000, end + 600_000)
        assert tail["candle_begin_time"].max() == _dt(end - 60_000)

        back = market.info(m, aw.relisted[m][0])
        (_, b1), (a2, _) = back.segments
        assert b1 is not None and a2 - b1 > 30 * MS_PER_DAY
        daily = market.truth(m, "1d", [back.symbol])
        gap = daily.filter(pl.col("candle_begin_time").is_between(_dt(b1 + MS_PER_DAY), _dt(a2 - MS_PER_DAY)))
        assert gap.height == 0 and daily.height > 0
        assert uni.status(back, market.clock.now_ms()) == "TRADING"
    for m in ("um", "cm"):
        (name,) = aw.delivered[m]
        info = market.info(m, name)
        assert info.delivery_ms is not None and info.delivery_ms < market.clock.now_ms()


def test_every_trade_type_has_symbols(market: SimMarket) -> None:
    now = market.clock.now_ms()
    for tt in TRADE_TYPES:
        assert market.symbols(tt, trading_at=now), tt
    assert "BTCUSD_PERP" in market.symbols("coin_perp")
    assert any(s.startswith("BTCUSDT_") for s in market.symbols("usdt_deli"))
    assert "ETHBTC" in market.symbols("btc_spot")


def test_values_are_consistent(market: SimMarket) -> None:
    for tt, sym in (("usdt_spot", "ETHUSDT"), ("usdt_perp", "BTCUSDT"), ("btc_spot", "ETHBTC")):
        df = market.truth(tt, "1m", [sym], DAY, NEXT).filter(pl.col("volume") > 0)
        assert (df["low"] <= df[["open", "close"]].min_horizontal()).all()
        assert (df["high"] >= df[["open", "close"]].max_horizontal()).all()
        vwap = df["quote_volume"] / df["volume"]
        assert ((vwap >= df["low"] * 0.999) & (vwap <= df["high"] * 1.001)).all()
        assert (df["taker_buy_base_asset_volume"] <= df["volume"]).all()
        assert (df["taker_buy_quote_asset_volume"] <= df["quote_volume"]).all()
        assert (df["trade_num"] >= 1).all()


def test_floats_equal_the_served_strings(market: SimMarket) -> None:
    for m, sym in (("spot", "BTCUSDT"), ("spot", "ETHBTC"), ("um", "ETHUSDT"), ("cm", "BTCUSD_PERP")):
        info = market.info(m, sym)
        iv = parse_interval("15m")
        c = market.candles(info, iv, to_ms(DAY), to_ms(NEXT))
        rows = rest_rows(info, iv, c)
        df = market.truth(m, "15m", [sym], DAY, NEXT)
        for row, want in zip(rows, df.iter_rows(named=True), strict=True):
            assert [float(row[i]) for i in (1, 2, 3, 4, 5, 7, 9, 10)] == [
                want[k] for k in ("open", "high", "low", "close", "volume", "quote_volume",
                                  "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume")
            ]  # fmt: skip
            assert row[8] == want["trade_num"]
        if m == "spot":
            assert all(len(s.split(".")[1]) == 8 for s in rows[0][1:6])


def test_deterministic_across_instances() -> None:
    a = SimMarket(test_config()).truth("usdt_perp", "5m", ["BTCUSDT", "ETHUSDT"], DAY, NEXT)
    b = SimMarket(test_config()).truth("usdt_perp", "5m", ["BTCUSDT", "ETHUSDT"], DAY, NEXT)
    c = SimMarket(test_config(seed=2)).truth("usdt_perp", "5m", ["BTCUSDT", "ETHUSDT"], DAY, NEXT)
    assert a.height == 2 * 288 and a.equals(b) and not a.equals(c)
    # A symbol's candles do not depend on how many symbols the market has.
    d = SimMarket(test_config(n_symbols=30)).truth("usdt_perp", "5m", ["BTCUSDT"], DAY, NEXT)
    assert d.equals(a.filter(pl.col("symbol") == "BTCUSDT"))


def test_days_join_up(market: SimMarket) -> None:
    info = market.info("um", "ETHUSDT")
    d = to_ms(DAY) // MS_PER_DAY
    first, second = market.minutes(info, d), market.minutes(info, d + 1)
    assert first.c[-1] == second.o[0]


def test_truth_closed_only_and_forming(market: SimMarket) -> None:
    now = to_ms(TEST_START) + 150_000  # 12:02:30
    df = market.truth("usdt_perp", "1h", ["BTCUSDT"], "2025-03-15T10:00", "2025-03-15T14:00", now=now)
    assert df["candle_begin_time"].to_list() == [
        _dt(to_ms("2025-03-15T10:00")),
        _dt(to_ms("2025-03-15T11:00")),
    ]
    info = market.info("um", "BTCUSDT")
    f = market.forming(info, parse_interval("1h"), now)
    final = market.candles(info, parse_interval("1h"), to_ms(TEST_START), to_ms(TEST_START) + 1)
    assert f is not None and f.t[0] == final.t[0] and f.o[0] == final.o[0]
    assert 0 < f.v[0] < final.v[0]


def test_truth_1s_is_spot_only_and_unknown_rejected(market: SimMarket) -> None:
    start = to_ms(TEST_START) - 10_000
    assert market.truth("usdt_spot", "1s", ["BTCUSDT"], start).height == 10  # closed ones only
    with pytest.raises(ValidationError):
        market.truth("usdt_perp", "1s", ["BTCUSDT"])
    with pytest.raises(ValidationError):
        market.truth("cm", "1s")
    with pytest.raises(ValidationError):
        market.truth("nonsense", "1m")
