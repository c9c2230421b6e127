"""exchangeInfo and fundingRate payloads, with each market's real field names.

* spot: ``status``, no ``onboardDate``, filters PRICE_FILTER / LOT_SIZE / NOTIONAL (numbers as strings).
* USDⓈ-M: ``status``, ``contractType``, ``onboardDate``, ``deliveryDate`` (4133404800000 for perpetuals),
  ``marginAsset``, filters incl. ``MIN_NOTIONAL{notional}``.
* COIN-M: ``contractStatus`` (not ``status``), ``contractSize``.
"""

from __future__ import annotations

import math
from typing import Any

from lake.sim.clock import MS_PER_DAY
from lake.sim.fmt import dec_str
from lake.sim.gen import WALK_DAY0
from lake.sim.market import SimMarket
from lake.sim.universe import SymbolInfo, stable_hash

__all__ = ["FUNDING_MS", "PERPETUAL_DELIVERY", "exchange_info", "funding_rows", "funding_times"]

PERPETUAL_DELIVERY = 4133404800000  # 2100-12-25, what Binance sends for perpetuals
FUNDING_MS = 8 * 3_600_000  # the usual funding interval (COIN-M always; USDⓈ-M until a switch to 4h)
FUNDING_4H_MS = 4 * 3_600_000


def funding_switch_ms(mkt: SimMarket, info: SymbolInfo) -> int | None:
    """When a USDⓈ-M perpetual moves from 8h to 4h funding (a day of its history), or None (8h for good).

    A deterministic ``funding_4h_fraction`` of USDⓈ-M perpetuals do; COIN-M funds every 8h.
    """
    cfg = mkt.config
    if info.market != "um" or stable_hash(f"fund4h:{info.key}") % 10_000 >= cfg.funding_4h_fraction * 10_000:
        return None
    span = max(1, (mkt.universe.start_ms - info.first_ms) // MS_PER_DAY)
    return (info.first_ms // MS_PER_DAY + 1 + stable_hash(f"fund4h-at:{info.key}") % span) * MS_PER_DAY


def funding_times(mkt: SimMarket, info: SymbolInfo, lo: int, hi: int) -> list[int]:
    """fundingTime of every funding event of perpetual ``info`` in ``[lo, hi]`` while it is listed, ascending.

    Slots are every 8h from 00:00 UTC (4h after the symbol's switch, ``funding_switch_ms``); on USDⓈ-M
    about one event in four is stamped up to ``funding_jitter_ms`` ms after its slot, as Binance's are.
    """
    jitter = mkt.config.funding_jitter_ms if info.market == "um" else 0
    a, b = max(lo - jitter, info.first_ms), hi
    if info.end_ms is not None:
        b = min(b, info.end_ms - 1)
    if a > b:
        return []
    switch = funding_switch_ms(mkt, info)
    out: list[int] = []
    t = -(-a // FUNDING_4H_MS) * FUNDING_4H_MS
    while t <= b:
        step = FUNDING_4H_MS if switch is not None and t >= switch else FUNDING_MS
        if t % step == 0 and info.listed_at(t):
            h = stable_hash(f"fundt:{info.key}:{t}") if jitter else 0
            ft = t + (1 + h // 4 % jitter if h % 4 == 0 else 0) if jitter else t
            if lo <= ft <= hi:
                out.append(ft)
        t += FUNDING_4H_MS
    return out


def _rate_limits(market: str, limit: int) -> list[dict[str, Any]]:
    weight = {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": limit}
    if market == "spot":
        return [
            weight,
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ]
    return [
        weight,
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]


def _num(x: float, d: int, spot: bool) -> str:
    return dec_str(round(x * 10**d), d, 8 if spot else 0)


def _spot_symbol(info: SymbolInfo, status: str) -> dict[str, Any]:
    tick, step = info.price_dec, info.qty_dec
    return {
        "symbol": info.symbol, "status": status,
        "baseAsset": info.base, "baseAssetPrecision": 8,
        "quoteAsset": info.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
        "amendAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": dec_str(1, tick, 8),
             "maxPrice": _num(1_000_000 if info.quote != "BTC" else 1000, 8, True), "tickSize": dec_str(1, tick, 8)},
            {"filterType": "LOT_SIZE", "minQty": dec_str(1, step, 8), "maxQty": "9000000.00000000",
             "stepSize": dec_str(1, step, 8)},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000" if info.quote != "BTC" else "0.00010000",
             "applyMinToMarket": True, "maxNotional": "9000000.00000000", "applyMaxToMarket": False,
             "avgPriceMins": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }  # fmt: skip


def _futures_symbol(mkt: SimMarket, info: SymbolInfo, now: int) -> dict[str, Any]:
    uni = mkt.universe
    cm = info.market == "cm"
    tick = dec_str(1, info.price_dec, 0)
    step = dec_str(1, info.qty_dec, 0)
    pair = info.symbol.split("_")[0]
    out: dict[str, Any] = {
        "symbol": info.symbol, "pair": pair, "contractType": uni.contract_type(info, now),
        "deliveryDate": info.delivery_ms if info.delivery_ms is not None else (
            info.end_ms if info.end_ms is not None else PERPETUAL_DELIVERY),
        "onboardDate": info.onboard_ms,
        ("contractStatus" if cm else "status"): uni.status(info, now),
    }  # fmt: skip
    if cm:
        out["contractSize"] = info.contract_size
    out.update(
        {
            "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
            "baseAsset": info.base, "quoteAsset": info.quote, "marginAsset": info.margin_asset,
            "pricePrecision": info.price_dec, "quantityPrecision": info.qty_dec,
            "baseAssetPrecision": 8, "quotePrecision": 8,
            "underlyingType": "COIN", "underlyingSubType": [], "triggerProtect": "0.0500",
            "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "1000000", "stepSize": step},
                {"filterType": "MARKET_LOT_SIZE", "minQty": step, "maxQty": "100000", "stepSize": step},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                *([] if cm else [{"filterType": "MIN_NOTIONAL", "notional": "5"}]),
                {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                 "multiplierDecimal": "4"},
            ],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                           "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        }
    )  # fmt: skip
    if cm:
        out["equalQtyPrecision"] = 4
    else:
        out["settlePlan"] = 0
    return out


def exchange_info(
    mkt: SimMarket, market: str, now: int, limit: int, symbols: list[SymbolInfo]
) -> dict[str, Any]:
    """The exchangeInfo document of ``market`` at virtual time ``now`` for ``symbols``."""
    limits = _rate_limits(market, limit)
    if market == "spot":
        return {
            "timezone": "UTC", "serverTime": now, "rateLimits": limits, "exchangeFilters": [],
            "symbols": [_spot_symbol(i, mkt.universe.status(i, now)) for i in symbols],
        }  # fmt: skip
    body: dict[str, Any] = {"timezone": "UTC", "serverTime": now}
    if market == "um":
        body["futuresType"] = "U_MARGINED"
    body.update({"rateLimits": limits, "exchangeFilters": []})
    if market == "um":
        body["assets"] = [
            {"asset": a, "marginAvailable": True, "autoAssetExchange": "-10000"}
            for a in ("USDT", "USDC", "BTC")
        ]
    body["symbols"] = [_futures_symbol(mkt, i, now) for i in symbols]
    return body


def funding_rows(mkt: SimMarket, info: SymbolInfo, times: list[int]) -> list[dict[str, Any]]:
    """``{symbol, fundingTime, fundingRate, markPrice}`` rows, deterministic in (seed, symbol, time)."""
    walk = mkt.walk(info)
    rows = []
    for t in times:
        k = t / MS_PER_DAY - WALK_DAY0
        i = int(k)
        logp = walk[i] + (walk[i + 1] - walk[i]) * (k - i)
        h = stable_hash(f"fund:{info.key}:{t}")
        rate = 0.0001 + ((h % 20001) - 10000) * 1e-8 * (3 if h % 7 == 0 else 1)
        rows.append(
            {
                "symbol": info.symbol,
                "fundingTime": t,
                "fundingRate": f"{rate:.8f}",
                "markPrice": f"{math.exp(float(logp)):.8f}",
            }
        )
    return rows
