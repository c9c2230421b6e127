"""Offline Binance: a deterministic simulator of REST, websocket streams and the data archive.

    from lake.sim import SimConfig, SimServer

    async with SimServer(SimConfig(seed=1, speed=0, start="2025-03-15T12:00")) as sim:
        sim.base_url          # http://127.0.0.1:PORT
        sim.endpoints         # Endpoints.simulator(sim.base_url): pass it to any lake client
        sim.market.truth("usdt_perp", "5m", ["BTCUSDT"], "2025-03-14", "2025-03-15")
        sim.clock.advance(60_000)

``run_in_thread(config)`` runs the same server for synchronous code; ``lake.sim.testing`` has helpers.
Module map: config (knobs), clock, universe + names + quarters (symbols, schedules), gen (1m
generation), seconds (spot 1s candles made from the final 1m ones, aggregating back to them exactly),
candles (derivation rule), market (SimMarket, truth), fmt + npfmt (wire formats), rows
(REST row selection), rest, exinfo, limits (weights, 429/418, stats), ws, archive + listing (S3 view),
faults, cache, server, cli, testing. ``quantclass`` (another module's endpoint) mounts via extra_routes.
"""

from lake.sim.clock import VirtualClock
from lake.sim.config import FaultConfig, SimConfig
from lake.sim.faults import Faults
from lake.sim.limits import Stats
from lake.sim.market import Awkward, SimMarket
from lake.sim.server import ExtraRoutes, SimHandle, SimServer, run_in_thread

__all__ = [
    "Awkward",
    "ExtraRoutes",
    "FaultConfig",
    "Faults",
    "SimConfig",
    "SimHandle",
    "SimMarket",
    "SimServer",
    "Stats",
    "VirtualClock",
    "run_in_thread",
]
