import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lake.binance.intervals import INTERVALS, parse_interval
from lake.binance.klines import klines_from_rest, parse_ws_kline
from lake.binance.markets import MARKETS, TRADE_TYPES, Endpoints, futures_kline_weight, get_trade_type
from lake.binance.symbols import validate_symbol, validate_symbols
from lake.errors import DataError, ValidationError


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


def test_every_binance_interval_is_known() -> None:
    assert list(INTERVALS) == [
        "1s",
        "1m",
        "3m",
        "5m",
        "15m",
        "30m",
        "1h",
        "2h",
        "4h",
        "6h",
        "8h",
        "12h",
        "1d",
        "3d",
        "1w",
        "1M",
    ]
    assert parse_interval("1mo").name == "1M"
    assert parse_interval("1M").archive_name == "1mo"


def test_bad_interval_message_lists_valid() -> None:
    with pytest.raises(ValidationError, match=r"unknown interval '7m'; valid: 1s, 1m, 3m"):
        parse_interval("7m")
    with pytest.raises(ValidationError, match="only served by spot"):
        parse_interval("1s", spot=False)


def test_weekly_candles_open_on_monday_and_monthly_on_the_first() -> None:
    w = parse_interval("1w")
    t = ms(2024, 1, 10, 13)  # a Wednesday
    assert w.floor(t) == ms(2024, 1, 8)  # Monday
    assert dt.datetime.fromtimestamp(w.floor(t) / 1000, dt.UTC).weekday() == 0
    m = parse_interval("1M")
    assert m.floor(ms(2024, 2, 29, 23)) == ms(2024, 2, 1)
    assert m.next_open(ms(2024, 12, 1)) == ms(2025, 1, 1)
    assert m.count(ms(2024, 1, 1), ms(2025, 1, 1)) == 12
    assert parse_interval("3d").floor(ms(2024, 1, 1)) % (3 * 86_400_000) == 0
    assert parse_interval("1d").close_time(ms(2024, 1, 1)) == ms(2024, 1, 2) - 1


@given(st.integers(0, 4_000_000_000_000), st.sampled_from([i for i in INTERVALS.values()]))
def test_floor_contains_timestamp(t: int, iv) -> None:
    f = iv.floor(t)
    assert f <= t < iv.next_open(f)
    assert iv.floor(f) == f


def test_futures_weight_brackets_match_reference() -> None:
    assert [futures_kline_weight(x) for x in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [
        1,
        1,
        2,
        2,
        5,
        5,
        10,
        10,
    ]
    assert MARKETS["spot"].kline_weight(1000) == 2
    assert MARKETS["um"].kline_request_limit == 499


def test_trade_type_filters() -> None:
    perp = get_trade_type("usdt_perp")
    assert perp.accepts({"status": "TRADING", "quoteAsset": "USDT", "contractType": "PERPETUAL"})
    assert not perp.accepts({"status": "TRADING", "quoteAsset": "USDT", "contractType": "CURRENT_QUARTER"})
    assert not perp.accepts({"status": "SETTLING", "quoteAsset": "USDT", "contractType": "PERPETUAL"})
    # a perpetual being delisted (binance.md §3): still usdt_perp, funding included; not a delivery
    delivering = {"status": "TRADING", "quoteAsset": "USDT", "contractType": "PERPETUAL_DELIVERING"}
    assert perp.accepts(delivering) and perp.is_perpetual
    assert not get_trade_type("usdt_deli").accepts(delivering)
    coin = get_trade_type("coin_perp")
    assert coin.accepts({"contractStatus": "TRADING", "quoteAsset": "USD", "contractType": "PERPETUAL"})
    assert coin.accepts(
        {"contractStatus": "TRADING", "quoteAsset": "USD", "contractType": "PERPETUAL_DELIVERING"}
    )
    assert not coin.accepts({"status": "TRADING", "quoteAsset": "USD", "contractType": "PERPETUAL"})
    spot = get_trade_type("btc_spot")
    assert spot.accepts({"status": "TRADING", "quoteAsset": "BTC"})
    assert {t.market_name for t in TRADE_TYPES.values()} == {"spot", "um", "cm"}
    with pytest.raises(ValidationError, match="unknown trade type 'usdt_future'"):
        get_trade_type("usdt_future")


def test_endpoints_default_to_binance_and_follow_simulator() -> None:
    ep = Endpoints()
    assert ep.rest_url("um", "/fapi/v1/klines") == "https://fapi.binance.com/fapi/v1/klines"
    assert ep.ws["um"] == "wss://fstream.binance.com/market"
    sim = Endpoints.simulator("http://127.0.0.1:8765/")
    assert sim.rest_url("cm", "/dapi/v1/time") == "http://127.0.0.1:8765/dapi/v1/time"
    assert sim.ws["spot"] == "ws://127.0.0.1:8765/ws-spot"


HOSTILE = [
    "",
    "../x",
    "A/B",
    "..",
    "btcusdt",
    "BTC USDT",
    "BTC\x00",
    "ΒTCUSDT",
    "ＢTCUSDT",
    "_BTC",
    "A" * 41,
    "BTC\\USDT",
    "BTC.USDT",
    "%2e%2e",
    "\uf900USDT",  # a CJK compatibility ideograph (NFC turns it into another code point)
    "币安人生usdt",
    "币安人生-USDT",
]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_symbols_rejected(bad: str) -> None:
    with pytest.raises(ValidationError, match="invalid symbol"):
        validate_symbol(bad)


def test_valid_symbols() -> None:
    for s in ("BTCUSDT", "BTCUSD_PERP", "BTCUSDT_250328", "1000SHIBUSDT", "币安人生USDT"):
        assert validate_symbol(s) == s
    assert validate_symbols("BTCUSDT, ETHUSDT,BTCUSDT") == ["BTCUSDT", "ETHUSDT"]


def test_rest_rows_parse_exactly() -> None:
    row = [
        1499040000000,
        "0.01634790",
        "0.80000000",
        "0.01575800",
        "0.01577100",
        "148976.11427815",
        1499644799999,
        "2434.19055334",
        308,
        "1756.87402397",
        "28.46694368",
        "17928899.62484339",
    ]
    df = klines_from_rest([row])
    r = df.row(0, named=True)
    assert r["candle_begin_time"] == dt.datetime(2017, 7, 3, tzinfo=dt.UTC)
    assert (r["open"], r["high"], r["low"], r["close"]) == (0.0163479, 0.8, 0.015758, 0.015771)
    assert r["volume"] == 148976.11427815 and r["quote_volume"] == 2434.19055334
    assert r["trade_num"] == 308 and r["taker_buy_quote_asset_volume"] == 28.46694368
    assert r["source"] == "rest"
    with pytest.raises(DataError):
        klines_from_rest([[1, "x", "1"]])
    with pytest.raises(DataError):
        klines_from_rest([[1499040000000, "abc", "1", "1", "1", "1", 1, "1", 1, "1", "1", "0"]])


def test_ws_kline_parses_and_rejects_garbage() -> None:
    ev = {
        "e": "kline",
        "E": 1638747660000,
        "s": "BTCUSDT",
        "k": {
            "t": 1638747600000,
            "T": 1638747659999,
            "s": "BTCUSDT",
            "i": "1m",
            "f": 100,
            "L": 200,
            "o": "0.0010",
            "c": "0.0020",
            "h": "0.0025",
            "l": "0.0015",
            "v": "1000",
            "n": 100,
            "x": True,
            "q": "1.0000",
            "V": "500",
            "Q": "0.500",
            "B": "123456",
        },
    }
    k = parse_ws_kline(ev)
    assert (k.symbol, k.interval, k.closed, k.open_time) == ("BTCUSDT", "1m", True, 1638747600000)
    df = klines_from_rest([k.row], source="ws")
    assert df["close"][0] == 0.002 and df["trade_num"][0] == 100 and df["source"][0] == "ws"
    for bad in ({"e": "trade"}, {"e": "kline", "k": {"t": 1}}, {"e": "kline", "k": {**ev["k"], "o": "nan?"}}):
        with pytest.raises(DataError):
            parse_ws_kline(bad)


def test_floor_many_agrees_with_floor_on_arrays_series_and_expressions() -> None:
    """Off-grid opens (2018's 09:28:14.789) fall in their slot; weeks start on Mondays."""
    import numpy as np
    import polars as pl

    opens = [1518168494789, 1518168480000, 1704067200000, 1704412799999, 0]
    for name in ("1m", "5m", "1h", "1d", "3d", "1w"):
        iv = parse_interval(name)
        want = [iv.floor(t) for t in opens]
        assert iv.floor_many(np.array(opens, dtype=np.int64)).tolist() == want
        assert iv.floor_many(pl.Series(opens)).to_list() == want
        assert pl.select(iv.floor_many(pl.lit(pl.Series(opens)))).to_series().to_list() == want
    with pytest.raises(ValueError, match="1M"):
        parse_interval("1M").floor_many(np.array(opens))
