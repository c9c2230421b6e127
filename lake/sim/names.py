"""Parse a symbol name in a market's style into (trade type, base, quote, delivery time)."""

from __future__ import annotations

import datetime as dt
import re

from lake.binance.symbols import validate_symbol
from lake.errors import ValidationError

__all__ = ["parse_symbol"]

_DELIVERY = re.compile(r"([A-Z0-9]+)_(\d{6})")


def _delivery_ms(yymmdd: str) -> int:
    try:
        d = dt.datetime.strptime(yymmdd, "%y%m%d").replace(hour=8, tzinfo=dt.UTC)
    except ValueError as exc:
        raise ValidationError(f"bad delivery date {yymmdd!r}") from exc
    return int(d.timestamp() * 1000)


def parse_symbol(market: str, symbol: str) -> tuple[str, str, str, int | None]:
    """``("usdt_perp", "BTC", "USDT", None)`` for um ``BTCUSDT``; delivery contracts carry 08:00 UTC of their date.

    >>> parse_symbol("cm", "ETHUSD_250328")[:3]
    ('coin_deli', 'ETH', 'USD')
    """
    validate_symbol(symbol)
    if market == "spot":
        for quote, tt in (("USDT", "usdt_spot"), ("USDC", "usdc_spot"), ("BTC", "btc_spot")):
            if symbol.endswith(quote) and len(symbol) > len(quote):
                return tt, symbol[: -len(quote)], quote, None
    elif market == "um":
        m = _DELIVERY.fullmatch(symbol)
        if m and m.group(1).endswith("USDT"):
            return "usdt_deli", m.group(1)[:-4], "USDT", _delivery_ms(m.group(2))
        for quote, tt in (("USDT", "usdt_perp"), ("USDC", "usdc_perp")):
            if symbol.endswith(quote) and len(symbol) > len(quote):
                return tt, symbol[: -len(quote)], quote, None
    elif market == "cm":
        if symbol.endswith("USD_PERP") and len(symbol) > 8:
            return "coin_perp", symbol[:-8], "USD", None
        m = _DELIVERY.fullmatch(symbol)
        if m and m.group(1).endswith("USD"):
            return "coin_deli", m.group(1)[:-3], "USD", _delivery_ms(m.group(2))
    raise ValidationError(f"{symbol!r} is not a {market} symbol name the simulator can list")
