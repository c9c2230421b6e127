"""Pytest-free helpers for tests anywhere in the repo that need a running simulator.

    from lake.sim.testing import start_sim, sim_server, test_config

    def test_sync_code():
        with start_sim(n_symbols=12) as sim:          # server in a background thread
            run_cli(["backfill", "--rest", sim.base_url])
            assert sim.stats.status_count("um", 429) == 0

    async def test_async_code():
        async with sim_server() as sim:               # server on the test's own event loop
            client = MyClient(sim.endpoints)
            sim.clock.advance(60_000)

``test_config()`` is deterministic: seed 1, frozen clock (speed 0) at ``TEST_START``, 10 symbols per
market, 150 days of history, intermediate websocket updates off. Any ``SimConfig`` field can be overridden.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

from lake.sim.config import SimConfig
from lake.sim.server import ExtraRoutes, SimHandle, SimServer, run_in_thread

__all__ = ["TEST_START", "sim_server", "start_sim", "test_config"]

TEST_START = "2025-03-15T12:00:00Z"


def test_config(**overrides: Any) -> SimConfig:
    """A small deterministic config for tests; keyword arguments override any ``SimConfig`` field."""
    base = SimConfig(
        seed=1, speed=0.0, start=TEST_START, n_symbols=10, history_days=150, ws_intermediate=False
    )
    return replace(base, **overrides)


test_config.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


@contextmanager
def start_sim(
    config: SimConfig | None = None, *, extra_routes: ExtraRoutes | None = None, **overrides: Any
) -> Iterator[SimHandle]:
    """Run a simulator in a background thread for the duration of the ``with`` block."""
    cfg = replace(config, **overrides) if config is not None else test_config(**overrides)
    handle = run_in_thread(cfg, extra_routes=extra_routes)
    try:
        yield handle
    finally:
        handle.stop()


@asynccontextmanager
async def sim_server(
    config: SimConfig | None = None, *, extra_routes: ExtraRoutes | None = None, **overrides: Any
) -> AsyncIterator[SimServer]:
    """Run a simulator on the current event loop for the duration of the ``async with`` block."""
    cfg = replace(config, **overrides) if config is not None else test_config(**overrides)
    async with SimServer(cfg, extra_routes=extra_routes) as server:
        yield server
