"""The venue: Binance markets, trade types, intervals, symbols and payload parsing (pure code)."""

from lake.binance.intervals import INTERVALS, Interval, parse_interval
from lake.binance.markets import MARKETS, TRADE_TYPES, Endpoints, Market, TradeType, get_trade_type
from lake.binance.symbols import validate_symbol, validate_symbols

__all__ = [
    "INTERVALS",
    "MARKETS",
    "TRADE_TYPES",
    "Endpoints",
    "Interval",
    "Market",
    "TradeType",
    "get_trade_type",
    "parse_interval",
    "validate_symbol",
    "validate_symbols",
]
