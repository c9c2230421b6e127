"""One weight budget per market for every ``lake`` process on the machine, checked end to end.

Real ``lake backfill`` / ``lake live`` subprocesses against one simulator (its clock sped up, its
weight limit lowered so that a run needs several windows), judged by the simulator's own accounting:
the highest weight of every server minute (with ``count_rejected_weight`` a refused request still
counts, so a window over the limit shows), the 429/418 answers, and the lake against the ground
truth. Also: weight spent by another program on the same IP (seen only in the used-weight headers),
a 429 and a 418 pausing every process, the state file left by a killed process, a damaged state
file, a read-only state directory, and the server clock far from this machine's (the test
simulator's 2025 clock is behind it; one test puts it years ahead).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl
import pytest
from aiohttp import web

from lake.ingest.governor import ServerClock, WeightGovernor, budget_path
from lake.ingest.rest_client import RestClient
from lake.sim.clock import VirtualClock, to_ms
from lake.sim.market import SimMarket
from lake.sim.server import SimHandle
from lake.sim.testing import sim_server, start_sim
from lake.store.klines import scan_klines

MINUTE = 60_000
LIMITS = {"spot": 6000, "um": 2400, "cm": 2400}


def budget_of(limit: int) -> int:
    """What the governor lets every process together use of ``limit`` (its default 1% reserve)."""
    return limit - -(-limit // 100)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def lake_cmd(sim: SimHandle, root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lake.cli", *args, "--root", str(root), "--sim-url", sim.base_url, "--json"]


def backfill_cmd(sim: SimHandle, root: Path, tt: str, days: int) -> list[str]:
    args = ("backfill", "--source", "rest", "--type", tt, "--interval", "1m", "--days", str(days))
    return lake_cmd(sim, root, *args)


class Proc:
    """A ``lake`` subprocess: JSON on stdout, log lines in a file (a pipe could fill and block it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        logs.mkdir(parents=True, exist_ok=True)
        self.err_path = logs / f"{name}.err"
        with self.err_path.open("w") as err:
            self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.ended_ms: int | None = None  # server (virtual) time it was seen to exit

    def result(self, timeout: float = 120) -> dict[str, Any]:
        out, _ = self.p.communicate(timeout=timeout)
        err = self.err_path.read_text()
        assert self.p.returncode == 0, f"{self.name} exited {self.p.returncode}:\n{err[-3000:]}"
        doc: dict[str, Any] = json.loads(out)
        return doc


def env_with(state: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if state is not None:
        env["LAKE_STATE_DIR"] = str(state)
    return env


def watch(sim: SimHandle, procs: Sequence[Proc], timeout: float = 150) -> None:
    """Wait for every process, noting the server time each was seen to end."""
    t0 = time.monotonic()
    while any(p.ended_ms is None for p in procs):
        for p in procs:
            if p.ended_ms is None and p.p.poll() is not None:
                p.ended_ms = sim.clock.now_ms()
        assert time.monotonic() - t0 < timeout, "lake processes still running"
        time.sleep(0.01)


def until(pred: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"{what} not reached"
        time.sleep(0.002)


def windows(sim: SimHandle, market: str) -> dict[int, int]:
    """Server minute (its start, ms) → the most weight it held (refused requests included when the
    simulator counts them)."""
    return {int(w): int(u) for w, u in sim.stats.snapshot()["rest"][market]["windows"]}


def assert_never_over(sim: SimHandle, market: str, limit: int) -> dict[int, int]:
    got = windows(sim, market)
    assert got, "no request reached the simulator"
    assert max(got.values()) <= limit, sorted(got.items())
    assert sim.stats.status_count(market, 429) == 0, sorted(got.items())
    assert sim.stats.status_count(market, 418) == 0
    return got


def assert_equals_truth(sim: SimHandle, root: Path, doc: dict[str, Any]) -> int:
    """Over the run's range, the lake holds exactly the simulator's candles of every series of the
    run (a killed earlier run may have stored a few older ones); returns the rows."""
    assert doc["missing"] == []
    rows = 0
    by_tt: dict[str, list[dict[str, Any]]] = {}
    for s in doc["series"]:
        by_tt.setdefault(s["trade_type"], []).append(s)
    for tt, series in by_tt.items():
        syms = sorted(s["symbol"] for s in series)
        start, end = to_ms(series[0]["start"]), to_ms(series[0]["end"])
        iv = series[0]["interval"]
        truth = sim.market.truth(tt, iv, syms, start, end, now=end).sort("symbol", "candle_begin_time")
        got = (
            scan_klines(root, tt, iv, syms)
            .filter(pl.col("candle_begin_time").dt.epoch("ms").is_between(start, end, closed="left"))
            .collect()
            .sort("symbol", "candle_begin_time")
        )
        assert got.select("symbol", "candle_begin_time").is_duplicated().sum() == 0
        assert got.height == truth.height > 0, (tt, got.height, truth.height)
        assert got.select(truth.columns).equals(truth)
        rows += got.height
    return rows


class RequestLog:
    """Every REST request the simulator answers: (server ms on arrival, from the test's own client?,
    status, body). Mounted as an aiohttp middleware through ``extra_routes``."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, bool, int, str]] = []
        self._lock = threading.Lock()

    def install(self, app: web.Application, market: SimMarket, clock: VirtualClock) -> None:
        @web.middleware
        async def log_request(request: web.Request, handler: Any) -> web.StreamResponse:
            at = clock.now_ms()
            resp = await handler(request)
            if request.path.startswith(("/fapi/", "/api/", "/dapi/")):
                body = resp.text if isinstance(resp, web.Response) and resp.status != 200 else ""
                with self._lock:
                    self.entries.append((at, "X-Test-Client" in request.headers, resp.status, body or ""))
            return resp

        app.middlewares.append(log_request)

    def lake(self) -> list[tuple[int, int, str]]:
        with self._lock:
            return [(at, st, body) for at, mine, st, body in self.entries if not mine]


async def _burn(
    base_url: str, path: str, params: dict[str, str], n: int, *, stop_at: int | None = None
) -> list[int]:
    """``n`` requests from another program (plain aiohttp), one after another; returns the statuses
    (stops early at status ``stop_at``)."""
    got: list[int] = []
    async with aiohttp.ClientSession(headers={"X-Test-Client": "1"}) as s:
        for _ in range(n):
            async with s.get(f"{base_url}{path}", params=params) as r:
                await r.read()
                got.append(r.status)
            if r.status == stop_at:
                break
    return got


def burn_klines(sim: SimHandle, weight: int) -> list[int]:
    """Spend ``weight`` of USDⓈ-M's budget from outside lake (klines of limit 1500 weigh 10)."""
    params = {"symbol": "BTCUSDT", "interval": "1m", "limit": "1500"}
    return asyncio.run(_burn(sim.base_url, "/fapi/v1/klines", params, weight // 10))


def position(sim: SimHandle) -> int:
    return sim.clock.now_ms() % MINUTE


# ----------------------------------------------------------------------------------------------
# end to end: processes sharing the budget
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_three_backfills_and_live_share_one_budget(tmp_path: Path) -> None:
    """Three backfills of USDⓈ-M trade types into three lakes and ``lake live`` (whose catch-up is
    REST) into a fourth, one state directory: no server minute over the limit, no 429/418, every
    lake equal to the truth, and once the others are done the last backfill fills the budget alone."""
    limit = 300
    with start_sim(
        speed=20.0, weight_limits={**LIMITS, "um": limit}, count_rejected_weight=True, ws_intermediate=False
    ) as sim:
        env = env_with(tmp_path / "state")
        logs = tmp_path / "logs"
        jobs = {"usdt_perp": 60, "usdt_deli": 8, "usdc_perp": 12}
        procs = [Proc(tt, backfill_cmd(sim, tmp_path / tt, tt, days), env, logs) for tt, days in jobs.items()]
        live_args = (
            "live",
            "--type",
            "usdt_perp",
            "--interval",
            "1m",
            "--history",
            "5000",
            "--duration",
            "5",
        )
        live = Proc("live", lake_cmd(sim, tmp_path / "live", *live_args), env, logs)
        watch(sim, [*procs, live])
        docs = {p.name: p.result() for p in procs}
        live_doc = live.result()

        got = assert_never_over(sim, "um", limit)
        for tt, doc in docs.items():
            assert doc["markets"]["um"]["status"] == {"200": doc["markets"]["um"]["requests"]}
            assert_equals_truth(sim, tmp_path / tt, doc)
        live_rest = live_doc["feeds"][0]["rest"]
        assert live_rest["requests"] > 10 and set(live_rest["status"]) == {"200"}  # it did use REST

        # Throughput: the run needed several windows; after the small jobs and live ended, the big
        # backfill alone filled the budget (it is not held to a share of it).
        total = sum(d["markets"]["um"]["weight"] for d in docs.values()) + live_rest["weight"]
        assert total > 4 * limit
        assert max(got.values()) >= 0.95 * budget_of(limit)
        perp = next(p for p in procs if p.name == "usdt_perp")
        assert perp.ended_ms is not None
        others_end = max(p.ended_ms or 0 for p in procs if p is not perp)  # (live's REST use is early)
        alone = [u for w, u in sorted(got.items()) if others_end < w and w + 2 * MINUTE <= perp.ended_ms]
        assert alone, (others_end, perp.ended_ms, sorted(got.items()))
        assert min(alone) >= 0.6 * budget_of(limit), (alone, sorted(got.items()))


@pytest.mark.slow
def test_two_spot_types_in_one_lake_share_its_default_state_dir(tmp_path: Path) -> None:
    """No LAKE_STATE_DIR: two backfills into one lake share ``<root>/.state``. The simulator's clock
    is years AHEAD of this machine's, so a process's first (unsynced) request lands in a window the
    shared state calls long past."""
    limit = 240
    with start_sim(
        speed=20.0,
        start="2031-06-01T00:00:00Z",
        weight_limits={**LIMITS, "spot": limit},
        count_rejected_weight=True,
    ) as sim:
        root = tmp_path / "lake"
        procs = [
            Proc(tt, backfill_cmd(sim, root, tt, 30), env_with(None), tmp_path / "logs")
            for tt in ("usdt_spot", "btc_spot")
        ]
        watch(sim, procs)
        docs = [p.result() for p in procs]
        got = assert_never_over(sim, "spot", limit)
        for doc in docs:
            assert_equals_truth(sim, root, doc)
        assert sum(d["markets"]["spot"]["weight"] for d in docs) > 2 * limit
        assert max(got.values()) >= 0.95 * budget_of(limit)
        assert len(list((root / ".state").glob("budget-spot-*.json"))) == 1


@pytest.mark.slow
def test_processes_joining_a_full_window_keep_out_of_it(tmp_path: Path) -> None:
    """Regression: a process's first request goes out before it has a server-clock sample, so it
    reserves in the windows of this machine's clock (a year after the simulator's here), and the
    clean-up of old windows then dropped every reservation of the server's current window: the
    processes already running refilled a full window (429s, then a 418 ban). Also: a joining process
    checked its first requests against the built-in limit (2400), not the one the others had read."""
    limit = 300
    with start_sim(speed=15.0, weight_limits={**LIMITS, "um": limit}, count_rejected_weight=True) as sim:
        env = env_with(tmp_path / "state")
        logs = tmp_path / "logs"
        first = Proc("usdt_perp", backfill_cmd(sim, tmp_path / "perp", "usdt_perp", 24), env, logs)
        # once the first process has filled a window, two more start (they arrive while it is full)
        until(lambda: sim.server.limiter.used("um") >= budget_of(limit) - 4, what="a full window")
        full_window = sim.clock.now_ms() // MINUTE
        late = [
            Proc("usdt_deli", backfill_cmd(sim, tmp_path / "deli", "usdt_deli", 3), env, logs),
            Proc("usdc_perp", backfill_cmd(sim, tmp_path / "usdc", "usdc_perp", 3), env, logs),
        ]
        watch(sim, [first, *late])
        docs = {p.name: p.result() for p in [first, *late]}
        got = assert_never_over(sim, "um", limit)
        assert min(p.ended_ms or 0 for p in [first, *late]) // MINUTE > full_window  # they overlapped it
        assert_equals_truth(sim, tmp_path / "perp", docs["usdt_perp"])
        assert_equals_truth(sim, tmp_path / "deli", docs["usdt_deli"])
        assert_equals_truth(sim, tmp_path / "usdc", docs["usdc_perp"])
        assert len(got) >= 3


@pytest.mark.slow
def test_weight_spent_by_another_program_is_left_to_it(tmp_path: Path) -> None:
    """Another program on this IP spent 200 of the 400 weight of the current minute before two lake
    processes start in it: they learn of it from the used-weight headers and stay under the limit."""
    limit = 400
    with start_sim(speed=10.0, weight_limits={**LIMITS, "um": limit}, count_rejected_weight=True) as sim:
        until(lambda: position(sim) < 20_000, timeout=10, what="the start of a window")
        burnt = burn_klines(sim, 200)
        assert burnt == [200] * 20
        window = sim.clock.now_ms() // MINUTE * MINUTE
        env = env_with(tmp_path / "state")
        procs = [
            Proc("usdt_perp", backfill_cmd(sim, tmp_path / "perp", "usdt_perp", 20), env, tmp_path / "logs"),
            Proc("usdt_deli", backfill_cmd(sim, tmp_path / "deli", "usdt_deli", 10), env, tmp_path / "logs"),
        ]
        watch(sim, procs)
        docs = [p.result() for p in procs]
        got = assert_never_over(sim, "um", limit)
        assert got[window] > 200 + 20  # the lake processes did start in that minute ...
        assert sorted(got)[0] == window and len(got) >= 3  # ... and needed more than it left them
        assert_equals_truth(sim, tmp_path / "perp", docs[0])
        assert_equals_truth(sim, tmp_path / "deli", docs[1])


@pytest.mark.slow
def test_a_429_and_a_418_pause_every_process(tmp_path: Path) -> None:
    """A 429 with Retry-After answered to one process stops the other's requests too until it has
    passed, and so does a ban (418) another program earned for the IP; one ban, waited out, and
    both lakes complete."""
    log = RequestLog()
    speed = 20.0
    with start_sim(speed=speed, weight_limits={**LIMITS, "um": 400}, extra_routes=log.install) as sim:
        env = env_with(tmp_path / "state")
        procs = [
            Proc("usdt_perp", backfill_cmd(sim, tmp_path / "perp", "usdt_perp", 40), env, tmp_path / "logs"),
            Proc("usdt_deli", backfill_cmd(sim, tmp_path / "deli", "usdt_deli", 20), env, tmp_path / "logs"),
        ]
        until(lambda: sum(1 for e in log.lake() if e[1] == 200) >= 80, what="both running")
        sim.faults.update({"force_429": 1})
        until(lambda: any(st == 429 for _, st, _ in log.lake()), what="the forced 429")
        # a little later another program earns a ban for the IP: it sends on after its 429s
        until(lambda: sum(1 for e in log.lake() if e[1] == 200) >= 240, what="the run resumed")
        spam = asyncio.run(_burn(sim.base_url, "/fapi/v1/time", {}, 2000, stop_at=418))
        assert spam[-1] == 418
        watch(sim, procs)
        docs = [p.result() for p in procs]
        assert_equals_truth(sim, tmp_path / "perp", docs[0])
        assert_equals_truth(sim, tmp_path / "deli", docs[1])

        lake = log.lake()
        in_flight_ms = 0.5 * speed * 1000  # requests sent before the answer came back may still land
        t429 = next(at for at, st, _ in lake if st == 429)
        # its Retry-After: the rest of the window (rounded up to whole seconds), the pause at least that
        pause_end = (t429 // MINUTE + 1) * MINUTE
        during = [e for e in lake if t429 + in_flight_ms < e[0] < pause_end]
        assert during == [], during[:5]
        bans = [e for e in log.entries if e[2] == 418]
        until_ms = {int(b[3].split("banned until ")[1].split(".")[0]) for b in bans}
        assert len(until_ms) == 1, until_ms  # one ban: nothing sent into it earned a longer one
        (ban_end,) = until_ms
        first_418 = min(e[0] for e in lake if e[1] == 418) if any(e[1] == 418 for e in lake) else None
        start = first_418 if first_418 is not None else min(b[0] for b in bans)
        during_ban = [e for e in lake if start + in_flight_ms < e[0] < ban_end]
        assert during_ban == [], during_ban[:5]
        assert any(e[0] >= ban_end and e[1] == 200 for e in lake)  # and they resumed after it


@pytest.mark.slow
def test_the_state_of_a_killed_process_is_honoured_and_a_damaged_one_survived(tmp_path: Path) -> None:
    """A backfill SIGKILLed in a full window leaves its reservations in the state file: the two
    processes started at once (one resuming its lake) keep out of that window. Then the state file
    is damaged (parsable, but not lake's shape; absurd pause; torn): the next runs neither crash
    nor wait for ever."""
    limit = 300
    with start_sim(speed=15.0, weight_limits={**LIMITS, "um": limit}, count_rejected_weight=True) as sim:
        state = tmp_path / "state"
        env = env_with(state)
        logs = tmp_path / "logs"
        perp = backfill_cmd(sim, tmp_path / "perp", "usdt_perp", 24)
        victim = Proc("victim", perp, env, logs)
        until(lambda: sim.server.limiter.used("um") >= budget_of(limit) - 4, what="a full window")
        victim.p.send_signal(signal.SIGKILL)
        victim.p.communicate(timeout=10)
        resumed = Proc("resumed", perp, env, logs)
        other = Proc("other", backfill_cmd(sim, tmp_path / "deli", "usdt_deli", 5), env, logs)
        watch(sim, [resumed, other])
        docs = [resumed.result(), other.result()]
        assert_never_over(sim, "um", limit)
        assert_equals_truth(sim, tmp_path / "perp", docs[0])
        assert_equals_truth(sim, tmp_path / "deli", docs[1])

        path = budget_path(state, "um", sim.endpoints.rest["um"])
        assert path.exists()
        damaged = [
            json.dumps({"windows": None, "paused_until": 1e300, "limit": {"limit": "300"}}),
            json.dumps({"windows": {"not-a-window": 5, "1": "x"}, "paused_until": "soon"}),
            path.read_text() + '0}}"windows"',  # a torn rewrite
        ]
        for text in damaged:
            path.write_text(text)
            again = Proc("again", perp, env, logs)
            watch(sim, [again], timeout=60)
            assert again.result()["missing"] == []  # finished (the new minutes only)


@pytest.mark.slow
def test_a_read_only_state_dir_is_a_one_line_error() -> None:
    """The budget cannot be shared through a state dir lake may not write: a clear error before any
    request (not a silent budget of its own)."""
    base = Path(tempfile.mkdtemp(prefix="lake-ro-"))  # (pytest's tmp_path is private to root)
    state, root = base / "state", base / "lake"
    cmd_prefix: list[str] = []
    try:
        state.mkdir()
        root.mkdir()
        if os.geteuid() == 0:  # root writes anywhere: run the command as nobody
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv")
            cmd_prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
            os.chmod(base, 0o755)
            os.chmod(root, 0o777)
        os.chmod(state, 0o555)
        with start_sim() as sim:
            cmd = [*cmd_prefix, *backfill_cmd(sim, root, "usdt_perp", 1)]
            env = {**env_with(state), "PYTHONDONTWRITEBYTECODE": "1"}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
            assert res.returncode == 2, res.stderr
            lines = [ln for ln in res.stderr.splitlines() if "lake: error:" in ln]
            assert len(lines) == 1, res.stderr
            assert "permission denied" in lines[0] and str(state) in lines[0], res.stderr
            assert "Traceback" not in res.stderr
            assert sim.stats.rest["um"].requests == 0  # nothing sent that it could not account for
    finally:
        os.chmod(state, 0o755)
        shutil.rmtree(base)


# ----------------------------------------------------------------------------------------------
# the governor's parts behind those runs
# ----------------------------------------------------------------------------------------------


def _synced_clock(server_ms: float, speed: float = 1.0) -> ServerClock:
    clock = ServerClock(slack_s=0.0005)
    m0 = time.monotonic() - 0.5
    for i in range(4):
        m = m0 + i * 0.1
        clock.observe(m - 0.0002, m + 0.0002, server_ms + (m - m0) * 1000 * speed)
    return clock


async def test_an_unsynced_process_does_not_drop_the_reservations_of_the_server_window(
    tmp_path: Path,
) -> None:
    path = tmp_path / "budget.json"
    server_ms = time.time() * 1000 - 400 * 86_400_000  # the server's clock a year behind this machine's
    running = WeightGovernor("a", limit=100, reserve=0, clock=_synced_clock(server_ms), state_file=path)
    permits = [await running.acquire(10) for _ in range(10)]
    window = permits[0].windows[0]
    assert running.reserved(window) == 100
    joining = WeightGovernor("b", limit=100, reserve=0, clock=ServerClock(), state_file=path)
    await joining.acquire(1)  # its first request: no clock sample yet, the local clock's windows
    assert running.reserved(window) == 100
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(running.acquire(1), 0.3)
    running.close()
    joining.close()


def test_a_rate_measured_on_a_short_baseline_that_rules_out_real_time_is_taken() -> None:
    # two samples 0.2 s apart with 30 ms round trips: too short a baseline for a 10% rate error, but
    # 20x (a simulator's clock) is no real-time clock either: keeping rate 1 put every window wrong
    clock = ServerClock()
    m = time.monotonic() - 1.0
    clock.observe(m, m + 0.030, 1_700_000_000_000)
    clock.observe(m + 0.2, m + 0.230, 1_700_000_000_000 + 0.2 * 20_000)
    assert clock.rate == pytest.approx(20.0, rel=0.2)
    # and the same baseline on a real-time server still reads as real time
    real = ServerClock()
    real.observe(m, m + 0.030, 1_700_000_000_000)
    real.observe(m + 0.2, m + 0.230, 1_700_000_000_200)
    assert real.rate == 1.0


def test_samples_off_the_prior_rate_measure_it_rather_than_restart_the_fit() -> None:
    # 150 ms round trips, samples 0.35 s apart, a 20x server clock: each sample is seconds off what
    # real time predicts. Taken as clock jumps (the fit restarted from each), the rate was never
    # measured; taken as what they are, a few samples measure it.
    clock = ServerClock()
    m0 = time.monotonic() - 5.0
    for i in range(8):
        m = m0 + i * 0.35
        clock.observe(m, m + 0.15, 1_700_000_000_000 + (m + 0.075 - m0) * 20_000)
    assert clock.jumps == 0
    assert clock.rate == pytest.approx(20.0, rel=0.1)


def test_a_new_process_starts_from_the_limit_the_others_use(tmp_path: Path) -> None:
    path = tmp_path / "budget.json"
    first = WeightGovernor("a", limit=2400, state_file=path)
    first.set_limit(300)  # read from exchangeInfo
    joining = WeightGovernor("b", limit=2400, state_file=path)  # the built-in default
    assert joining.limit == 300 and joining.budget == budget_of(300)
    first.close()
    joining.close()


@pytest.mark.parametrize(
    "text",
    [
        '{"windows": null, "paused_until": 0}',
        '{"windows": [], "paused_until": 0}',
        '{"windows": {"abc": 5, "1": "x"}, "paused_until": 0}',
        '{"windows": {}, "paused_until": "soon"}',
        '{"windows": {}, "paused_until": null}',
        '{"windows": {}, "paused_until": 1e300}',
        '{"windows": {}, "paused_until": Infinity}',
        '{"windows": {}, "enforced_limit": {"limit": 50, "window_ms": 60000, "at": "y"}}',
    ],
)
async def test_a_damaged_state_file_neither_fails_nor_blocks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "budget.json"
    path.write_text(text)
    gov = WeightGovernor("t", limit=100, clock=_synced_clock(1_700_000_010_000), state_file=path)
    gov.set_limit(100)
    permit = await asyncio.wait_for(gov.acquire(1), 2)
    assert gov.reserved(permit.windows[0]) == 1
    assert gov.limit == 100
    gov.close()


async def test_a_joining_client_waits_for_a_full_window_at_the_servers_pace(tmp_path: Path) -> None:
    """A client started while the others have filled the window takes its clock's rate from them
    for its second calibration sample: with one sample of its own it took a simulator running 20x
    for real time and waited for the window as if it lasted a real minute."""
    limit = 300
    async with sim_server(speed=20.0, weight_limits={**LIMITS, "um": limit}) as sim:
        running = RestClient("um", endpoints=sim.endpoints, state_dir=tmp_path, calibrate_s=0.1)
        await running.start()
        await running.exchange_info()
        # fill a window early in it
        if sim.clock.now_ms() % MINUTE > 15_000:
            await asyncio.sleep(sim.clock.real_seconds(MINUTE - sim.clock.now_ms() % MINUTE) + 0.05)
        t0 = sim.clock.now_ms() - 10 * 86_400_000
        while running.governor.used_now() + 2 <= running.governor.budget:
            await running.klines("BTCUSDT", "1m", start_ms=t0, limit=499)
        gov = running.governor
        gov.charge(gov.budget - gov.reserved())  # (the rest of the budget, reserved by "another process")
        full = sim.clock.now_ms() // MINUTE
        joining = RestClient("um", endpoints=sim.endpoints, state_dir=tmp_path, calibrate_s=0.1)
        await asyncio.wait_for(joining.start(), 15)  # the window ends within 3 s real
        assert sim.clock.now_ms() // MINUTE > full  # (it did wait for the window's end)
        assert sim.stats.status_count("um", 429) == 0 and sim.stats.status_count("um", 418) == 0
        await joining.close()
        await running.close()


async def test_slow_round_trips_do_not_leave_a_fast_server_clock_taken_for_real_time(tmp_path: Path) -> None:
    """Time answers 150 ms slow (a loaded machine): two calibration samples 0.2 s apart cannot tell
    a 20x clock from real time, and the client took real time (every window misplaced, more each
    second, and no re-sync for 30 s); it now lengthens the baseline until the rate is measured."""

    def slow_time(app: web.Application, market: SimMarket, clock: VirtualClock) -> None:
        @web.middleware
        async def delay(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.endswith("/time"):
                await asyncio.sleep(0.15)
            return await handler(request)

        app.middlewares.append(delay)

    async with sim_server(speed=20.0, extra_routes=slow_time) as sim:
        client = RestClient("um", endpoints=sim.endpoints, state_dir=tmp_path, calibrate_s=0.2)
        await client.start()
        try:
            assert client.clock.rate == pytest.approx(20.0, rel=0.15)
        finally:
            await client.close()
