"""``--method binance`` with confirmed-empty slots (_meta/empty): edge cases.

* a recorded range holding stored candles (a stale record: the archive published candles for slots
  REST had answered empty) counts its slots as present around every candle in it, not only within T
  of its ends (the reference loop's rule);
* stand-ins only where a bin can hold a stored candle: ranges far from the rows at hand (the whole
  history of a 1s series whose last minutes are appended) add no rows;
* a series built for the first time (a new listing noted by ``lake live --offsets``) takes the
  table's method, so the next build of the whole table does not fail with 'pass --rebuild';
* incremental runs (appends, edits, deletions, ranges added, extended, forgotten, unaligned, stale,
  huge; folds; offsets subsets; month and year boundaries; 1h/15m/4h targets) equal a fresh
  computation, and ``scan_offsets`` holds every bin once.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, write_klines
from lake.store.meta import EmptyRange, add_empty_ranges, clear_empty_ranges, read_empty_ranges
from lake.store.paths import PartitionKey
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.manifest import load_manifest
from lake.transform.offsets import offset_plan, resample_offsets, with_confirmed_empty
from tests.transform.helpers import T0_MS, assert_bins_equal, missing_runs, random_candles
from tests.transform.reference import binance_resample

M = 60_000
H = 3_600_000
DAY_MS = 86_400_000


def _compare_with_reference(
    df: pl.DataFrame, plan_args: tuple[str, str], empty: list[tuple[int, int]]
) -> None:
    plan = offset_plan(*plan_args, "all", "binance")
    got = resample_offsets(df, plan, {"": empty})
    for k, name in zip(plan.offsets, plan.names, strict=True):
        want = binance_resample(df, plan.target_ms, plan.base_ms, k, empty)
        assert_bins_equal(got.filter(pl.col("offset") == name).drop("symbol", "offset"), want)


def test_a_stale_range_over_stored_candles_counts_around_each_of_them() -> None:
    """Day 1 of three is recorded empty, yet holds candles (with holes): each of its slots counts as
    present, also those far from the range's ends."""
    b = 300_000
    df = random_candles(1, b, 288 * 3, hole_rate=0.3)
    _compare_with_reference(df, ("1h", "5m"), [(T0_MS + DAY_MS, T0_MS + 2 * DAY_MS)])


_RANGES = st.lists(
    st.tuples(st.integers(-3 * 288, 3 * 288), st.integers(1, 400), st.integers(0, 299_999)),
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(
    ranges=_RANGES,
    seed=st.integers(0, 2**16),
    target=st.sampled_from([("1h", "5m"), ("15m", "5m"), ("4h", "1h")]),
)
def test_any_ranges_equal_the_reference_loop(
    ranges: list[tuple[int, int, int]], seed: int, target: tuple[str, str]
) -> None:
    """Ranges anywhere: before, inside (stale), after the candles, long, off the base grid."""
    plan = offset_plan(*target, "all", "binance")
    b = plan.base_ms
    df = random_candles(seed, b, 3 * DAY_MS // b, hole_rate=0.4, zero_rate=0.3)
    empty = [(T0_MS + s * b + j, T0_MS + (s + n) * b + j) for s, n, j in ranges]
    _compare_with_reference(df, target, empty)


def test_ranges_far_from_the_rows_add_no_rows() -> None:
    """A 1s series: a minute of candles, and a day of one-second gaps recorded empty long before
    (what the live runner records for seconds without trades). The rows of a run appending that minute
    do not grow with the history's ranges."""
    plan = offset_plan("1h", "1s", "0s", "binance")
    t = T0_MS + np.arange(60, dtype=np.int64) * 1000
    sym = np.zeros(60, dtype=np.int64)
    values = {c: np.ones(60) for c in ("open", "high", "low", "close", "volume")}
    gaps = [(T0_MS - DAY_MS + 2000 * i, T0_MS - DAY_MS + 2000 * i + 1000) for i in range(40_000)]
    started = time.perf_counter()
    _, out_t, _, real = with_confirmed_empty(sym, t, values, plan, {0: [*gaps, (T0_MS - 10 * DAY_MS, T0_MS)]})
    assert time.perf_counter() - started < 2.0
    # only the hour before the minute can share a bin with it
    assert len(out_t) - len(t) <= plan.target_ms // 1000 + 1
    assert real.sum() == 60


def test_a_new_symbol_of_a_binance_table_is_built_binance(tmp_path: Path) -> None:
    """``lake live --offsets`` builds the symbols it noted without --method: a listing noted alone
    took seed, and the table's next build (both symbols, no --method) failed with 'pass --rebuild'."""
    b = 300_000
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", random_candles(1, b, 288))
    build_offsets(tmp_path, "usdt_perp", "1h", method="binance")
    write_klines(tmp_path, "usdt_perp", "5m", "NEWUSDT", random_candles(2, b, 288))
    r = build_offsets(tmp_path, "usdt_perp", "1h", base="5m", symbols=["NEWUSDT"], missing_ok=True)
    assert r.method == "binance"
    assert build_offsets(tmp_path, "usdt_perp", "1h").method == "binance"
    assert {s.method for s in load_manifest(LakeFS(tmp_path), "usdt_perp", "1h").values()} == {"binance"}


# -- incremental builds equal a fresh computation ----------------------------------------------------

# two days before a year's end: changes cross a month and a year boundary (15m files are monthly)
START = int(dt.datetime(2023, 12, 30, tzinfo=dt.UTC).timestamp() * 1000)
SYMS = ["AUSDT", "BUSDT"]


def _day(seed: int, day: int, b: int, hole_rate: float) -> pl.DataFrame:
    n = DAY_MS // b
    return random_candles(seed, b, n, start_ms=START + day * DAY_MS, hole_rate=hole_rate)


def _stored_rows(root: Path, base: str, sym: str) -> pl.DataFrame:
    return scan_klines(root, "usdt_perp", base, [sym]).collect()


def _delete_day(root: Path, base: str, sym: str, day: int) -> None:
    """Drop a day's rows behind the store's back (a deletion); an emptied partition goes away."""
    start = START + day * DAY_MS
    part = root / PartitionKey.for_candle("klines", "usdt_perp", base, sym, start).path
    if not part.exists():
        return
    df = pl.read_parquet(part)
    t = pl.col("candle_begin_time").dt.epoch("ms")
    kept = df.filter((t < start) | (t >= start + DAY_MS))
    if kept.height == 0:
        shutil.rmtree(part.parent)
    else:
        kept.write_parquet(part)


def _assert_fresh(root: Path, target: str, base: str, offsets: set[str]) -> None:
    got = scan_offsets(root, "usdt_perp", target).collect()
    key = ["symbol", "offset", "candle_begin_time"]
    assert got.select(key).is_duplicated().sum() == 0  # every bin once (period files + tail)
    got = got.sort(key)
    rows = scan_klines(root, "usdt_perp", base, SYMS).collect()
    empty = {s: [(r.start_ms, r.end_ms) for r in read_empty_ranges(root, "usdt_perp", base, s)] for s in SYMS}
    want = resample_offsets(rows, offset_plan(target, base, sorted(offsets), "binance"), empty).sort(key)
    assert got.select(key).rows() == want.select(key).rows()
    assert_bins_equal(got, want)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "write",
                "holes",
                "delete",
                "confirm",
                "confirm_end",
                "stale",
                "listing",
                "odd",
                "extend",
                "forget",
                "forget_part",
                "fold",
                "more_offsets",
            ]
        ),
        st.integers(0, 3),
        st.integers(0, 999),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_OPS, target=st.sampled_from([("1h", "5m"), ("15m", "5m"), ("4h", "1h")]))
def test_incremental_runs_equal_a_fresh_computation(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]], target: tuple[str, str]
) -> None:
    root = tmp_path_factory.mktemp("lake")
    interval, base = target
    plan = offset_plan(interval, base, "all", "binance")
    b = plan.base_ms
    offsets = set(plan.names[: max(1, len(plan.names) // 2)])
    for i, s in enumerate(SYMS):
        write_klines(root, "usdt_perp", base, s, _day(i * 100, 1, b, 0.2))
    build_offsets(root, "usdt_perp", interval, base=base, offsets=sorted(offsets), method="binance")
    for op, day, seed in steps:
        sym = SYMS[seed % 2]
        rows = _stored_rows(root, base, sym)
        times = rows["candle_begin_time"].dt.epoch("ms").to_list()
        last = max(times) + b if times else START + 2 * DAY_MS
        first = min(times) if times else START + DAY_MS
        fold = False
        if op == "write":
            write_klines(root, "usdt_perp", base, sym, _day(seed, day, b, 0.2))
        elif op == "holes":  # a day rewritten with more holes, then its missing slots partly lost
            if times:
                write_klines(root, "usdt_perp", base, sym, _day(seed, day, b, 0.0))
                _delete_day(root, base, sym, day)
                write_klines(root, "usdt_perp", base, sym, _day(seed, day, b, 0.5))
        elif op == "delete":
            _delete_day(root, base, sym, day)
        elif op == "confirm":  # some holes of a day confirmed
            runs = missing_runs(times, START + day * DAY_MS, min(last, START + (day + 1) * DAY_MS), b)
            picked = [EmptyRange(a, c) for j, (a, c) in enumerate(runs) if (j + seed) % 3]
            add_empty_ranges(root, "usdt_perp", base, sym, picked)
        elif op == "confirm_end":  # a delisting, from the last candle on for a while
            add_empty_ranges(root, "usdt_perp", base, sym, [EmptyRange(last, last + (seed % 9) * H + b)])
        elif op == "stale":  # a range over stored candles, not on the base grid
            a = START + day * DAY_MS + seed * 97_000
            add_empty_ranges(root, "usdt_perp", base, sym, [EmptyRange(a, a + (seed % 50 + 1) * 600_000)])
        elif op == "listing":  # years of nothing before the first candle
            add_empty_ranges(root, "usdt_perp", base, sym, [EmptyRange(first - 5 * 365 * DAY_MS, first)])
        elif op == "odd":  # a range off the grid just after the last candle
            add_empty_ranges(root, "usdt_perp", base, sym, [EmptyRange(last + 1 + seed, last + 2 * H + seed)])
        elif op == "extend":  # the last range grows (a later REST pass confirms more)
            got = read_empty_ranges(root, "usdt_perp", base, sym)
            if got:
                r = got[seed % len(got)]
                add_empty_ranges(
                    root, "usdt_perp", base, sym, [EmptyRange(r.end_ms, r.end_ms + (seed % 7 + 1) * b)]
                )
        elif op == "forget":  # --recheck
            clear_empty_ranges(root, "usdt_perp", base, sym)
        elif op == "forget_part":  # a backfill forgets the ranges inside what it fetches again
            got = read_empty_ranges(root, "usdt_perp", base, sym)
            clear_empty_ranges(root, "usdt_perp", base, sym)
            add_empty_ranges(root, "usdt_perp", base, sym, got[::2])
        elif op == "fold":
            fold = True
        elif op == "more_offsets":
            offsets.add(plan.names[seed % len(plan.names)])
        build_offsets(root, "usdt_perp", interval, base=base, offsets=sorted(offsets), fold=fold)
        _assert_fresh(root, interval, base, offsets)
    # a second run changes nothing
    assert build_offsets(root, "usdt_perp", interval, offsets=sorted(offsets)).written == 0


def test_live_offsets_build_a_new_listing_of_a_binance_table_binance(tmp_path: Path) -> None:
    """``lake live --offsets`` (``LiveOffsets``, no --method) on a binance table: a symbol noted alone,
    then all of them."""
    import asyncio

    from lake.live.offsets import LiveOffsets

    b = 300_000
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", random_candles(1, b, 288))
    build_offsets(tmp_path, "usdt_perp", "1h", method="binance")
    live = LiveOffsets(LakeFS(tmp_path), "usdt_perp", "5m", ["1h"])
    write_klines(tmp_path, "usdt_perp", "5m", "NEWUSDT", random_candles(2, b, 288))
    live.note(["NEWUSDT"])
    asyncio.run(live.build_pending())
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", random_candles(3, b, 288, start_ms=T0_MS + DAY_MS))
    live.note(["AUSDT", "NEWUSDT"])
    asyncio.run(live.build_pending())
    assert live.stats.errors == 0, live.stats.last_error
    assert {s.method for s in load_manifest(LakeFS(tmp_path), "usdt_perp", "1h").values()} == {"binance"}


# -- against the simulator: a delisting and a relisting, backfilled in two runs ----------------------


def test_a_delisting_and_a_relisting_equal_binances_candles(tmp_path: Path) -> None:
    """ETHUSDT delisted at 14:20 and relisted two days later at 09:35 (both cut an hour), backfilled
    over REST in two runs (the first ends inside the gap), built after each: offset 0 equals the
    simulator's own 1h candles."""
    import os
    import subprocess
    import sys

    from lake.sim.clock import to_ms
    from lake.sim.testing import TEST_START, start_sim

    now = to_ms(TEST_START)
    day0 = now // DAY_MS * DAY_MS - 6 * DAY_MS
    delist, relist = day0 + 2 * DAY_MS + 14 * H + 20 * M, day0 + 4 * DAY_MS + 9 * H + 35 * M

    def lake(*args: str) -> None:
        res = subprocess.run(
            [sys.executable, "-m", "lake.cli", *args, "--root", str(tmp_path)], capture_output=True,
            text=True, timeout=300, env={**os.environ, "LAKE_PROGRESS": "0"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")

    with start_sim() as sim:
        sim.market.delist_symbol("um", "ETHUSDT", at=delist)
        sim.market.list_symbol("um", "ETHUSDT", at=relist)
        common = ["--type", "usdt_perp", "--interval", "5m", "--symbols", "ETHUSDT", "--source", "rest"]
        common += ["--sim-url", sim.base_url]
        for end in (day0 + 3 * DAY_MS, now):
            lake("backfill", *common, "--start", iso(day0), "--end", iso(end))
            lake("offsets", "--type", "usdt_perp", "--interval", "1h", "--method", "binance", "--json")
        want = sim.market.truth("usdt_perp", "1h", ["ETHUSDT"], day0, now // H * H)
    got = (
        scan_offsets(tmp_path, "usdt_perp", "1h", offsets=["0m"])
        .collect()
        .filter(pl.col("candle_begin_time").dt.epoch("ms") < now // H * H)
        .sort("candle_begin_time")
    )
    exact = ["symbol", "candle_begin_time", "open", "high", "low", "close", "trade_num"]
    assert got.select(exact).equals(want.select(exact))
    cut = got.filter(pl.col("candle_begin_time").dt.epoch("ms").is_in([delist // H * H, relist // H * H]))
    assert cut["n_base"].to_list() == [4, 5]


def test_a_new_symbol_takes_the_tables_base_when_it_has_it(tmp_path: Path) -> None:
    # a table built from 1m while 5m is stored too: a symbol built for the first time without
    # --base took the coarsest stored interval (5m), not the table's
    for sym in ("AUSDT", "BUSDT"):
        for iv, b_ms, n in (("1m", 60_000, 1440), ("5m", 300_000, 288)):
            write_klines(tmp_path, "usdt_perp", iv, sym, random_candles(1, b_ms, n, hole_rate=0.0))
    assert build_offsets(tmp_path, "usdt_perp", "1h", base="1m", symbols=["AUSDT"]).base == "1m"
    assert build_offsets(tmp_path, "usdt_perp", "1h", symbols=["BUSDT"]).base == "1m"
