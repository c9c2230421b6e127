"""Two gaps closed together.

* The websocket stream cap learned from a refusal is kept across runs (a file of the state
  directory, per market and endpoint, forgotten after a day): the next ``lake live`` starts at it
  instead of being refused again until it re-learns it; a user-set cap wins, a damaged file is
  ignored with a warning.
* The offsets tail's visibility rule (``lake.transform.tail.resolve``) runs in O(n log n) of the
  tail files instead of O(n²), with the same results as the quadratic algorithm kept below as the
  reference (``bench.tail_resolve`` times both).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.live.runner import LiveConfig, LiveRunner, ws_cap_path
from lake.live.ws import CAP_MEMORY_TTL_S, CapMemory
from lake.settings import Settings
from lake.sim.testing import sim_server, test_config
from lake.transform.tail import TailState, resolve, version_ns

from . import test_live_stream_cap as stream_cap
from .helpers import M, assert_equals_truth, lake_frame, run_while, until
from .test_live_stream_cap import ASSUMED, _loads

TT = "usdt_perp"
# the stream-cap tests' fixture (lake assuming ASSUMED streams per um connection), shared
assumed_cap = stream_cap.assumed_cap
SERVER_CAP = 20  # what the simulator's um server allows


def _refusals(sim: Any) -> int:
    """Connections and SUBSCRIBEs the simulator refused for carrying too many streams."""
    ws = sim.stats.snapshot()["ws"]
    return int(ws.get("closed_stream_cap", 0)) + int(ws.get("refused_stream_cap", 0))


async def _run_until_live(
    sim: Any, root: Path, symbols: list[str], *, periods: int = 0, **settings_kw: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``lake live`` run of the um 1m feed: until every stream is on an open connection (and
    ``periods`` more periods are published after that), then stopped. Returns (summary, marks)."""
    runner = LiveRunner(
        Settings(root=str(root), sim_url=sim.base_url, **settings_kw),
        LiveConfig(trade_types=(TT,), intervals=("1m",), grace_s=20.0, history=3),
    )
    feed = runner.feeds[0]
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        try:
            await until(lambda: feed.pool is not None, 10)
            assert feed.pool is not None
            marks["start_cap"] = feed.pool.assumed_cap  # (the cap it was created with)
            pool = feed.pool
            await until(
                lambda: (
                    sum(_loads(sim)) == len(symbols)
                    and pool.plan.cap <= SERVER_CAP
                    and all(s.connected for s in pool.shards)
                ),
                10,
            )
            marks["loads"] = _loads(sim)
            if periods:
                marks["from"] = feed.iv.floor(feed.now_ms()) + M  # the first period wholly after
                await until(lambda: (feed.published or 0) >= marks["from"] + (periods - 1) * M, 15)
        finally:
            runner.stop("scenario over")

    summary = await run_while(runner, scenario(), 40)
    return summary, marks


# -- the learned stream cap across runs ------------------------------------------------------------


async def test_the_cap_learned_in_one_run_is_where_the_next_run_starts(
    tmp_path: Path, assumed_cap: int
) -> None:
    """Run 1 assumes 100 streams per connection, the server allows 20: refused a few times, it
    learns 11 or 12. Run 2 (same lake, same server) starts at that cap: not one connection or
    SUBSCRIBE refused, as many connections as that cap needs at once, and its first periods all come from the
    websocket and equal the truth. The file names the endpoint and the cap."""
    cfg = test_config(speed=60.0, n_symbols_by_market={"um": 125}, ws_stream_caps={"um": SERVER_CAP})
    async with sim_server(cfg) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        assert len(live) == 71
        first, marks1 = await _run_until_live(sim, tmp_path, live)
        learned = first["feeds"][0]["ws"]["cap"]
        refused_first = _refusals(sim)

        second, marks2 = await _run_until_live(sim, tmp_path, live, periods=2)
        refused_second = _refusals(sim) - refused_first
        wm = assert_equals_truth(sim, tmp_path, TT, "1m", live)
        url = sim.endpoints.ws["um"]
        path = ws_cap_path(Settings(root=str(tmp_path), sim_url=sim.base_url), "um")
    assert marks1["start_cap"] == ASSUMED and learned in (11, 12) and refused_first >= 2
    # the second run: the learned cap from the start, nothing refused, no cap alert
    assert refused_second == 0, (refused_first, refused_second, marks2, second["feeds"][0]["ws"])
    assert marks2["start_cap"] == learned == second["feeds"][0]["ws"]["cap"]
    assert second["feeds"][0]["ws"]["cap_refusals"] == 0
    loads = marks2["loads"]  # (planned once, balanced: run 1 may have split differently on the way)
    assert sum(loads) == len(live) and max(loads) <= learned and len(loads) == -(-len(live) // learned)
    assert not [k for k in second["alerts"]["by_key"] if k.startswith("ws-cap:")]
    after = lake_frame(tmp_path, TT, "1m").filter(pl.col("t").is_between(marks2["from"], wm))
    assert after.height >= 2 * len(live) and set(after["source"]) == {"ws"}
    # the file: the cap of the endpoint it was learned from
    entry = json.loads(path.read_text())["caps"][url]
    assert entry["cap"] == learned and entry["assumed"] == ASSUMED and "too many streams" in entry["said"]


@pytest.mark.parametrize("damage", ["garbage", "directory", "wrong shape"])
async def test_a_damaged_cap_file_is_ignored_with_a_warning(
    tmp_path: Path, assumed_cap: int, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A cap file that is not JSON, not a file or not lake's shape does not stop ``lake live``: a
    warning names it, the run starts at the assumed cap, learns the server's and stores the data;
    a file it can replace holds the newly learned cap afterwards."""
    caplog.set_level(logging.WARNING, logger="lake")
    cfg = test_config(speed=60.0, n_symbols_by_market={"um": 125}, ws_stream_caps={"um": SERVER_CAP})
    async with sim_server(cfg) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        path = ws_cap_path(Settings(root=str(tmp_path), sim_url=sim.base_url), "um")
        path.parent.mkdir(parents=True, exist_ok=True)
        if damage == "garbage":
            path.write_bytes(b"\x00{not json")
        elif damage == "directory":
            path.mkdir()
        else:
            path.write_text(json.dumps({"caps": {sim.endpoints.ws["um"]: {"cap": "seven", "at": "x"}}}))
        summary, marks = await _run_until_live(sim, tmp_path, live, periods=1)
        assert_equals_truth(sim, tmp_path, TT, "1m", live)
    learned = summary["feeds"][0]["ws"]["cap"]
    assert marks["start_cap"] == ASSUMED and learned <= SERVER_CAP
    said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert said and all(r.levelno == logging.WARNING for r in caplog.records if str(path) in r.getMessage())
    if damage == "directory":
        assert path.is_dir()  # (not ours to remove; the run went on without keeping the cap)
    else:
        assert json.loads(path.read_text())["caps"][sim.endpoints.ws["um"]]["cap"] == learned


def _runner(root: Path, **settings_kw: Any) -> LiveRunner:
    return LiveRunner(
        Settings(root=str(root), state_dir=str(root / "state"), **settings_kw),
        LiveConfig(trade_types=(TT,), intervals=("1m",)),
    )


def test_where_a_run_starts_learned_fresh_stale_other_endpoint_and_user_caps(
    tmp_path: Path, assumed_cap: int
) -> None:
    """The starting cap: min(assumed, learned) while the learned one is younger than a day and was
    learned from this very endpoint; a cap set in the settings wins over both (also above the
    assumed one: Binance may raise its cap before markets.py says so)."""
    url = "wss://fstream.binance.com/market"
    runner = _runner(tmp_path)
    path = ws_cap_path(runner.settings, "um")
    assert path.parent == tmp_path / "state" and path.name.startswith("budget-ws-cap-um-")
    mem = CapMemory(path)
    now = time.time()
    assert runner.start_cap("um") == ASSUMED  # nothing learned yet

    mem.remember(url, 12, assumed=ASSUMED, said="too many streams", now=now - 3600)
    assert runner.start_cap("um") == 12
    assert _runner(tmp_path, um_ws_stream_cap=64).start_cap("um") == 64
    assert _runner(tmp_path, ws_stream_cap=2048).start_cap("um") == 2048
    assert _runner(tmp_path, ws_stream_cap=30, um_ws_stream_cap=40).start_cap("um") == 40
    # another endpoint of the same service: its cap is not this one's
    assert _runner(tmp_path, um_ws_url="wss://fstream.binance.com").start_cap("um") == ASSUMED

    mem.remember(url, 12, assumed=ASSUMED, said="too many streams", now=now - CAP_MEMORY_TTL_S - 1)
    assert runner.start_cap("um") == ASSUMED  # a day old: Binance may have raised it since
    mem.remember(url, 150, assumed=200, said="too many streams", now=now)
    assert runner.start_cap("um") == ASSUMED  # never above what lake assumes
    mem.remember(url, 12, assumed=ASSUMED, said="too many streams", now=now + 3 * 3600)
    assert runner.start_cap("um") == ASSUMED  # written "in the future": not a time lake wrote


def test_the_cap_file_keeps_each_endpoint_and_drops_expired_entries(tmp_path: Path) -> None:
    path = tmp_path / "caps.json"
    mem = CapMemory(path)
    now = time.time()
    mem.remember("wss://a.example/market", 12, assumed=100, said="x", now=now - CAP_MEMORY_TTL_S - 5)
    mem.remember("wss://b.example", 30, assumed=100, said="y", now=now)
    mem.remember("wss://c.example", 40, assumed=100, said="z", now=now)
    doc = json.loads(path.read_text())
    assert set(doc["caps"]) == {"wss://b.example", "wss://c.example"}
    got = mem.recall("wss://b.example", now=now)
    assert got is not None and (got.cap, got.said) == (30, "y")
    assert mem.recall("wss://a.example/market", now=now) is None
    # no temp file left (the lock file stays: removing it would race with a process waiting on it)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.json", "caps.json.lock"]


# -- the offsets tail's visibility rule --------------------------------------------------------------


def resolve_reference(
    directory: str, names: list[str], metas: Sequence[Sequence[tuple[str, int | None]]], counts: list[int]
) -> TailState:
    """The visibility rule as ``lake.transform.tail.resolve`` applied it until 2026-11 (O(n²) in the
    files of a symbol: each row looks at every newer one). The reference for the O(n log n) one."""
    times = [version_ns(n) for n in names]
    by_symbol: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    for i, meta in enumerate(metas):
        for s, f in meta:
            markers, covers = by_symbol.setdefault(s, ([], []))
            if f is None:
                markers.append(i)
            else:
                covers.append((i, f))
    live: list[dict[str, tuple[int, int | None]]] = [{} for _ in names]
    killed: list[list[int | None]] = [[] for _ in names]
    starts: dict[str, int] = {}
    for s, (markers, covers) in by_symbol.items():
        last_marker = max(markers, default=-1)
        alive = [(i, f) for i, f in covers if i >= last_marker]
        cut: int | None = None
        for i, f in sorted(alive, reverse=True):
            if cut is None or cut > f:
                live[i][s] = (f, cut)
            cut = f if cut is None else min(cut, f)
        if cut is not None:
            starts[s] = cut
        for i, f in covers:
            killers = [j for j in markers if j > i] + [j for j, g in covers if j > i and g <= f]
            killed[i].append(min((times[j] for j in killers), default=None))
        for i in markers:
            newer = [j for j in markers if j > i]
            if newer:
                killed[i].append(times[min(newer)])
            elif not any(j < i for j, _ in covers):
                killed[i].append(times[i])
            else:
                killed[i].append(None)
    hidden: list[int | None] = []
    for i, ks in enumerate(killed):
        if not ks:
            hidden.append(times[i])
        elif any(k is None for k in ks):
            hidden.append(None)
        else:
            hidden.append(max(k for k in ks if k is not None))
    return TailState(directory, list(names), [list(m) for m in metas], list(counts), starts, live, hidden)


def tail_files(
    n_files: int, n_symbols: int, *, fold_every: int = 40, seed: int = 1
) -> tuple[list[str], list[list[tuple[str, int | None]]], list[int]]:
    """Coverage and marker rows of ``n_files`` tail files as incremental runs leave them: each run's
    layer covers most symbols from a start at or a little before the previous run's (recomputed
    bins), and every ``fold_every`` files a fold marks every symbol. Names oldest first."""
    rng = random.Random(seed)
    symbols = [f"S{k:04d}USDT" for k in range(n_symbols)]
    names: list[str] = []
    metas: list[list[tuple[str, int | None]]] = []
    t0 = 1_700_000_000_000
    for i in range(n_files):
        names.append(f"{1_800_000_000_000_000_000 + i * 1_000_000_000:020d}-1-{i:06x}.parquet")
        meta: list[tuple[str, int | None]] = []
        if i and i % fold_every == 0:
            meta += [(s, None) for s in symbols]
        day = t0 + i * 86_400_000
        meta += [(s, day - rng.randrange(0, 3) * 3_600_000) for s in symbols if rng.random() < 0.9]
        metas.append(meta)
    return names, metas, [len(m) * 10 for m in metas]


_SYMS = ["A", "B", "C", "D"]
_meta_rows = st.lists(
    st.tuples(st.sampled_from(_SYMS), st.one_of(st.none(), st.integers(0, 12))),  # None: a marker
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(
    metas=st.lists(_meta_rows, max_size=24),
    gaps=st.lists(st.integers(0, 2), min_size=24, max_size=24),
)
def test_resolve_equals_the_quadratic_reference(
    metas: list[list[tuple[str, int | None]]], gaps: list[int]
) -> None:
    """Any files (oldest first; equal version times too), each with any coverage and marker rows,
    several of one symbol in one file included: the same starts, live layers and hidden times."""
    ns = 1_800_000_000_000_000_000
    names = []
    for i in range(len(metas)):
        ns += gaps[i]
        names.append(f"{ns:020d}-1-{i:06x}.parquet")
    counts = [3 * len(m) for m in metas]
    got = resolve("d", names, metas, counts)
    want = resolve_reference("d", names, metas, counts)
    assert dataclasses.asdict(got) == dataclasses.asdict(want)


def test_resolve_equals_the_reference_on_runs_and_folds() -> None:
    names, metas, counts = tail_files(120, 30, fold_every=25)
    assert dataclasses.asdict(resolve("d", names, metas, counts)) == dataclasses.asdict(
        resolve_reference("d", names, metas, counts)
    )


def _learn_many(path: str, tag: int, n: int, start: Any) -> None:
    """One process keeping ``n`` caps of its own URLs once all are ready (a child of the test below)."""
    memory = CapMemory(Path(path))
    start.wait(60)
    for i in range(n):
        assert memory.remember(f"wss://p{tag}.example/{i}", 5 + i, assumed=ASSUMED, said="cap")


def test_processes_learning_at_once_lose_no_entry(tmp_path: Path) -> None:
    """Each ``remember`` reads the file, adds its entry and replaces the file: without a lock around
    that, two processes writing at once drop each other's entries."""
    import multiprocessing

    path = tmp_path / "caps.json"
    n = 40
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)  # all four write together, not one after another as they start
    procs = [ctx.Process(target=_learn_many, args=(str(path), tag, n, start)) for tag in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    caps = json.loads(path.read_text())["caps"]
    assert sorted(caps) == sorted(f"wss://p{tag}.example/{i}" for tag in range(4) for i in range(n))
    memory = CapMemory(path)
    assert [memory.recall(f"wss://p3.example/{i}").cap for i in (0, n - 1)] == [5, 5 + n - 1]  # type: ignore[union-attr]
