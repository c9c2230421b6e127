"""Universe selection from exchangeInfo payloads and the exchange_info / funding tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from lake.errors import NotFoundError
from lake.ingest.funding import funding_frame, funding_gaps
from lake.ingest.universe import ExchangeSnapshot, parse_symbol, snapshot_frame, universe, write_snapshot
from lake.store.tables import read_funding, scan_exchange_info, write_funding

SPOT = {
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
    ],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01", "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "stepSize": "0.00001000"},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000"},
            ],
        },
        {"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "BTC", "filters": []},
        {"symbol": "OLDUSDT", "status": "BREAK", "baseAsset": "OLD", "quoteAsset": "USDT", "filters": []},
    ],
}
UM = {
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USDT",
            "baseAsset": "BTC",
            "marginAsset": "USDT",
            "onboardDate": 1569398400000,
            "deliveryDate": 4133404800000,
            "pair": "BTCUSDT",
            "filters": [
                {"filterType": "MIN_NOTIONAL", "notional": "100"},
                {"filterType": "PRICE_FILTER", "tickSize": "0.10"},
            ],
        },
        {
            "symbol": "BTCUSDT_250328",
            "status": "TRADING",
            "contractType": "CURRENT_QUARTER",
            "quoteAsset": "USDT",
            "deliveryDate": 1743148800000,
            "filters": [],
        },
        {
            "symbol": "ZZZUSDT",
            "status": "SETTLING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USDT",
            "filters": [],
        },
    ]
}
CM = {
    "symbols": [
        {
            "symbol": "BTCUSD_PERP",
            "contractStatus": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USD",
            "contractSize": 100,
            "filters": [],
        },
        {
            "symbol": "BTCUSD_250328",
            "contractStatus": "TRADING",
            "contractType": "CURRENT_QUARTER",
            "quoteAsset": "USD",
            "filters": [],
        },
    ]
}
NOW = 1_735_000_000_000


def test_parse_symbol_fields() -> None:
    s = parse_symbol(SPOT["symbols"][0], "spot")
    assert (s.tick_size, s.lot_size, s.min_notional) == (0.01, 0.00001, 5.0)
    p = parse_symbol(UM["symbols"][0], "um")
    assert p.delivery_ms is None and p.onboard_ms == 1569398400000 and p.min_notional == 100.0
    assert parse_symbol(CM["symbols"][0], "cm").contract_size == 100.0


def test_universe_rules() -> None:
    spot = ExchangeSnapshot("spot", NOW, SPOT)
    assert universe(spot, "usdt_spot").symbols == ["BTCUSDT"]
    assert universe(spot, "btc_spot").symbols == ["ETHBTC"]
    assert spot.rate_limit == (6000, 60_000, "X-MBX-USED-WEIGHT-1M")
    um = ExchangeSnapshot("um", NOW, UM)
    assert universe(um, "usdt_perp").symbols == ["BTCUSDT"]
    assert universe(um, "usdt_deli").symbols == ["BTCUSDT_250328"]
    cm = ExchangeSnapshot("cm", NOW, CM)
    assert universe(cm, "coin_perp").symbols == ["BTCUSD_PERP"]  # contractStatus, not status
    assert universe(cm, "coin_deli").symbols == ["BTCUSD_250328"]
    # a whitelist may name an inactive symbol, but not one the trade type does not list
    assert universe(um, "usdt_perp", ["ZZZUSDT"]).symbols == ["ZZZUSDT"]
    with pytest.raises(NotFoundError, match="unknown usdt_perp symbols: NOPE, BTCUSDT_250328"):
        universe(um, "usdt_perp", ["BTCUSDT", "NOPE", "BTCUSDT_250328"])


def test_exchange_info_table_keeps_distinct_snapshots(tmp_path: Path) -> None:
    um = ExchangeSnapshot("um", NOW, UM)
    assert write_snapshot(tmp_path, um, ["usdt_perp", "usdt_deli"]) == ["usdt_perp", "usdt_deli"]
    assert (
        write_snapshot(tmp_path, ExchangeSnapshot("um", NOW + 60_000, UM), ["usdt_perp"]) == []
    )  # unchanged
    changed = {"symbols": [dict(UM["symbols"][0], status="SETTLING"), *UM["symbols"][1:]]}
    assert write_snapshot(tmp_path, ExchangeSnapshot("um", NOW + 120_000, changed), ["usdt_perp"]) == [
        "usdt_perp"
    ]
    df = scan_exchange_info(tmp_path, "usdt_perp")
    assert df["snapshot_time"].n_unique() == 2
    assert set(df["symbol"]) == {"BTCUSDT", "ZZZUSDT"}
    day = dt.datetime.fromtimestamp(NOW / 1000, tz=dt.UTC).date()
    assert (tmp_path / f"exchange_info/trade_type=usdt_perp/date={day}/data.parquet").is_file()
    assert snapshot_frame(um, "usdt_deli")["delivery_date"][0] is not None


def test_funding_table_upsert_and_gaps(tmp_path: Path) -> None:
    rows = [
        {
            "symbol": "BTCUSDT",
            "fundingTime": NOW + i * 28_800_000,
            "fundingRate": "0.0001",
            "markPrice": "" if i == 0 else "42000.1",
        }
        for i in range(3)
    ]
    df = funding_frame(rows)
    assert df["mark_price"].null_count() == 1
    assert write_funding(tmp_path, "usdt_perp", "BTCUSDT", df) == 3
    assert write_funding(tmp_path, "usdt_perp", "BTCUSDT", df) == 0
    stored = read_funding(tmp_path, "usdt_perp", "BTCUSDT")
    assert stored.height == 3 and stored.schema["funding_time"] == pl.Datetime("ms", "UTC")
    assert funding_gaps(stored, NOW - 1000, NOW + 10**9) == [
        (NOW - 1000, NOW),
        (NOW + 2 * 28_800_000 + 1, NOW + 10**9),
    ]
    assert funding_gaps(stored.clear(), 5, 9) == [(5, 9)]


def test_funding_gaps_inside_the_stored_rows() -> None:
    """Holes between stored funding times: wider than 8h, or ≥ 1.5× the neighbouring spacing (a 1h
    symbol missing rows); a change of funding interval (1h → 4h → 8h) is not a hole."""
    h = 3_600_000

    def frame(times: list[int]) -> pl.DataFrame:
        return funding_frame([{"fundingTime": t, "fundingRate": "0.0001"} for t in times])

    eight = [NOW + i * 8 * h for i in range(6)]
    assert funding_gaps(frame(eight), NOW, eight[-1] + 1) == []
    holed = [t for i, t in enumerate(eight) if i not in (2, 3)]  # 24h between two stored rows
    assert funding_gaps(frame(holed), NOW, eight[-1] + 1) == [(eight[1] + 1, eight[4])]
    hourly = [NOW + i * h for i in range(10) if i not in (4, 5)]  # 3h between 1h rows
    assert funding_gaps(frame(hourly), NOW, NOW + 9 * h + 1) == [(NOW + 3 * h + 1, NOW + 6 * h)]
    changing = [NOW, NOW + h, NOW + 2 * h, NOW + 6 * h, NOW + 10 * h, NOW + 18 * h, NOW + 26 * h]
    assert funding_gaps(frame(changing), NOW, NOW + 26 * h + 1) == []
    two = [NOW, NOW + 9 * h]  # no neighbours: only the 8h bound applies
    assert funding_gaps(frame(two), NOW, NOW + 9 * h + 1) == [(NOW + 1, NOW + 9 * h)]


def test_a_name_lake_cannot_store_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """Binance lists 币安人生USDT (kept); a name that could not become a path (here a look-alike
    and a traversal) is skipped with one warning, and the rest of the market is still served."""

    def perp(name: str) -> dict:
        return {
            "symbol": name,
            "status": "TRADING",
            "contractType": "PERPETUAL",
            "quoteAsset": "USDT",
            "filters": [],
        }

    raw = {"symbols": [perp("BTCUSDT"), perp("币安人生USDT"), perp("ВTCUSDT"), perp("../USDT")]}
    snap = ExchangeSnapshot("um", NOW, raw)
    assert universe(snap, "usdt_perp").symbols == ["BTCUSDT", "币安人生USDT"]
    assert universe(snap, "usdt_perp").symbols == ["BTCUSDT", "币安人生USDT"]
    skipped = [r.getMessage() for r in caplog.records if "skipping symbol" in r.getMessage()]
    assert len(skipped) == 2 and "'../USDT'" in skipped[1]  # once each, not once per refresh
    assert snapshot_frame(snap, "usdt_perp")["symbol"].to_list() == ["BTCUSDT", "币安人生USDT"]
