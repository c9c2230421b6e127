"""``--method binance`` keeps the bins Binance keeps: an hour cut by a maintenance window, a listing or
a delisting is built from the candles it has when the lake recorded the rest of its slots as
confirmed empty (``_meta/empty``), and only then: a slot merely missing still drops the bin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.server import SimHandle
from lake.sim.testing import TEST_START, start_sim
from lake.store.klines import scan_klines, write_klines
from lake.store.meta import EmptyRange, add_empty_ranges, clear_empty_ranges, read_empty_ranges
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.offsets import offset_plan, resample_offsets
from tests.transform.helpers import T0_MS, assert_bins_equal, missing_runs, random_candles
from tests.transform.reference import binance_resample

B = 300_000  # 5m
H = 3_600_000
DAY = 288


def _opens(df: pl.DataFrame) -> list[int]:
    return df["candle_begin_time"].dt.epoch("ms").to_list()


@pytest.mark.parametrize(("target", "base"), [("1h", "5m"), ("15m", "5m"), ("4h", "1h"), ("1d", "1h")])
@pytest.mark.parametrize("seed", range(6))
def test_all_offsets_equal_the_reference_loop(target: str, base: str, seed: int) -> None:
    plan = offset_plan(target, base, "all", "binance")
    b_ms, t_ms = plan.base_ms, plan.target_ms
    rng = np.random.default_rng(seed)
    frames, empty = [], {}
    for i, sym in enumerate(["AUSDT", "BUSDT", "CUSDT"]):
        count = int(3 * MS_PER_DAY // b_ms)
        df = random_candles(seed * 10 + i, b_ms, count, hole_rate=0.25, zero_rate=0.3).with_columns(
            symbol=pl.lit(sym)
        )
        runs = missing_runs(_opens(df), T0_MS, T0_MS + count * b_ms, b_ms)
        # some holes confirmed (maintenance), others not (lost candles); before the first candle a
        # listing, after the last one a delisting, each confirmed or not
        chosen = [r for r in runs if rng.random() < 0.6]
        if rng.random() < 0.7:
            chosen.append((T0_MS - 5 * t_ms, T0_MS))
        if rng.random() < 0.7:
            chosen.append((T0_MS + count * b_ms, T0_MS + count * b_ms + 3 * t_ms))
        empty[sym] = sorted(chosen)
        frames.append(df)
    base_df = pl.concat(frames)
    got = resample_offsets(base_df, plan, empty)
    assert got["n_base"].min() >= 1
    for sym in empty:
        one = base_df.filter(pl.col("symbol") == sym)
        for k, name in zip(plan.offsets, plan.names, strict=True):
            want = binance_resample(one, t_ms, b_ms, k, empty[sym])
            mine = got.filter((pl.col("symbol") == sym) & (pl.col("offset") == name))
            assert_bins_equal(mine, want)
    # the seed method ignores the ranges: the seed's rule is about the candles alone
    seed_plan = offset_plan(target, base, "all", "seed")
    assert resample_offsets(base_df, seed_plan, empty).equals(resample_offsets(base_df, seed_plan))


def test_a_cut_hour_by_example() -> None:
    """5m candles of 00:00–00:20, then a maintenance window, then 01:10–02:00."""
    opens = [0, 5, 10, 15, 20, 70, 75, 80, 85, 90, 95, 100, 105, 110, 115, 120]
    t = [T0_MS + m * 60_000 for m in opens]
    df = pl.DataFrame(
        {
            "candle_begin_time": pl.Series(t).cast(pl.Datetime("ms", "UTC")),
            "open": [float(i + 1) for i in range(len(t))],
            "high": [float(i + 10) for i in range(len(t))],
            "low": [float(i) for i in range(len(t))],
            "close": [float(i + 2) for i in range(len(t))],
            **{c: [1.0] * len(t) for c in ("volume", "quote_volume", "taker_buy_base_asset_volume")},
            "taker_buy_quote_asset_volume": [1.0] * len(t),
            "trade_num": [3] * len(t),
        }
    )
    window = [(T0_MS + 25 * 60_000, T0_MS + 70 * 60_000)]
    plan = offset_plan("1h", "5m", "0m,30m", "binance")
    # without the window recorded: 00:00 lacks 00:55, 01:00 lacks 01:00, 00:30 lacks 00:30
    assert resample_offsets(df, plan).height == 0
    got = resample_offsets(df, plan, {"": window}).sort("offset", "candle_begin_time")
    rows = got.select("offset", pl.col("candle_begin_time").dt.strftime("%H:%M"), "open", "close", "n_base")
    assert rows.rows() == [
        ("0m", "00:00", 1.0, 6.0, 5),  # 00:00's open, 00:20's close
        ("0m", "01:00", 6.0, 16.0, 10),  # 01:10's open, 01:55's close
        ("30m", "00:30", 6.0, 10.0, 4),  # 01:10 … 01:25; 01:30 is not kept (02:25 is not held)
    ]
    assert got["volume"].to_list() == [5.0, 10.0, 4.0]  # the confirmed slots add nothing
    assert got["high"].to_list() == [14.0, 24.0, 18.0]
    assert got["low"].to_list() == [0.0, 5.0, 5.0]


# -- the build: incremental runs equal a fresh computation -----------------------------------------


def _expected(root: Path, symbols: list[str]) -> pl.DataFrame:
    base = scan_klines(root, "usdt_perp", "5m", symbols).collect()
    empty = {
        s: [(r.start_ms, r.end_ms) for r in read_empty_ranges(root, "usdt_perp", "5m", s)] for s in symbols
    }
    out = resample_offsets(base, offset_plan("1h", "5m", "all", "binance"), empty)
    return out.sort("symbol", "offset", "candle_begin_time")


def _assert_table(root: Path, symbols: list[str]) -> None:
    got = scan_offsets(root, "usdt_perp", "1h").collect().sort("symbol", "offset", "candle_begin_time")
    want = _expected(root, symbols)
    assert (
        got.select("symbol", "offset", "candle_begin_time").rows()
        == want.select("symbol", "offset", "candle_begin_time").rows()
    )
    assert_bins_equal(got, want)


def _day(seed: int, day: int, hole_rate: float = 0.05) -> pl.DataFrame:
    return random_candles(seed, B, DAY, start_ms=T0_MS + day * DAY * B, hole_rate=hole_rate)


def test_confirmed_later_then_forgotten(tmp_path: Path) -> None:
    """Ranges recorded after a build (an audit confirming a maintenance window) recompute the bins
    they complete; ranges forgotten (``--recheck``) remove them again."""
    root = tmp_path
    df = pl.concat([_day(1, 0, 0.0), _day(2, 1, 0.0)])
    t = pl.col("candle_begin_time").dt.epoch("ms")
    window = (T0_MS + 30 * H + 25 * 60_000, T0_MS + 33 * H + 40 * 60_000)  # day 1, 06:25–09:40
    write_klines(root, "usdt_perp", "5m", "AUSDT", df.filter((t < window[0]) | (t >= window[1])))
    build_offsets(root, "usdt_perp", "1h", method="binance")
    before = scan_offsets(root, "usdt_perp", "1h").collect()
    _assert_table(root, ["AUSDT"])
    add_empty_ranges(root, "usdt_perp", "5m", "AUSDT", [EmptyRange(*window)])
    r = build_offsets(root, "usdt_perp", "1h", method="binance")
    assert r.bins > 0 and r.base_partitions_changed == 0
    _assert_table(root, ["AUSDT"])
    after = scan_offsets(root, "usdt_perp", "1h").collect()
    assert after.height > before.height  # the window's bins (10 at each offset: 06:00 … 09:55)
    t0 = pl.col("candle_begin_time").dt.epoch("ms")
    cut = after.filter((pl.col("offset") == "0m") & (t0 >= T0_MS + 30 * H) & (t0 <= T0_MS + 33 * H))
    assert cut.sort("candle_begin_time")["n_base"].to_list() == [5, 4]  # 06:00 and 09:00; 07, 08: none
    assert build_offsets(root, "usdt_perp", "1h", method="binance").written == 0  # idempotent
    again = build_offsets(root, "usdt_perp", "1h")  # the method defaults to the one built with
    assert again.method == "binance" and again.written == 0
    clear_empty_ranges(root, "usdt_perp", "5m", "AUSDT")
    build_offsets(root, "usdt_perp", "1h", method="binance")
    _assert_table(root, ["AUSDT"])
    gone = scan_offsets(root, "usdt_perp", "1h").collect()
    assert gone.sort("offset", "candle_begin_time").equals(before.sort("offset", "candle_begin_time"))


def test_a_delisting_then_a_relisting_appended(tmp_path: Path) -> None:
    """A bin completed past the data's end by confirmed-empty slots (a delisting at 14:20) is not
    written twice when candles are appended later (a relisting): the next run merges instead of
    adding a tail layer over it."""
    root = tmp_path
    t = pl.col("candle_begin_time").dt.epoch("ms")
    end = T0_MS + 14 * H + 25 * 60_000
    write_klines(root, "usdt_perp", "5m", "AUSDT", _day(3, 0, 0.0).filter(t < end))
    add_empty_ranges(root, "usdt_perp", "5m", "AUSDT", [EmptyRange(end, T0_MS + 16 * H)])
    build_offsets(root, "usdt_perp", "1h", method="binance")
    _assert_table(root, ["AUSDT"])
    last = scan_offsets(root, "usdt_perp", "1h").collect().filter(pl.col("offset") == "0m")
    assert last["candle_begin_time"].max().hour == 14  # type: ignore[union-attr]
    write_klines(root, "usdt_perp", "5m", "AUSDT", _day(3, 0, 0.0).filter(t >= T0_MS + 16 * H))
    build_offsets(root, "usdt_perp", "1h", method="binance")
    _assert_table(root, ["AUSDT"])
    add_empty_ranges(root, "usdt_perp", "5m", "AUSDT", [EmptyRange(T0_MS + DAY * B, T0_MS + DAY * B + H)])
    build_offsets(root, "usdt_perp", "1h", method="binance")  # past the end again: a tail run
    _assert_table(root, ["AUSDT"])


@pytest.mark.parametrize("late", ["candle", "confirmed"])
def test_a_bin_past_the_data_end_with_a_hole_inside(tmp_path: Path, late: str) -> None:
    """The data ends at 14:20 and 14:25–14:45 and 14:55–16:00 are confirmed empty: the 14:00 bin is
    kept with 14:50 a hole inside. A late candle at 14:50 (or 14:50 confirmed) changes that stored
    bin: the next run rewrites it in place, not once more in a tail layer after it."""
    root = tmp_path
    t = pl.col("candle_begin_time").dt.epoch("ms")
    day = _day(4, 0, 0.0)
    end = T0_MS + 14 * H + 25 * 60_000
    write_klines(root, "usdt_perp", "5m", "AUSDT", day.filter(t < end))
    ranges = [
        EmptyRange(end, T0_MS + 14 * H + 50 * 60_000),
        EmptyRange(T0_MS + 14 * H + 55 * 60_000, T0_MS + 16 * H),
    ]
    add_empty_ranges(root, "usdt_perp", "5m", "AUSDT", ranges)
    build_offsets(root, "usdt_perp", "1h", method="binance")
    _assert_table(root, ["AUSDT"])
    hole = T0_MS + 14 * H + 50 * 60_000
    if late == "candle":
        write_klines(root, "usdt_perp", "5m", "AUSDT", day.filter(t == hole))
    else:
        add_empty_ranges(root, "usdt_perp", "5m", "AUSDT", [EmptyRange(hole, hole + B)])
    build_offsets(root, "usdt_perp", "1h", method="binance")
    _assert_table(root, ["AUSDT"])


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "holes", "confirm", "confirm_end", "forget"]),
        st.integers(0, 3),
        st.integers(0, 99),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_STEPS)
def test_incremental_equals_a_fresh_computation(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]]
) -> None:
    root = tmp_path_factory.mktemp("lake")
    syms = ["AUSDT", "BUSDT"]
    for i, s in enumerate(syms):
        write_klines(root, "usdt_perp", "5m", s, _day(i * 100, 0, 0.2))
    build_offsets(root, "usdt_perp", "1h", method="binance")
    for op, day, seed in steps:
        sym = syms[seed % 2]
        if op == "write":
            write_klines(root, "usdt_perp", "5m", sym, _day(seed, day, 0.2))
        elif op == "holes":  # candles lost: a day written with more holes replaces its candles
            part = scan_klines(root, "usdt_perp", "5m", [sym]).collect()
            lo, hi = T0_MS + day * DAY * B, T0_MS + (day + 1) * DAY * B
            t = part["candle_begin_time"].dt.epoch("ms")
            if ((t >= lo) & (t < hi)).any():
                write_klines(root, "usdt_perp", "5m", sym, _day(seed, day, 0.5))
        elif op in ("confirm", "confirm_end"):
            part = scan_klines(root, "usdt_perp", "5m", [sym]).collect()
            last = int(part["candle_begin_time"].dt.epoch("ms").max()) + B  # type: ignore[arg-type]
            if op == "confirm_end":  # a delisting: everything after the last candle, for a while
                add_empty_ranges(root, "usdt_perp", "5m", sym, [EmptyRange(last, last + 7 * H + seed * B)])
            else:  # some of the holes of a day
                runs = missing_runs(
                    _opens(part), T0_MS + day * DAY * B, min(last, T0_MS + (day + 1) * DAY * B), B
                )
                picked = [EmptyRange(a, b) for j, (a, b) in enumerate(runs) if (j + seed) % 3]
                add_empty_ranges(root, "usdt_perp", "5m", sym, picked)
        elif op == "forget":
            clear_empty_ranges(root, "usdt_perp", "5m", sym)
        build_offsets(root, "usdt_perp", "1h", method="binance")
        _assert_table(root, syms)


# -- against the simulator: a lake backfilled by lake's clients --------------------------------------

NOW = to_ms(TEST_START)  # 2025-03-15 12:00
LISTED = NOW - 2 * MS_PER_DAY + 40 * 60_000 - 12 * H  # 2025-03-13 00:40


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with start_sim() as handle:
        handle.market.list_symbol("um", "NEWUSDT", at=LISTED)
        yield handle


def _lake(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "LAKE_PROGRESS": "0"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res


@pytest.mark.parametrize("source", ["rest", "auto"])
def test_offset_zero_equals_binances_own_candles(sim: SimHandle, tmp_path: Path, source: str) -> None:
    """A maintenance window (2025-03-11 06:05–08:40 on USDⓈ-M) and a listing at 00:40: backfilled by
    ``lake backfill``, every 1h candle of the simulator (Binance's) in the backfilled span is built by
    ``--method binance`` at offset 0, exactly, and no other."""
    symbols = ["BTCUSDT", "NEWUSDT"]
    maint = [w for w in sim.market.awkward.maintenance["um"] if NOW - 6 * MS_PER_DAY <= w[0] < NOW]
    assert maint and maint[0][0] % H and maint[0][1] % H  # cuts an hour at both ends
    _lake(
        "backfill", "--source", source, "--type", "usdt_perp", "--interval", "5m", "--days", "6",
        "--symbols", ",".join(symbols), "--root", str(tmp_path), "--sim-url", sim.base_url,
    )  # fmt: skip
    res = _lake(
        "offsets", "--type", "usdt_perp", "--interval", "1h", "--base", "5m", "--method", "binance",
        "--root", str(tmp_path), "--json",
    )  # fmt: skip
    assert json.loads(res.stdout)["method"] == "binance"
    got = (
        scan_offsets(tmp_path, "usdt_perp", "1h", offsets=["0m"])
        .collect()
        .filter(pl.col("candle_begin_time").dt.epoch("ms") >= NOW - 6 * MS_PER_DAY + H)  # whole hours
        .sort("symbol", "candle_begin_time")
    )
    want = sim.market.truth("usdt_perp", "1h", symbols, NOW - 6 * MS_PER_DAY + H, NOW)
    assert got.height == want.height > 0
    exact = ["symbol", "candle_begin_time", "open", "high", "low", "close", "trade_num"]
    assert got.select(exact).equals(want.select(exact))
    rel = got.select((pl.col("volume") / want["volume"] - 1).abs().max()).item()
    assert rel is None or rel <= 1e-12
    # the cut hours are there, with the candles they have
    cut = got.filter(
        (pl.col("symbol") == "BTCUSDT")
        & pl.col("candle_begin_time").dt.epoch("ms").is_in([maint[0][0] // H * H, maint[0][1] // H * H])
    )
    assert cut["n_base"].to_list() == [(maint[0][0] % H) // B, 12 - (maint[0][1] % H) // B]
    listing = got.filter(pl.col("symbol") == "NEWUSDT").row(0, named=True)
    assert listing["candle_begin_time"].hour == 0 and listing["n_base"] == 4  # 00:40 … 00:55
