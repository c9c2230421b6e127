"""The simulator in its own process for benchmarks (so it has its own core), and CPU pinning."""

from __future__ import annotations

import asyncio
import os
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["pin", "server_main"]


def pin(cpu: int) -> bool:
    """Pin this process to ``cpu``; False where that is not possible (one CPU, no affinity API)."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return False
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        return False
    return True


def server_main(kwargs: dict[str, Any], conn: Connection, pin_cpu: bool) -> None:
    """Process target: run ``SimServer(SimConfig(**kwargs))`` and send its base URL back on ``conn``."""
    os.environ["POLARS_MAX_THREADS"] = "1"  # before polars is imported in this process
    pinned = pin(0) if pin_cpu else False
    from lake.sim import SimConfig, SimServer

    async def main() -> None:
        async with SimServer(SimConfig(**kwargs)) as sim:
            now = sim.clock.now_ms()
            trading = sim.market.symbols("usdt_perp", trading_at=now)
            conn.send({"base_url": sim.base_url, "pinned": pinned, "now": now, "symbols": len(trading)})
            await asyncio.Event().wait()

    asyncio.run(main())
