"""lake: a local analytical data lake of Binance klines.

import lake
con = lake.connect("lake-data")                       # DuckDB with every view of sql/
df = lake.scan_klines("lake-data", "usdt_perp", "5m", ["BTCUSDT"]).collect()
hours = lake.scan_offsets("lake-data", "usdt_perp", "1h", offsets=["0m", "30m"]).collect()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "scan_klines", "scan_offsets", "write_klines"]

# Exported lazily so that `import lake` (and the CLI's start-up) does not pay for DuckDB and Polars.
_EXPORTS = {
    "connect": "lake.query.connect",
    "scan_klines": "lake.store.klines",
    "write_klines": "lake.store.klines",
    "scan_offsets": "lake.transform.build",
}

if TYPE_CHECKING:
    from lake.query.connect import connect
    from lake.store.klines import scan_klines, write_klines
    from lake.transform.build import scan_offsets


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lake' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
