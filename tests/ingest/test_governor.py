"""The weight governor and its server clock, on synthetic clocks (no network)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from lake.ingest.governor import ServerClock, WeightGovernor, budget_path


def _feed(clock: ServerClock, speed: float, base_ms: float, m0: float, n: int = 3, gap: float = 0.02) -> None:
    """Feed ``n`` perfect samples of a server clock running ``speed``× from ``base_ms`` at ``m0``."""
    for i in range(n):
        m = m0 + i * gap
        clock.observe(m - 0.0002, m + 0.0002, base_ms + (m - m0) * 1000 * speed)


def test_clock_measures_speed_and_snaps_real_time() -> None:
    m0 = time.monotonic() - 1.0
    fast = ServerClock()
    _feed(fast, 60.0, 1_700_000_000_000, m0, n=6, gap=0.1)
    assert fast.rate == pytest.approx(60.0, rel=0.01)
    real = ServerClock()
    _feed(real, 1.0, 1_700_000_000_000, m0, n=6, gap=0.1)
    assert real.rate == 1.0
    # now_ms extrapolates along the measured rate
    now = fast.now_ms()
    expected = 1_700_000_000_000 + (time.monotonic() - m0) * 60_000
    assert abs(now - expected) < fast.uncertainty_ms() + 200


def test_clock_frozen_and_jump() -> None:
    m0 = time.monotonic() - 1.0
    c = ServerClock()
    for i in range(3):
        c.observe(m0 + i * 0.1, m0 + i * 0.1 + 0.0004, 1_700_000_000_000)
    assert c.rate < 1e-3  # frozen
    c.observe(m0 + 0.5, m0 + 0.5004, 1_700_000_600_000)  # someone advanced it by 10 minutes
    assert c.jumps == 1
    assert abs(c.now_ms(m0 + 0.5002) - 1_700_000_600_000) < 5


def test_clock_needs_sync_until_two_samples() -> None:
    c = ServerClock()
    assert c.needs_sync(300)
    m = time.monotonic()
    c.observe(m - 0.3, m - 0.2999, 1e12)
    assert c.needs_sync(300)
    c.observe(m - 0.1, m - 0.0999, 1e12 + 200)
    assert not c.needs_sync(1e9)


def _fast_clock(speed: float, at: float = 1_000.0) -> ServerClock:
    """A clock running ``speed``× whose current time is ``at`` ms into a window."""
    clock = ServerClock(slack_s=0.0005)
    m0 = time.monotonic() - 0.5
    base = 28_333_000 * 60_000 + at - 0.5 * speed * 1000
    _feed(clock, speed, base, m0, n=5, gap=0.1)
    return clock


async def test_governor_fills_window_then_waits_for_the_next() -> None:
    clock = _fast_clock(600.0, at=2_000)  # a 60 s window lasts 0.1 s real
    gov = WeightGovernor("t", limit=100, reserve=0, clock=clock, latency_s=0.0001)
    permits = [await gov.acquire(10) for _ in range(10)]
    assert len({p.windows for p in permits}) == 1
    w = permits[0].windows[0]
    assert gov.reserved(w) == 100
    t0 = time.monotonic()
    nxt = await gov.acquire(10)
    assert nxt.windows[0] > w
    assert clock.now_ms() >= (w + 1) * 60_000
    assert time.monotonic() - t0 < 0.5
    gov.close()


async def test_governor_respects_observed_header_weight() -> None:
    clock = _fast_clock(60.0, at=5_000)
    gov = WeightGovernor("t", limit=100, reserve=0, clock=clock, latency_s=0.0001)
    p = await gov.acquire(1)
    gov.complete(p, used_weight=95)  # someone else used 94 in this window
    assert gov.used_now() == 95
    granted = [await gov.acquire(1) for _ in range(5)]
    assert gov.reserved(granted[0].windows[0]) == 6
    t0 = time.monotonic()
    late = await gov.acquire(1)  # the 101st weight must wait for the next window
    assert late.windows[0] > p.windows[0]
    assert time.monotonic() - t0 > 0.05
    gov.close()


async def test_governor_pause_is_real_time() -> None:
    clock = _fast_clock(600.0)
    gov = WeightGovernor("t", limit=1000, clock=clock)
    until = gov.pause(0.08)  # Retry-After is real seconds, whatever the server clock's speed
    assert 0.05 < gov.paused_for() <= 0.08
    await gov.acquire(1)
    assert time.time() >= until
    gov.close()


def test_shared_state_file_between_governors(tmp_path: Path) -> None:
    path = budget_path(tmp_path, "um", "http://x")
    assert path.name.startswith("budget-um-") and path.suffix == ".json"

    async def run() -> None:
        clock = _fast_clock(1.0)  # a real-time window: no reset during the test
        a = WeightGovernor("a", limit=50, reserve=0, clock=clock, state_file=path)
        b = WeightGovernor("b", limit=50, reserve=0, clock=clock, state_file=path)
        for _ in range(5):
            await a.acquire(5)
            await b.acquire(5)
        assert a.reserved() == 50
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.acquire(1), 0.2)
        a.pause(5)
        doc = json.loads(path.read_text())
        assert doc["paused_until"] > time.time()
        assert b.paused_for() == 0  # b learns of the pause at its next reservation
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.acquire(1), 0.1)
        assert b.paused_for() > 4
        a.close()
        b.close()

    asyncio.run(run())


def _child(path: str, speed: float, base: float, m0: float, n: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    async def go() -> list[tuple[int, ...]]:
        clock = ServerClock(slack_s=0.0005)
        for i in range(4):
            m = m0 + i * 0.05
            clock.observe(m, m + 0.0002, base + (m + 0.0001 - m0) * 1000 * speed)
        gov = WeightGovernor("c", limit=60, reserve=0, clock=clock, state_file=path, latency_s=0.0005)
        wins = [(await gov.acquire(2)).windows for _ in range(n)]
        gov.close()
        return wins

    out.put(asyncio.run(go()))


@pytest.mark.slow
def test_two_processes_share_one_budget(tmp_path: Path) -> None:
    """Two processes each wanting 90 weight under a 60-per-window budget: no window gets more than 60."""
    path = str(tmp_path / "budget.json")
    speed, base = 600.0, 1_700_000_000_000.0
    m0 = time.monotonic() - 0.3
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(path, speed, base, m0, 45, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    per_window: dict[int, int] = {}
    for wins in results:
        for ws in wins:
            for w in ws:
                per_window[w] = per_window.get(w, 0) + 2
    assert sum(len(w) for w in results) == 90
    assert max(per_window.values()) <= 60


def test_every_host_of_one_binance_service_shares_its_budget_file(tmp_path: Path) -> None:
    # Binance counts weight (and websocket connection attempts) per IP: a lake on api1.binance.com
    # and one on api.binance.com spent two budgets of 6000 against one limit
    def same(*urls: str) -> bool:
        return len({budget_path(tmp_path, "spot", u) for u in urls}) == 1

    assert same("https://api.binance.com", "https://api1.binance.com/", "https://API4.binance.com",
                "https://api-gcp.binance.com", "https://data-api.binance.vision")  # fmt: skip
    assert same(
        "wss://stream.binance.com:9443", "wss://stream.binance.com:443", "wss://data-stream.binance.vision"
    )
    assert same(
        "wss://fstream.binance.com/market", "wss://fstream.binance.com/public", "wss://fstream.binance.com"
    )
    assert not same("https://api.binance.com", "https://fapi.binance.com")
    assert not same("https://fapi.binance.com", "https://dapi.binance.com")
    assert not same("https://api.binance.com", "wss://stream.binance.com:9443")
    # anything else (a simulator, a proxy) keeps a budget of its own URL
    assert not same("http://127.0.0.1:8765", "http://127.0.0.1:8766")
    assert same("http://127.0.0.1:8765", "http://127.0.0.1:8765/")
