"""Symbol validation: the gate every symbol passes before it becomes part of a path or a URL."""

from __future__ import annotations

import re

from lake.errors import ValidationError

__all__ = ["SYMBOL_RE", "validate_symbol", "validate_symbols"]

# A-Z, 0-9 and '_', plus CJK unified ideographs: Binance lists Chinese-named symbols (USDⓈ-M
# 币安人生USDT since October 2025). Nothing else non-ASCII: Unicode look-alikes of Latin letters
# (Cyrillic 'А', Greek 'Β', fullwidth 'Ｂ') must not pass, and CJK compatibility ideographs
# (U+F900-U+FAFF) are excluded because NFC normalisation would turn them into other code points.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
SYMBOL_RE = re.compile(rf"[A-Z0-9{_CJK}][A-Z0-9_{_CJK}]{{0,39}}")


def validate_symbol(symbol: object) -> str:
    """Return ``symbol`` if it is a well-formed Binance symbol, else raise ``ValidationError``.

    Accepted: 1–40 characters of ``A-Z``, ``0-9``, CJK ideographs and ``_`` (not leading), which
    covers spot (``BTCUSDT``), perpetuals (``BTCUSD_PERP``, ``币安人生USDT``) and delivery contracts
    (``BTCUSDT_250328``).
    Lower case is rejected rather than silently upper-cased so that a path is never derived from a
    string other than the one validated.
    """
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise ValidationError(
            f"invalid symbol {symbol!r}: expected 1-40 characters of A-Z, 0-9, CJK ideographs and '_' "
            "(e.g. BTCUSDT)"
        )
    return symbol


def validate_symbols(symbols: object) -> list[str]:
    """Validate a list of symbols, or a comma-separated string of them; duplicates are dropped."""
    if isinstance(symbols, str):
        items = [s.strip() for s in symbols.split(",") if s.strip()]
    elif isinstance(symbols, (list, tuple, set, frozenset)):
        items = list(symbols)
    else:
        raise ValidationError(f"invalid symbol list {symbols!r}")
    if not items:
        raise ValidationError("empty symbol list")
    seen: dict[str, None] = {}
    for s in items:
        seen[validate_symbol(s)] = None
    return list(seen)
