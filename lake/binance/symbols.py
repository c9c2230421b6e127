"""Symbol validation: the gate every symbol passes before it becomes part of a path or a URL."""

from __future__ import annotations

import re

from lake.errors import ValidationError

__all__ = ["SYMBOL_RE", "validate_symbol", "validate_symbols"]

# ASCII only, on purpose: Unicode look-alikes (Cyrillic 'А', fullwidth 'Ｂ') must not pass.
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9_]{0,39}")


def validate_symbol(symbol: object) -> str:
    """Return ``symbol`` if it is a well-formed Binance symbol, else raise ``ValidationError``.

    Accepted: 1–40 characters of ``A-Z``, ``0-9`` and ``_`` (not leading), which covers spot
    (``BTCUSDT``), perpetuals (``BTCUSD_PERP``) and delivery contracts (``BTCUSDT_250328``).
    Lower case is rejected rather than silently upper-cased so that a path is never derived from a
    string other than the one validated.
    """
    if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
        raise ValidationError(
            f"invalid symbol {symbol!r}: expected 1-40 characters of A-Z, 0-9 and '_' (e.g. BTCUSDT)"
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
