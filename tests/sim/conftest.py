"""Fixtures for the simulator tests: a fresh in-process server per test (cheap: data is generated
lazily), a shared read-only server in a background thread, and an aiohttp client session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from lake.sim import SimHandle, SimServer
from lake.sim.testing import sim_server, start_sim


@pytest.fixture(scope="session")
def shared_sim() -> Iterator[SimHandle]:
    """A session-wide simulator (frozen clock at TEST_START). Do not change its clock or faults."""
    with start_sim() as handle:
        yield handle


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A fresh simulator with ``test_config()``, on the test's event loop."""
    async with sim_server() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
