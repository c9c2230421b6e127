"""Live appender (``lake live``): websocket kline streams into the lake, repaired over REST.

Public surface::

    from lake.live import wait_ready, read_watermarks, LiveConfig, LiveRunner

    await wait_ready(root, "usdt_perp", "5m", period_open, timeout=60)   # consumers
    read_watermarks(root)                                               # every feed's watermark

See ``lake.live.runner`` for the architecture and ``lake.live.watermark`` for the file layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lake.live.watermark import read_watermark, read_watermarks, wait_ready, watermark_path

if TYPE_CHECKING:
    from lake.live.runner import LiveConfig, LiveRunner, run_live

__all__ = [
    "LiveConfig",
    "LiveRunner",
    "read_watermark",
    "read_watermarks",
    "run_live",
    "wait_ready",
    "watermark_path",
]


def __getattr__(name: str) -> Any:
    # the runner pulls in aiohttp, websockets and the ingest stack: load it only when asked for
    if name in ("LiveConfig", "LiveRunner", "run_live"):
        from lake.live import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'lake.live' has no attribute {name!r}")
