"""The one-pass resampler against the seed's pandas code and a plain Binance-rule loop."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.errors import DataError, ValidationError
from lake.transform.offsets import format_offset, offset_plan, parse_duration_ms, resample_offsets
from tests.transform.helpers import T0_MS, assert_bins_equal, random_candles
from tests.transform.reference import binance_resample, seed_resample

PAIRS = [("1h", "5m"), ("4h", "1h"), ("1d", "1h"), ("15m", "5m"), ("1w", "1d"), ("3d", "1d")]


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    method=st.sampled_from(["seed", "binance"]),
    seed=st.integers(0, 2**32 - 1),
    symbols=st.integers(1, 3),
    start_slot=st.integers(0, 40),
    groups=st.integers(0, 5),
    hole_rate=st.sampled_from([0.0, 0.05, 0.3]),
    zero_rate=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_matches_reference(
    pair: tuple[str, str],
    method: str,
    seed: int,
    symbols: int,
    start_slot: int,
    groups: int,
    hole_rate: float,
    zero_rate: float,
) -> None:
    plan = offset_plan(*pair, method=method)
    b, n = plan.base_ms, plan.n
    frames = []
    for i in range(symbols):
        count = groups * n + (seed >> i) % (2 * n)
        df = random_candles(
            seed + i, b, count, start_ms=T0_MS + start_slot * b, hole_rate=hole_rate, zero_rate=zero_rate
        )
        frames.append(df.with_columns(pl.lit(f"S{i}USDT").alias("symbol")))
    base = pl.concat(frames)
    got = resample_offsets(base.sample(fraction=1.0, shuffle=True, seed=seed), plan)
    ref = seed_resample if method == "seed" else binance_resample
    for i in range(symbols):
        one = base.filter(pl.col("symbol") == f"S{i}USDT").drop("symbol")
        for k in plan.offsets:
            mine = got.filter((pl.col("symbol") == f"S{i}USDT") & (pl.col("offset") == plan.name(k)))
            assert_bins_equal(mine, ref(one, plan.target_ms, b, k))


def test_binance_method_on_zero_volume_candles() -> None:
    """Hand-made 15m bin from 5m candles: zero-volume candles sit at the previous close."""
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = [
        # open   high   low    close  volume
        (10.0, 10.0, 10.0, 10.0, 0.0),  # flat at the previous close, no trade
        (10.5, 12.0, 10.2, 11.0, 3.0),
        (11.0, 11.0, 11.0, 11.0, 0.0),
        # next bin: nothing traded at all
        (11.0, 11.0, 11.0, 11.0, 0.0),
        (11.0, 11.0, 11.0, 11.0, 0.0),
        (11.0, 11.0, 11.0, 11.0, 0.0),
        # a bin whose low would come from a zero-volume candle under the seed rule
        (9.0, 9.0, 9.0, 9.0, 0.0),
        (9.5, 9.8, 9.4, 9.6, 2.0),
        (9.6, 9.9, 9.5, 9.7, 1.0),
    ]
    df = pl.DataFrame(
        {
            "candle_begin_time": [t0 + dt.timedelta(minutes=5 * i) for i in range(len(rows))],
            "open": [r[0] for r in rows],
            "high": [r[1] for r in rows],
            "low": [r[2] for r in rows],
            "close": [r[3] for r in rows],
            "volume": [r[4] for r in rows],
            "quote_volume": [r[4] * 10 for r in rows],
            "trade_num": [int(r[4]) for r in rows],
            "taker_buy_base_asset_volume": [r[4] / 2 for r in rows],
            "taker_buy_quote_asset_volume": [r[4] * 5 for r in rows],
        }
    ).with_columns(pl.col("candle_begin_time").dt.cast_time_unit("ms"))
    binance = resample_offsets(df, offset_plan("15m", "5m", "0m", method="binance"))
    seed = resample_offsets(df, offset_plan("15m", "5m", "0m"))
    ohlc = ["open", "high", "low", "close"]
    assert binance.select(ohlc).rows() == [(10.5, 12.0, 10.2, 11.0), (11.0,) * 4, (9.5, 9.9, 9.4, 9.7)]
    assert seed.select(ohlc).rows() == [(10.0, 12.0, 10.0, 11.0), (11.0,) * 4, (9.0, 9.9, 9.0, 9.7)]
    assert binance["volume"].to_list() == seed["volume"].to_list() == [3.0, 0.0, 3.0]
    assert binance["n_base"].to_list() == [3, 3, 3]


def test_offset_5m_bin_spans_two_offset0_groups() -> None:
    """1h at offset 55m starting 00:55 holds 00:55 … 01:50 (tail of one hour, head of the next)."""
    df = random_candles(1, 300_000, 48, hole_rate=0.0)
    out = resample_offsets(df, offset_plan("1h", "5m", "55m"))
    first = out.row(0, named=True)
    assert first["candle_begin_time"] == dt.datetime(2024, 1, 1, 0, 55, tzinfo=dt.UTC)
    part = df.slice(11, 12)
    assert first["open"] == part["open"][0] and first["close"] == part["close"][-1]
    assert first["high"] == part["high"].max() and first["trade_num"] == part["trade_num"].sum()
    assert out.height == 3  # 00:55, 01:55, 02:55 … the bin at 03:55 would need 04:50


def test_interior_holes_kept_edges_dropped() -> None:
    df = random_candles(2, 300_000, 24, hole_rate=0.0)
    times = df["candle_begin_time"]
    holed = df.filter(pl.col("candle_begin_time") != times[5])  # interior of hour 0
    out = resample_offsets(holed, offset_plan("1h", "5m", "0m,5m,30m"))
    got = {
        (r["offset"], r["candle_begin_time"].hour, r["candle_begin_time"].minute, r["n_base"])
        for r in out.to_dicts()
    }
    # 0m: hour 0 kept with 11 candles (interior hole), hour 1 complete.
    # 5m: 00:05 kept with 11 candles (its hole at 00:25 is interior); 01:05 needs 02:00, absent.
    # 30m: 00:30 kept with 12 candles.
    assert got == {("0m", 0, 0, 11), ("0m", 1, 0, 12), ("5m", 0, 5, 11), ("30m", 0, 30, 12)}
    edge = df.filter(pl.col("candle_begin_time") != times[0])
    out = resample_offsets(edge, offset_plan("1h", "5m", "0m"))
    assert out["candle_begin_time"].dt.hour().to_list() == [1]


@pytest.mark.parametrize(
    ("target", "base", "n"),
    [("1h", "5m", 12), ("4h", "1h", 4), ("1d", "1h", 24), ("15m", "5m", 3), ("1w", "1d", 7), ("3d", "1d", 3)],
)
def test_offset_counts(target: str, base: str, n: int) -> None:
    plan = offset_plan(target, base)
    assert plan.n == n and len(plan.names) == n and plan.names[0][0] == "0"


def test_offset_names() -> None:
    assert offset_plan("1h", "5m").names == [f"{5 * i}m" for i in range(12)]
    assert offset_plan("1d", "1h").names[:3] == ["0h", "1h", "2h"]
    assert offset_plan("4h", "15m", "75m").names == ["1h15m"]
    assert format_offset(0) == "0m" and parse_duration_ms("1h15m") == 75 * 60_000
    assert offset_plan("1h", "5m", "0m, 15m").offsets == (0, 3)


@pytest.mark.parametrize(
    ("target", "base", "offsets", "message"),
    [
        ("1h", "7m", "all", "unknown interval"),
        ("1h", "1h", "all", "whole multiple"),
        ("1h", "4h", "all", "whole multiple"),
        ("1d", "5m", "all", None),
        ("3d", "1w", "all", "whole multiple"),
        ("1M", "1d", "all", "1M"),
        ("1h", "5m", "7m", "multiple of 5m"),
        ("1h", "5m", "1h", "below 1h"),
        ("1h", "5m", "5x", "invalid offset"),
        ("1h", "5m", "", "invalid offset"),
    ],
)
def test_invalid_combinations(target: str, base: str, offsets: str, message: str | None) -> None:
    if message is None:
        assert offset_plan(target, base, offsets).n == 288
        return
    with pytest.raises(ValidationError, match=message):
        offset_plan(target, base, offsets)
    with pytest.raises(ValidationError, match="method"):
        offset_plan("1h", "5m", method="pandas")


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    method=st.sampled_from(["seed", "binance"]),
    seed=st.integers(0, 2**32 - 1),
    runs=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 30), st.floats(0.001, 0.999)), max_size=4),
)
def test_off_grid_candles_follow_the_seed_rule(
    pair: tuple[str, str], method: str, seed: int, runs: list[tuple[int, int, float]]
) -> None:
    """Runs of candles opening off the base grid (Binance's 2018 hh:mm:14.789 opens) are resampled by
    the seed's rule itself: a bin is kept when its last candle's end minus its first candle's open is
    at least T, and opens at its first candle. A second symbol on the grid is resampled alongside."""
    plan = offset_plan(*pair, method=method)
    b, n = plan.base_ms, plan.n
    df = random_candles(seed, b, 4 * n + 7, hole_rate=0.1)
    shift = np.zeros(df.height, dtype=np.int64)
    for first, length, frac in runs:
        shift[first : first + length] = max(1, int(frac * b))  # within the slot: order and uniqueness kept
    odd = df.with_columns(pl.col("candle_begin_time") + pl.duration(milliseconds=pl.Series(shift)))
    base = pl.concat([
        odd.with_columns(pl.lit("ODDUSDT").alias("symbol")),
        random_candles(seed + 1, b, 3 * n, hole_rate=0.1).with_columns(pl.lit("GRIDUSDT").alias("symbol")),
    ])  # fmt: skip
    got = resample_offsets(base, plan)
    ref = seed_resample if method == "seed" else binance_resample
    for sym in ("ODDUSDT", "GRIDUSDT"):
        one = base.filter(pl.col("symbol") == sym).drop("symbol")
        for k in plan.offsets:
            mine = got.filter((pl.col("symbol") == sym) & (pl.col("offset") == plan.name(k)))
            assert_bins_equal(mine, ref(one, plan.target_ms, b, k))


def test_off_grid_bin_kept_or_dropped_by_its_span() -> None:
    """1h from 5m. Hour 0 starts 14.789 s late and ends on the grid: dropped (60 min − 14.789 s). Hour 1
    is shifted by 14.789 s throughout: its span is a full hour, so it is kept and opens at 01:00:14.789.
    Hour 2 is on the grid."""
    df = random_candles(7, 300_000, 36, hole_rate=0.0)
    i = pl.int_range(pl.len())
    late = (i == 0) | ((i >= 12) & (i < 24))
    df = df.with_columns(
        pl.when(late).then(pl.col("candle_begin_time") + dt.timedelta(milliseconds=14_789))
        .otherwise(pl.col("candle_begin_time"))
    )  # fmt: skip
    out = resample_offsets(df, offset_plan("1h", "5m", offsets=["0m"]))
    t0 = dt.datetime.fromtimestamp(T0_MS / 1000, dt.UTC)
    assert out["candle_begin_time"].to_list() == [
        t0 + dt.timedelta(hours=1, milliseconds=14_789),
        t0 + dt.timedelta(hours=2),
    ]
    assert out["n_base"].to_list() == [12, 12]
    assert out["open"].to_list() == [df["open"][12], df["open"][24]]
    assert out["volume"][0] == pytest.approx(df["volume"][12:24].sum(), rel=1e-12)


def test_duplicate_rows_are_errors() -> None:
    df = random_candles(3, 300_000, 12, hole_rate=0.0)
    with pytest.raises(DataError, match="duplicate"):
        resample_offsets(pl.concat([df, df.head(1)]), offset_plan("1h", "5m"))


def test_empty_input() -> None:
    out = resample_offsets(random_candles(4, 300_000, 0), offset_plan("1h", "5m"))
    assert out.height == 0 and out.columns[:3] == ["symbol", "offset", "candle_begin_time"]
