"""Which archive symbols belong to a trade type (for ``--include-delisted``).

The archive lists every symbol that ever traded, with no metadata. A symbol exchangeInfo still knows
(in any status) is classified by exchangeInfo (``TradeType.accepts``); one it no longer lists at all
is classified by its name, the way Binance forms them:

    spot        <BASE><QUOTE>                 quote suffix: BTCUSDT, ETHBTC, SOLUSDC
    usdt_perp   <BASE>USDT, no underscore     BTCUSDT (and usdc_perp: BTCUSDC); also
                <BASE>USDTSETTLED             the history of a settled perpetual whose name was
                                              reused by a new listing (BNXUSDTSETTLED; the suffix
                                              repeats for a second reuse: AERGOUSDTSETTLEDSETTLED),
                                              kept as a series of its own
    usdt_deli   <BASE>USDT_<YYMMDD>           BTCUSDT_250328
    coin_perp   <BASE>USD_PERP                BTCUSD_PERP
    coin_deli   <BASE>USD_<YYMMDD>            BTCUSD_250328
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from lake.binance.markets import DELIVERY_CONTRACT_TYPES, TradeType, get_trade_type

__all__ = ["delisted_candidates", "name_matches_trade_type"]

_DELIVERY_RE = re.compile(r"[A-Z0-9]+_\d{6}")
_SETTLED = "SETTLED"


def name_matches_trade_type(symbol: str, trade_type: str | TradeType) -> bool:
    """Whether a symbol name has the shape of ``trade_type``'s symbols (see module doc)."""
    tt = get_trade_type(trade_type)
    if tt.is_spot:
        assert tt.quote_asset is not None
        return "_" not in symbol and symbol.endswith(tt.quote_asset) and len(symbol) > len(tt.quote_asset)
    if tt.is_perpetual:
        if tt.market_name == "cm":
            return symbol.endswith("USD_PERP") and len(symbol) > len("USD_PERP")
        assert tt.quote_asset is not None
        while symbol.endswith(_SETTLED) and len(symbol) > len(_SETTLED):
            symbol = symbol[: -len(_SETTLED)]
        return "_" not in symbol and symbol.endswith(tt.quote_asset) and len(symbol) > len(tt.quote_asset)
    if tt.contract_types == DELIVERY_CONTRACT_TYPES:
        if not _DELIVERY_RE.fullmatch(symbol):
            return False
        pair = symbol.rsplit("_", 1)[0]
        return pair.endswith("USD") if tt.market_name == "cm" else pair.endswith(tt.quote_asset or "")
    return False


def delisted_candidates(
    archive_symbols: Iterable[str],
    trade_type: str | TradeType,
    exchange_symbols: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Archive symbols of ``trade_type`` that are not TRADING.

    ``exchange_symbols`` maps every symbol of the market's exchangeInfo to its raw entry.
    """
    tt = get_trade_type(trade_type)
    out: list[str] = []
    for s in archive_symbols:
        info = exchange_symbols.get(s)
        if info is not None:
            if tt.accepts(info, trading_only=False) and not tt.accepts(info, trading_only=True):
                out.append(s)
        elif name_matches_trade_type(s, tt):
            out.append(s)
    return sorted(set(out))
