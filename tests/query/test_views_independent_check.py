"""Every view `lake.connect` registers, checked against an independent computation (issue 6's spec).

A lake is built the way a user builds one: `lake backfill` against the simulator (three trade types,
5m and 1h, maintenance windows recorded as confirmed-empty ranges, a symbol listed late, a relisted
one, a delisted one fetched by name, an illiquid one with zero-volume candles), plus random series of
other trade types and intervals written with `write_klines` (holes at the start, middle and end,
zero-volume runs, off-grid confirmed-empty ranges recorded with `add_empty_ranges`, a damaged
record), `lake offsets` (full builds, appended hours that go to the offsets tail, an edit that
folds), candles in `lake live`'s tail (overlapping the partitions and each other, one file compacted
long ago) and a reference table for `compare`.

The expected rows are computed here from the spec, in plain Python and pandas, from what was written
(partition files and JSON records read directly, tail rows as written), never through lake's readers:

* klines: partitions, a tail candle replacing the same partition candle (the later tail file wins),
  tail files compacted more than 10 s ago skipped;
* coverage (issue 2, sql/coverage.sql): per series first/last candle, count, the slots from the
  first to the last, and the holes between them, each slot of a hole an exchange slot when its open
  is inside a confirmed-empty range; `holes` counts the runs of missing (not exchange) slots;
* latest: the newest candle per series; segments: the BHDS rule as sql/segments.sql words it;
* offsets: the seed's `resample_symbol` (pandas resample, first/max/min/last/sum, a bin kept when
  it spans the whole target) at every offset;
* compare: the seed's metric, `pd.merge(reference, ours, how="left")` then
  `(ours / theirs - 1).abs().max()` per symbol × offset × column (pandas skips NaN); the view's
  documented choice that 0 = 0 is no error is kept;
* exchange_info, funding, empty_ranges, watermark: the files as written.
"""

# ruff: noqa: S608  (the SQL here is built from the views' fixed names and columns)

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import lake
from lake.cli import app
from lake.errors import ValidationError
from lake.live.watermark import write_watermark
from lake.query import VIEWS
from lake.sim.testing import start_sim
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from lake.store.tables import EXCHANGE_INFO_SCHEMA, write_exchange_info, write_funding
from lake.store.tail import compact_tail, write_tail
from lake.transform.build import build_offsets

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
DAY = 86_400_000
IV_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": DAY, "3d": 3 * DAY, "1w": 7 * DAY,
}  # fmt: skip
MONDAY = 4 * DAY  # 1970-01-05, the first Monday after the epoch: 1w slots start on Mondays
VALUE_COLS = [
    "open", "high", "low", "close", "volume", "quote_volume", "trade_num",
    "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume",
]  # fmt: skip
KLINE_COLS = ["candle_begin_time", *VALUE_COLS, "source"]
SUMS = ["volume", "quote_volume", "trade_num", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]
CMP_COLS = [
    "open", "close", "high", "low", "volume", "quote_volume", "trade_num",
    "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume",
]  # fmt: skip
SETTLED_S = 10.0  # sql/klines_tail.sql: a tail file compacted longer ago than this is skipped


# ---------------------------------------------------------------------------------------------------
# time helpers (exact integer arithmetic, no floats)


def ms_of(t: dt.datetime) -> int:
    assert t.utcoffset() == dt.timedelta(0), f"{t!r} is not UTC"
    return (t - EPOCH) // dt.timedelta(milliseconds=1)


def at(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def iso_ms(text: str) -> int:
    return ms_of(dt.datetime.fromisoformat(text).replace(tzinfo=UTC))


def slot_of(t: int, iv: str) -> int:
    if iv == "1M":
        d = at(t)
        return ms_of(dt.datetime(d.year, d.month, 1, tzinfo=UTC))
    return t - (t - (MONDAY if iv == "1w" else 0)) % IV_MS[iv]


def next_slot(s: int, iv: str) -> int:
    if iv == "1M":
        d = at(s)
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return ms_of(dt.datetime(y, m, 1, tzinfo=UTC))
    return s + IV_MS[iv]


def slots_between(a: int, b: int, iv: str) -> list[int]:
    """Slot opens from slot a up to slot b inclusive."""
    out, s = [], a
    while s <= b:
        out.append(s)
        s = next_slot(s, iv)
    return out


# ---------------------------------------------------------------------------------------------------
# building the lake


def cli(*args: object) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args], env={"LAKE_CONFIG": os.devnull})
    assert r.exit_code == 0, (args, r.output, r.exception)
    return r.output


def random_series(
    rng: np.random.Generator,
    iv: str,
    start: int,
    n: int,
    *,
    head: int = 0,
    tail: int = 0,
    runs: int = 2,
    zero_run: tuple[int, int] | None = None,
    cut: Iterable[tuple[int, int, float]] = (),
) -> pl.DataFrame:
    """``n`` slots from ``start`` with random single holes, ``runs`` longer holes, ``head``/``tail``
    slots missing at the ends, zero-volume candles (o = h = l = c = previous close), and ``cut``
    holes (first slot, length, price jump applied after the hole)."""
    opens = [start]
    for _ in range(n - 1):
        opens.append(next_slot(opens[-1], iv))
    keep = rng.random(n) >= 0.06
    for _ in range(runs if n > 30 else 0):
        a = int(rng.integers(2, n - 12))
        keep[a : a + int(rng.integers(2, 7))] = False
    keep[:head] = False
    if tail:
        keep[n - tail :] = False
    jumps = np.zeros(n)
    for a, length, jump in cut:
        keep[a : a + length] = False
        jumps[a + length] = jump
    zero = rng.random(n) < 0.08
    if zero_run is not None:
        zero[zero_run[0] : zero_run[0] + zero_run[1]] = True
        keep[zero_run[0] : zero_run[0] + zero_run[1]] = True
    rows = []
    prev = float(np.round(rng.uniform(5, 500), 2))
    for i in range(n):
        prev = float(np.round(prev * (1 + jumps[i]), 4))
        if zero[i]:
            o = h = lo = c = prev
            vol = qv = tbb = tbq = 0.0
            trades = 0
        else:
            o = prev
            c = float(np.round(prev * (1 + rng.normal(0, 0.01)), 4))
            h = float(np.round(max(o, c) * (1 + rng.uniform(0, 0.005)), 4))
            lo = float(np.round(min(o, c) * (1 - rng.uniform(0, 0.005)), 4))
            vol = float(np.round(rng.lognormal(2, 1), 3))
            qv = vol * c
            trades = int(rng.integers(1, 5000))
            tbb = float(np.round(vol * rng.uniform(0, 1), 3))
            tbq = tbb * c
        prev = c
        if keep[i]:
            rows.append((opens[i], o, h, lo, c, vol, qv, trades, tbb, tbq, "rest"))
    df = pl.DataFrame(rows, schema=KLINE_COLS, orient="row")
    return df.with_columns(pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC")))


def random_ranges(rng: np.random.Generator, iv: str, df: pl.DataFrame, count: int) -> list[EmptyRange]:
    """Confirmed-empty ranges around the series: one exactly on a hole, the others anywhere (partly
    over holes, over candles, before the first and after the last), many with off-grid ends."""
    opens = [ms_of(t) for t in df["candle_begin_time"]]
    first, last = opens[0], opens[-1]
    grid = slots_between(first, last, iv)
    held = set(opens)
    holes = [s for s in grid if s not in held]
    out = []
    if holes:
        s = holes[int(rng.integers(0, len(holes)))]
        out.append(EmptyRange(s, next_slot(s, iv)))
    step = IV_MS.get(iv, 28 * DAY)
    runs: list[list[int]] = []
    for s in holes:
        if runs and next_slot(runs[-1][-1], iv) == s:
            runs[-1].append(s)
        else:
            runs.append([s])
    long = [r for r in runs if len(r) >= 3]
    if long:
        # from the middle of a hole's first slot to the middle of its last: that first slot opens
        # before the range (missing), the last opens inside it (exchange)
        r = long[int(rng.integers(0, len(long)))]
        out.append(EmptyRange(r[0] + step // 2, r[-1] + step // 2))
    for _ in range(count):
        a = grid[int(rng.integers(0, len(grid)))] + int(rng.integers(-3, 3)) * step
        jitter_a = int(rng.integers(-step // 2, step // 2)) if rng.random() < 0.5 else 0
        b = (
            a
            + int(rng.integers(1, 7)) * step
            + (int(rng.integers(-step // 2, step // 2)) if rng.random() < 0.5 else 0)
        )
        out.append(EmptyRange(a + jitter_a, max(b, a + jitter_a + 1)))
    return out


@dataclass
class Built:
    root: Path
    # (trade type, interval, rows) of the tail files the views read, in write order
    tail_rows: list[tuple[str, str, pl.DataFrame]] = field(default_factory=list)
    offsets: list[tuple[str, str, str]] = field(default_factory=list)  # (trade type, target, base)


RANDOM = [
    # (trade type, interval, symbol, first open, slots, options)
    ("btc_spot", "1m", "ETHBTC", "2025-03-10T00:00", 2 * 1440, {"head": 5, "tail": 3}),
    ("coin_deli", "15m", "BTCUSD_250627", "2025-02-20T00:00", 10 * 96, {"head": 1}),
    ("usdt_perp", "1d", "BTCUSDT", "2024-10-01T00:00", 200, {"tail": 2}),
    ("usdt_spot", "1w", "ETHUSDT", "2024-01-01T00:00", 60, {}),
    ("usdt_spot", "1M", "BTCUSDT", "2023-01-01T00:00", 30, {"head": 2}),
    ("usdt_perp", "1h", "LATEUSDT", "2025-03-14T05:00", 30, {"runs": 1}),  # listed late
    ("usdt_perp", "1h", "GONEUSDT", "2025-03-12T12:00", 20, {"runs": 1}),  # delisted early
    # a delisting and relistings: 36 h with a +20% jump, 60 h, 30 h with a +5% jump
    ("usdt_perp", "1h", "JUMPUSDT", "2025-01-01T00:00", 24 * 20,
     {"runs": 0, "cut": [(48, 36, 0.2), (150, 60, 0.0), (300, 30, 0.05)]}),
    # 5m beside the simulator's: holes at the start, middle and end, an hour without trades
    ("usdt_perp", "5m", "HOLEUSDT", "2025-03-12T12:00", 864, {"head": 7, "tail": 4, "zero_run": (120, 12)}),
]  # fmt: skip
DAMAGED = ("usdt_spot", "1w", "ETHUSDT")  # its confirmed-empty record is not a list of pairs


def build_lake(root: Path, seed: int) -> Built:
    rng = np.random.default_rng(seed)
    built = Built(root)
    root.mkdir(parents=True)
    with start_sim(n_symbols=12, history_days=4) as sim:
        # REST (confirms maintenance windows, the listing and the delisting as empty)
        for iv, extra in (("5m", ["--funding"]), ("1h", [])):
            cli("backfill", "--type", "usdt_perp", "--type", "coin_perp", "--type", "usdt_spot",
                "--interval", iv, "--days", "3", "--source", "rest", *extra, "--root", root,
                "--sim-url", sim.base_url)  # fmt: skip
        # a symbol delisted a day before the end (not TRADING: by name)
        cli("backfill", "--type", "usdt_perp", "--interval", "5m", "--symbols", "XRPUSDT", "--days", "3",
            "--source", "rest", "--root", root, "--sim-url", sim.base_url)  # fmt: skip
    for tt, iv, sym, start, n, opts in RANDOM:
        df = random_series(rng, iv, iso_ms(start), n, **opts)  # type: ignore[arg-type]
        if sym == "ETHBTC":
            # 2018-style candles opening off the grid (each fills the slot it falls in), one of them
            # beside the on-grid candle of its slot
            i = pl.int_range(pl.len())
            late = pl.col("candle_begin_time") + dt.timedelta(milliseconds=14_789)
            df = pl.concat([
                df.with_columns(pl.when((i >= 100) & (i < 110)).then(late).otherwise(pl.col("candle_begin_time"))),
                df.filter(i == 200).with_columns(late),
            ]).sort("candle_begin_time")  # fmt: skip
        write_klines(root, tt, iv, sym, df)
        if (tt, iv, sym) != DAMAGED:
            add_empty_ranges(root, tt, iv, sym, random_ranges(rng, iv, df, 5))
    damaged = root / "_meta/empty/klines/trade_type=usdt_spot/interval=1w/symbol=ETHUSDT.json"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text("[[1, 2, 3]]")
    # offsets: full builds, then 12 appended hours (the offsets tail), then an edit (a fold)
    cli("offsets", "--type", "usdt_perp", "--interval", "1h", "--root", root)
    cli("offsets", "--type", "coin_perp", "--interval", "4h", "--base", "1h", "--root", root)
    cli("offsets", "--type", "usdt_perp", "--interval", "1d", "--base", "1h", "--root", root)
    built.offsets = [("usdt_perp", "1h", "5m"), ("coin_perp", "4h", "1h"), ("usdt_perp", "1d", "1h")]
    end = iso_ms("2025-03-15T12:00")
    more = random_series(rng, "5m", end, 144, runs=1)
    write_klines(root, "usdt_perp", "5m", "HOLEUSDT", more)
    cli("offsets", "--type", "usdt_perp", "--interval", "1h", "--root", root)
    eth = partitions(root)[("usdt_perp", "5m", "ETHUSDT")]
    t_edit = sorted(eth)[100]
    edited = eth[t_edit]
    row = dict(zip(VALUE_COLS, edited[:9], strict=True))
    row["high"] = row["high"] * 1.5
    row["volume"] = row["volume"] + 1.0
    write_klines(
        root, "usdt_perp", "5m", "ETHUSDT",
        pl.DataFrame([{"candle_begin_time": at(t_edit), **row, "source": "rest"}]).with_columns(
            pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC"))
        ).select(KLINE_COLS),
    )  # fmt: skip
    cli("offsets", "--type", "usdt_perp", "--interval", "1h", "--root", root)
    # the live tail (written after the offsets builds: offsets are built from the partitions)
    parts = partitions(root)
    btc = parts[("usdt_perp", "5m", "BTCUSDT")]
    btc_last = max(btc)
    tail1 = []
    for t in sorted(btc)[-3:]:  # overlapping the partition with other values
        v = list(btc[t][:9])
        v[3] = round(v[3] * 1.01, 4)
        v[4] = v[4] + 0.5
        tail1.append(("BTCUSDT", t, *v, "ws"))
    for k in (1, 2):  # newer than any partition candle
        tail1.append(
            ("BTCUSDT", btc_last + k * 300_000, 10.0 + k, 11.0 + k, 9.0, 10.5, 2.0, 21.0, 7, 1.0, 10.5, "ws")
        )
    for k in range(4):  # a symbol only in the tail (a listing live saw first)
        tail1.append(
            ("NEWUSDT", end + k * 300_000, 1.0, 1.5, 0.5, 1.25 + k, 3.0 + k, 4.0, 2, 1.0, 1.25, "ws")
        )
    eth_t = sorted(parts[("usdt_perp", "5m", "ETHUSDT")])[-1]
    tail1.append(("ETHUSDT", eth_t, 3.0, 4.0, 2.0, 3.5, 9.0, 31.5, 4, 2.0, 7.0, "ws"))
    tail2 = [  # a later file holding the same candles: it wins
        ("BTCUSDT", btc_last + 600_000, 20.0, 21.0, 19.0, 20.5, 5.0, 102.5, 9, 2.0, 41.0, "rest"),
        ("ETHUSDT", eth_t, 3.0, 4.5, 2.0, 4.0, 0.0, 0.0, 0, 0.0, 0.0, "rest"),
    ]
    for rows in (tail1, tail2):
        df = tail_frame(rows)
        write_tail(root, "usdt_perp", "5m", df)
        built.tail_rows.append(("usdt_perp", "5m", df))
        time.sleep(0.002)
    # usdt_spot 1h: a tail file compacted long ago (settled: skipped), then a repair in the partition
    # it must not hide, then a newer tail file that is not compacted
    sbtc = parts[("usdt_spot", "1h", "BTCUSDT")]
    s_last = sorted(sbtc)[-2:]
    settled = tail_frame(
        [("BTCUSDT", t, *[x * 2 if isinstance(x, float) else x for x in sbtc[t][:9]], "ws") for t in s_last]
    )
    write_tail(root, "usdt_spot", "1h", settled)
    compact_tail(root, "usdt_spot", "1h", grace_s=1e9, now=lambda: time.time() - 100)
    repair = tail_frame([("BTCUSDT", s_last[0], 7.0, 8.0, 6.0, 7.5, 1.0, 7.5, 1, 0.5, 3.75, "rest")])
    write_klines(root, "usdt_spot", "1h", "BTCUSDT", repair.drop("symbol"))
    eth_1h = sorted(parts[("usdt_spot", "1h", "ETHUSDT")])[-1]
    fresh = tail_frame([("ETHUSDT", eth_1h, 5.0, 6.0, 4.0, 5.5, 2.0, 11.0, 3, 1.0, 5.5, "ws")])
    write_tail(root, "usdt_spot", "1h", fresh)
    built.tail_rows.append(("usdt_spot", "1h", fresh))
    # live watermarks: the feed-wide ones are the view's; a --symbols run's is not
    write_watermark(root, "usdt_perp", "5m", btc_last, symbols=9, updated_at_ms=btc_last + 300_000 + 1_234)
    write_watermark(root, "coin_perp", "1h", end - 3_600_000, symbols=6, updated_at_ms=end + 999)
    write_watermark(root, "usdt_spot", "5m", end, symbols=1, updated_at_ms=end + 5, scope=["BTCUSDT"])
    return built


def tail_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=["symbol", *KLINE_COLS], orient="row")
    return df.with_columns(
        pl.col("candle_begin_time").map_elements(at, return_dtype=pl.Datetime("us", "UTC")).cast(pl.Datetime("ms", "UTC")),
        pl.col("trade_num").cast(pl.Int64),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# reading what was written, directly


def hive(path: Path, root: Path) -> dict[str, str]:
    parts = path.relative_to(root).parts
    return dict(p.split("=", 1) for p in parts[1:-1])


def parquet_files(root: Path, table: str, depth: int) -> list[Path]:
    out = []
    base = root / table
    for dirpath, _dirs, files in os.walk(base):
        rel = Path(dirpath).relative_to(base)
        if len(rel.parts) == depth - 1:
            out += [Path(dirpath) / f for f in files if f.endswith(".parquet") and not f.startswith(".")]
    return sorted(out)


Series = tuple[str, str, str]


def partitions(root: Path) -> dict[Series, dict[int, tuple[Any, ...]]]:
    """klines/…/data.parquet read with pyarrow: series -> open ms -> values + source."""
    out: dict[Series, dict[int, tuple[Any, ...]]] = defaultdict(dict)
    for path in parquet_files(root, "klines", 5):
        h = hive(path, root)
        table = pq.read_table(path)
        assert table.schema.field("candle_begin_time").type == pa.timestamp("ms", tz="UTC")
        times = table.column("candle_begin_time").cast(pa.int64()).to_pylist()
        cols = [table.column(c).to_pylist() for c in [*VALUE_COLS, "source"]]
        for i, t in enumerate(times):
            assert t not in out[(h["trade_type"], h["interval"], h["symbol"])], "a candle in two partitions"
            out[(h["trade_type"], h["interval"], h["symbol"])][t] = tuple(c[i] for c in cols)
    return dict(out)


def expected_klines(built: Built) -> dict[Series, dict[int, tuple[Any, ...]]]:
    """The partitions, with the tail's rows (as written, later files last) in place of theirs."""
    out = {k: dict(v) for k, v in partitions(built.root).items()}
    for tt, iv, df in built.tail_rows:
        for r in df.iter_rows(named=True):
            series = (tt, iv, r["symbol"])
            out.setdefault(series, {})[ms_of(r["candle_begin_time"])] = tuple(
                r[c] for c in [*VALUE_COLS, "source"]
            )
    return out


def empty_ranges_written(root: Path) -> dict[Series, list[tuple[int, int]]]:
    """The JSON records; one that is not a list of [start, end] pairs is passed over (damaged)."""
    out = {}
    base = root / "_meta/empty/klines"
    for path in sorted(base.glob("*/*/*.json")):
        h = {k: v for k, v in (p.split("=", 1) for p in path.relative_to(base).parts[:2])}
        sym = path.name.removeprefix("symbol=").removesuffix(".json")
        doc = json.loads(path.read_text())
        if not isinstance(doc, list) or not all(isinstance(p, list) and len(p) == 2 for p in doc):
            continue
        out[(h["trade_type"], h["interval"], sym)] = [(int(a), int(b)) for a, b in doc]
    return out


# ---------------------------------------------------------------------------------------------------
# the independent models


@dataclass(frozen=True)
class HoleRun:
    start: int  # first missing slot's open
    end: int  # the open of the slot after the run
    n: int
    exchange: bool


def coverage_model(
    klines: dict[Series, dict[int, Any]], ranges: dict[Series, list[tuple[int, int]]]
) -> dict[Series, tuple[Any, ...]]:
    out = {}
    for series, rows in klines.items():
        if not rows:
            continue
        iv = series[1]
        opens = sorted(rows)
        held = {slot_of(t, iv) for t in opens}
        grid = slots_between(min(held), max(held), iv)
        runs = hole_runs(grid, held, iv, ranges.get(series, []))
        missing = [r.n for r in runs if not r.exchange]
        out[series] = (
            opens[0], opens[-1], len(opens), len(grid), sum(missing),
            sum(r.n for r in runs if r.exchange), len(missing), max(missing, default=0),
        )  # fmt: skip
    return out


def hole_runs(grid: list[int], held: set[int], iv: str, ranges: list[tuple[int, int]]) -> list[HoleRun]:
    runs: list[HoleRun] = []
    for s in grid:
        if s in held:
            continue
        exchange = any(a <= s < b for a, b in ranges)
        last = runs[-1] if runs else None
        if last is not None and last.end == s and last.exchange == exchange:
            runs[-1] = HoleRun(last.start, next_slot(s, iv), last.n + 1, exchange)
        else:
            runs.append(HoleRun(s, next_slot(s, iv), 1, exchange))
    return runs


def segments_model(klines: dict[Series, dict[int, tuple[Any, ...]]]) -> set[tuple[Any, ...]]:
    out = set()
    for (tt, iv, sym), rows in klines.items():
        seg, prev_slot, prev_close = 0, None, None
        members: dict[int, list[tuple[int, bool]]] = defaultdict(list)
        for t in sorted(rows):
            o, vol, c = rows[t][0], rows[t][4], rows[t][3]
            traded = vol > 0
            if traded:
                if prev_slot is not None:
                    hole = slot_of(t, iv) - next_slot(prev_slot, iv)
                    if hole >= 2 * DAY or (
                        hole >= DAY and prev_close > 0 and abs(o / prev_close - 1) >= 0.10
                    ):
                        seg += 1
                prev_slot, prev_close = slot_of(t, iv), c
            members[seg].append((t, traded))
        for k, ms in members.items():
            traded = [t for t, tr in ms if tr]
            if traded:
                a, b = min(traded), max(traded)
                out.add((tt, iv, sym, k, a, b, sum(a <= t <= b for t, _ in ms)))
    return out


def offset_name(k_ms: int, base: str) -> str:
    unit = "h" if base.endswith("h") else "m"
    return f"{k_ms // (3_600_000 if unit == 'h' else 60_000)}{unit}"


def offsets_model(
    klines: dict[Series, dict[int, tuple[Any, ...]]], tt: str, target: str, base: str
) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """The seed's resample_symbol at every offset: (offset, symbol, open ms) -> values + n_base."""
    b_ms, t_ms = IV_MS[base], IV_MS[target]
    out = {}
    for (s_tt, s_iv, sym), rows in sorted(klines.items()):
        if s_tt != tt or s_iv != base or not rows:
            continue
        times = sorted(rows)
        df = pd.DataFrame([rows[t][:9] for t in times], columns=VALUE_COLS)
        df["candle_begin_time"] = pd.to_datetime(times, unit="ms", utc=True)
        df["candle_end_time"] = df["candle_begin_time"] + pd.Timedelta(milliseconds=b_ms)
        df["n_base"] = 1
        for k in range(t_ms // b_ms):
            r = df.resample(f"{t_ms}ms", offset=f"{k * b_ms}ms", origin="epoch", on="candle_begin_time").agg(
                {
                    "candle_begin_time": "first",
                    "candle_end_time": "last",
                    "open": "first",
                    "high": "max",
                    "low": "min",
                    "close": "last",
                    "volume": "sum",
                    "quote_volume": "sum",
                    "trade_num": "sum",
                    "taker_buy_base_asset_volume": "sum",
                    "taker_buy_quote_asset_volume": "sum",
                    "n_base": "sum",
                }
            )
            r = r[(r["candle_end_time"] - r["candle_begin_time"]) >= pd.Timedelta(milliseconds=t_ms)]
            for rec in r.to_dict("records"):
                t = rec["candle_begin_time"].value // 1_000_000
                out[(offset_name(k * b_ms, base), sym, t)] = (*(rec[c] for c in VALUE_COLS), rec["n_base"])
    return out


def rel_error(ours: Any, theirs: Any) -> float | None:
    """One row of the seed's metric, |ours / theirs - 1|; None where pandas has NaN (skipped by
    max): a candle we lack, a missing or NaN value, 0 / 0 (which the view documents as 0 error)."""
    if ours is None or theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        return None
    if isinstance(ours, float) and math.isnan(ours):
        return None
    if ours == theirs:
        return 0.0  # the view's documented choice (pandas: 0 for equal non-zero values, NaN for 0 / 0)
    if theirs == 0:
        return math.inf
    return abs(float(ours) / float(theirs) - 1.0)


# ---------------------------------------------------------------------------------------------------
# views as rows


def rows_of(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[tuple[Any, ...]]:
    out = con.execute(sql, params or []).fetchall()
    for r in out:
        for v in r:
            if isinstance(v, dt.datetime):
                assert v.tzinfo is not None and v.utcoffset() == dt.timedelta(0), v
    return out


def conv(v: Any) -> Any:
    return ms_of(v) if isinstance(v, dt.datetime) else v


@pytest.fixture(scope="module", params=[20251123, 7])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_lake(tmp_path_factory.mktemp("views") / "lake", request.param)


@pytest.fixture(scope="module")
def con(built: Built) -> duckdb.DuckDBPyConnection:
    return lake.connect(built.root)


# ---------------------------------------------------------------------------------------------------
# the views on the big lake


def test_the_lake_has_every_awkward_case(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    """Guards the fixture: the cases the checks below are meant to see are there."""
    klines = expected_klines(built)
    ranges = empty_ranges_written(built.root)
    assert {tt for tt, _, _ in klines} == {"usdt_perp", "coin_perp", "usdt_spot", "btc_spot", "coin_deli"}
    assert {iv for _, iv, _ in klines} >= {"1m", "5m", "15m", "1h", "1d", "1w", "1M"}
    cov = coverage_model(klines, ranges)
    assert cov[("usdt_perp", "5m", "XRPUSDT")][1] < cov[("usdt_perp", "5m", "BTCUSDT")][1]  # delisted
    assert cov[("usdt_perp", "5m", "SOLUSDT")][0] > cov[("usdt_perp", "5m", "BTCUSDT")][0]  # listed late
    assert cov[("usdt_perp", "5m", "BTCUSDT")][5] > 0  # maintenance: exchange holes from the backfill
    assert any(c[4] > 0 and c[5] > 0 for c in cov.values())  # missing and exchange in one series
    assert sum(1 for rows in klines.values() for v in rows.values() if v[4] == 0) > 50  # zero volume
    assert ("usdt_perp", "5m", "NEWUSDT") in klines and not (
        built.root / "klines/trade_type=usdt_perp/interval=5m/symbol=NEWUSDT"
    ).exists()
    assert list((built.root / "offsets_tail").rglob("*.parquet")), "no offsets tail"
    assert con.execute("SELECT count(*) FROM klines_tail").fetchone()[0] > 0  # type: ignore[index]
    off_grid = [
        (a, b)
        for (_, iv, _), rs in ranges.items()
        if iv in IV_MS
        for a, b in rs
        if a % IV_MS[iv] or b % IV_MS[iv]
    ]
    assert off_grid, "no off-grid confirmed-empty range"


def test_klines_is_the_partitions_with_the_tail_in_place(
    built: Built, con: duckdb.DuckDBPyConnection
) -> None:
    want = {
        (tt, iv, sym, t, *v)
        for (tt, iv, sym), rows in expected_klines(built).items()
        for t, v in rows.items()
    }
    got_rows = rows_of(con, f'SELECT trade_type, "interval", symbol, {", ".join(KLINE_COLS)} FROM klines')
    got = [tuple(conv(v) for v in r) for r in got_rows]
    assert len(got) == len(set(got)), "a candle twice"
    assert set(got) == want
    parts = {
        (tt, iv, sym, t, *v)
        for (tt, iv, sym), rows in partitions(built.root).items()
        for t, v in rows.items()
    }
    got_parts = rows_of(
        con, f'SELECT trade_type, "interval", symbol, {", ".join(KLINE_COLS)} FROM klines_partitions'
    )
    assert {tuple(conv(v) for v in r) for r in got_parts} == parts and len(got_parts) == len(parts)
    tail: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for tt, iv, df in built.tail_rows:  # the later file wins; the settled file is not among them
        for r in df.iter_rows(named=True):
            tail[(tt, iv, r["symbol"], ms_of(r["candle_begin_time"]))] = tuple(
                r[c] for c in [*VALUE_COLS, "source"]
            )
    got_tail = rows_of(
        con, f'SELECT trade_type, "interval", symbol, {", ".join(KLINE_COLS)} FROM klines_tail'
    )
    assert len(got_tail) == len(tail)
    assert {tuple(conv(v) for v in r) for r in got_tail} == {(*k, *v) for k, v in tail.items()}
    # off-grid candles are kept at their own times, two of them in one slot
    eth = list(expected_klines(built)[("btc_spot", "1m", "ETHBTC")])
    assert sum(t % 60_000 != 0 for t in eth) >= 5 and len({slot_of(t, "1m") for t in eth}) == len(eth) - 1


def test_coverage_equals_an_independent_count(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    want = coverage_model(expected_klines(built), empty_ranges_written(built.root))
    got = {
        tuple(r[:3]): tuple(conv(v) for v in r[3:])
        for r in rows_of(
            con,
            'SELECT trade_type, "interval", symbol, first_open, last_open, candles, expected, missing, '
            "exchange_missing, holes, largest_hole FROM coverage",
        )
    }
    assert set(got) == set(want)
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad, bad


def test_coverage_hole_list_of_lake_status(built: Built) -> None:
    """The coverage view counts holes; the list of them (issue 2: each hole's start, end and kind) is
    `lake status --json --holes`: checked here against the same model."""
    want_runs = {}
    klines = expected_klines(built)
    ranges = empty_ranges_written(built.root)
    for series, rows in klines.items():
        iv = series[1]
        held = {slot_of(t, iv) for t in rows}
        want_runs[series] = [
            (r.start, r.end, r.n, "exchange" if r.exchange else "missing")
            for r in hole_runs(slots_between(min(held), max(held), iv), held, iv, ranges.get(series, []))
        ]
    out = json.loads(cli("status", "--json", "--holes", "--root", built.root))
    series_list = out["series"] if isinstance(out, dict) else out
    got_runs = {}
    for s in series_list:
        key = (s["trade_type"], s["interval"], s["symbol"])
        runs = []
        for h in s["holes"]:
            a, b = iso_ms_any(h["start"]), iso_ms_any(h["end"])
            # a piece may end (or start) at a range's off-grid edge: the slots opening in [a, b)
            first = slot_of(a, key[1]) if slot_of(a, key[1]) == a else next_slot(slot_of(a, key[1]), key[1])
            after = slot_of(b, key[1]) if slot_of(b, key[1]) == b else next_slot(slot_of(b, key[1]), key[1])
            runs.append((first, after, h["missing"], h["kind"]))
            n = len([s for s in slots_between(first, slot_of(b - 1, key[1]), key[1]) if a <= s < b])
            assert n == h["missing"], (key, h)
        got_runs[key] = runs
    assert got_runs == want_runs


def iso_ms_any(v: Any) -> int:
    if isinstance(v, int | float):
        return int(v)
    return ms_of(dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")))


def test_latest_is_the_newest_candle_of_every_series(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    want = set()
    for (tt, iv, sym), rows in expected_klines(built).items():
        t = max(rows)
        want.add((tt, iv, sym, t, *rows[t]))
    got = rows_of(con, f'SELECT trade_type, "interval", symbol, {", ".join(KLINE_COLS)} FROM latest')
    assert len(got) == len(want)
    assert {tuple(conv(v) for v in r) for r in got} == want


def test_segments_follow_the_rule_the_view_states(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    want = segments_model(expected_klines(built))
    got = rows_of(
        con, 'SELECT trade_type, "interval", symbol, segment, first_open, last_open, candles FROM segments'
    )
    assert len(got) == len(want)
    assert {tuple(conv(v) for v in r) for r in got} == want
    assert sum(1 for r in want if r[2] == "JUMPUSDT") == 3  # 36 h with +20%, 60 h; not 30 h with +5%


def test_offsets_are_the_seeds_resample_of_the_partitions(
    built: Built, con: duckdb.DuckDBPyConnection
) -> None:
    parts = partitions(built.root)
    for tt, target, base in built.offsets:
        want = offsets_model(parts, tt, target, base)
        got = {
            (r[0], r[1], conv(r[2])): r[3:]
            for r in rows_of(
                con,
                f'SELECT "offset", symbol, candle_begin_time, {", ".join(VALUE_COLS)}, n_base FROM offsets '
                'WHERE trade_type = ? AND "interval" = ?',
                [tt, target],
            )
        }
        n = con.execute(
            'SELECT count(*) FROM offsets WHERE trade_type = ? AND "interval" = ?', [tt, target]
        ).fetchone()
        assert n == (len(got),), "a bin twice"
        shared = con.execute(
            'SELECT count(*) FROM offsets_partitions JOIN offsets_tail USING (trade_type, "interval", "offset", '
            'symbol, candle_begin_time) WHERE trade_type = ? AND "interval" = ?',
            [tt, target],
        ).fetchone()
        assert shared == (0,), "the period files and the tail share a bin"
        assert set(got) == set(want), (tt, target, sorted(set(got) ^ set(want))[:5])
        for key, w in want.items():
            g = got[key]
            for c, gv, wv in zip([*VALUE_COLS, "n_base"], g, w, strict=True):
                if c in SUMS and c != "trade_num":
                    assert gv == wv or abs(gv - wv) <= 1e-12 * max(abs(gv), abs(wv)), (
                        tt,
                        target,
                        key,
                        c,
                        gv,
                        wv,
                    )
                else:
                    assert gv == wv, (tt, target, key, c, gv, wv)


def test_compare_is_the_seeds_metric(built: Built) -> None:
    con = lake.connect(built.root)
    rng = np.random.default_rng(99)
    ours = (
        con.sql(
            f'SELECT trade_type, "interval", "offset", symbol, candle_begin_time, {", ".join(VALUE_COLS)} '
            "FROM offsets WHERE trade_type = 'usdt_perp' AND \"interval\" = '1h' ORDER BY ALL"
        )
        .pl()
        .to_pandas()
    )
    assert len(ours) > 500
    quiet = ours.index[ours["volume"] == 0]
    dropped = rng.choice(ours.index.difference(quiet), size=len(ours) // 10, replace=False)
    ref = ours.drop(index=dropped).reset_index(drop=True)  # rows the reference lacks: not compared
    ref["trade_num"] = ref["trade_num"].astype("float64")
    n = len(ref)
    # differing values, a few per column
    for c in CMP_COLS:
        idx = rng.choice(n, size=6, replace=False)
        ref.loc[idx, c] = ref.loc[idx, c] * rng.uniform(0.5, 1.5, size=6)
    # NaN reference values (pandas' max skips them) and zeros (|x / 0 - 1| = inf; 0 / 0 no error)
    for c in ("volume", "open", "trade_num"):
        ref.loc[rng.choice(n, size=3, replace=False), c] = np.nan
    ref.loc[rng.choice(n, size=2, replace=False), "close"] = 0.0
    assert len(quiet) > 0, "no bin without volume (HOLEUSDT's quiet hour): 0 / 0"
    # a series whose only reference value of a column is NaN
    first = ref[(ref["symbol"] == "BTCUSDT") & (ref["offset"] == "5m")].index
    ref.loc[first, "high"] = np.nan
    # extra rows: candles we do not have, and a symbol we do not have at all
    extra = ref.head(3).copy()
    extra["candle_begin_time"] = pd.Timestamp("2030-01-01", tz="UTC") + pd.to_timedelta(range(3), unit="h")
    other = ref.head(2).copy()
    other["symbol"] = "REFONLYUSDT"
    ref = pd.concat([ref, extra, other], ignore_index=True)
    # through Polars, which keeps NaN a NaN (DuckDB reads a pandas NaN as NULL): a reference read
    # from parquet or Arrow, or written in SQL ('nan'::DOUBLE), has real NaN values
    con.register("ref_rows", pl.from_pandas(ref, nan_to_null=False))
    assert con.execute("SELECT count(*) FROM ref_rows WHERE isnan(volume)").fetchone() == (3,)
    con.execute("CREATE OR REPLACE VIEW reference AS SELECT * FROM ref_rows")

    # the seed: per symbol and offset, merge(reference, ours, how='left'), then (ours/theirs - 1).abs().max()
    merged = ref.merge(
        ours, how="left", on=["trade_type", "interval", "offset", "symbol", "candle_begin_time"], suffixes=("_qtc", "_rsp"), indicator=True
    )  # fmt: skip
    want = {}
    for key, g in merged.groupby(["trade_type", "interval", "offset", "symbol"]):
        matched = int((g["_merge"] == "both").sum())
        for c in CMP_COLS:
            errs = []
            for o, t, m in zip(g[f"{c}_rsp"], g[f"{c}_qtc"], g["_merge"], strict=True):
                e = rel_error(None if m != "both" else (int(o) if c == "trade_num" else float(o)), float(t))
                if e is not None:
                    errs.append(e)
            want[(*key, c)] = (max(errs) if errs else None, len(g), matched, len(g) - matched)
    got = {
        tuple(r[:5]): tuple(r[5:])
        for r in rows_of(
            con,
            'SELECT trade_type, "interval", "offset", symbol, "column", max_rel_error, reference_rows, matched, missing FROM compare',
        )
    }
    assert set(got) == set(want)
    bad = {}
    for k, w in want.items():
        g = got[k]
        same = g[1:] == w[1:] and (
            g[0] == w[0] or (g[0] is not None and w[0] is not None and math.isnan(g[0]) and math.isnan(w[0]))
        )
        if not same:
            bad[k] = (g, w)
    assert not bad, dict(list(bad.items())[:8])
    # a reference with naive times (Quantclass's CSV) is read as UTC: the same result
    naive = pl.from_pandas(ref, nan_to_null=False).with_columns(
        pl.col("candle_begin_time").dt.replace_time_zone(None)
    )
    con.register("ref_naive", naive)
    con.execute("CREATE OR REPLACE VIEW reference AS SELECT * FROM ref_naive")
    again = {
        tuple(r[:5]): tuple(r[5:])
        for r in con.execute(
            'SELECT trade_type, "interval", "offset", symbol, "column", max_rel_error, reference_rows, matched, missing FROM compare'
        ).fetchall()
    }
    assert again == got


def test_exchange_info_and_funding_are_the_files(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    for view, table, keys in (
        ("exchange_info", "exchange_info", ["trade_type", "date"]),
        ("funding", "funding", ["trade_type", "symbol"]),
    ):
        want = []
        cols = None
        for path in parquet_files(built.root, table, 3):
            t = pq.read_table(path)
            cols = t.column_names
            h = hive(path, built.root)
            for r in t.to_pylist():
                want.append(tuple(conv(r[c]) for c in cols) + tuple(h[k] for k in keys))
        assert want, view
        described = [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
        assert described == [*cols, *keys]  # type: ignore[misc]
        got = [tuple(conv(v) for v in r) for r in rows_of(con, f"SELECT * FROM {view}")]
        assert sorted(got, key=repr) == sorted(want, key=repr)


def test_empty_ranges_are_the_records(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    want = {(*k, a, b) for k, rs in empty_ranges_written(built.root).items() for a, b in rs}
    got = rows_of(con, 'SELECT trade_type, "interval", symbol, range_start, range_end FROM empty_ranges')
    assert len(got) == len(want) and {tuple(conv(v) for v in r) for r in got} == want
    assert not any(r[:3] == DAMAGED for r in want)


def test_watermark_is_the_feed_wide_records(built: Built, con: duckdb.DuckDBPyConnection) -> None:
    want = set()
    for path in sorted((built.root / "_meta/live").glob("*/*.json")):
        doc = json.loads(path.read_text())
        want.add(
            (
                doc["trade_type"],
                doc["interval"],
                doc["watermark_ms"],
                iso_ms_any(doc["next_open"]) if isinstance(doc["next_open"], str) else doc["next_open"],
                doc["symbols"],
                doc["updated_at_ms"],
                doc["watermark_ms"],
            )
        )
    got = rows_of(
        con,
        'SELECT trade_type, "interval", watermark, next_open, symbols, updated_at, watermark_ms FROM watermark',
    )
    assert {tuple(conv(v) for v in r) for r in got} == want
    assert {(r[0], r[1]) for r in got} == {("usdt_perp", "5m"), ("coin_perp", "1h")}


def test_intervals(con: duckdb.DuckDBPyConnection) -> None:
    got = {r[0]: (r[1], r[2]) for r in rows_of(con, "SELECT * FROM intervals")}
    assert got == {**{k: (v, None) for k, v in IV_MS.items()}, "1M": (None, 1)}


def test_timestamps_are_utc_whatever_the_machines_zone(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/St_Johns")  # -03:30 / -02:30: no hour-aligned accident
    time.tzset()
    try:
        con = lake.connect(built.root)
        assert con.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
        for view, col in (("klines", "candle_begin_time"), ("coverage", "first_open"), ("offsets", "candle_begin_time"),
                          ("latest", "candle_begin_time"), ("empty_ranges", "range_start"), ("watermark", "updated_at"),
                          ("segments", "last_open"), ("exchange_info", "snapshot_time"), ("funding", "funding_time")):  # fmt: skip
            types = dict((r[0], r[1]) for r in con.execute(f"DESCRIBE {view}").fetchall())
            assert types[col] == "TIMESTAMP WITH TIME ZONE", (view, col)
            rows = con.execute(
                f"SELECT {col}, hour({col}), minute({col}), {col}::DATE, strftime({col}, '%Y-%m-%d %H:%M:%S') FROM {view} "
                f"WHERE {col} IS NOT NULL LIMIT 50"
            ).fetchall()
            assert rows, view
            for t, h, m, d, text in rows:
                u = at(ms_of(t))
                assert (h, m, d, text) == (u.hour, u.minute, u.date(), u.strftime("%Y-%m-%d %H:%M:%S")), (
                    view,
                    t,
                )
        lines = cli(
            "sql",
            "SELECT candle_begin_time FROM latest ORDER BY ALL",
            "--format",
            "csv",
            "--root",
            built.root,
        )
        want = [r[0] for r in con.execute("SELECT candle_begin_time FROM latest ORDER BY ALL").fetchall()]
        assert [_same_instant(x, w) for x, w in zip(lines.splitlines()[1:], want, strict=True)] == [
            True
        ] * len(want)
        assert all(x.endswith(("+00:00", "Z", "+0000", "UTC")) for x in lines.splitlines()[1:]), lines[:200]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# ---------------------------------------------------------------------------------------------------
# `lake sql` against lake.connect


QUERIES = [
    f'SELECT trade_type, "interval", symbol, {", ".join(KLINE_COLS)} FROM klines '
    "WHERE symbol IN ('BTCUSDT', 'NEWUSDT', 'HOLEUSDT') ORDER BY ALL",
    "SELECT * FROM coverage ORDER BY ALL",
    "SELECT * FROM latest ORDER BY ALL",
    "SELECT * FROM offsets WHERE symbol = 'ETHUSDT' ORDER BY ALL",
    "SELECT * FROM empty_ranges ORDER BY ALL",
    "SELECT * FROM watermark ORDER BY ALL",
    "SELECT * FROM segments ORDER BY ALL",
]


def _same_instant(text: Any, want: dt.datetime) -> bool:
    t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t.tzinfo is not None and t == want


@pytest.mark.parametrize("query", QUERIES)
def test_lake_sql_outputs_equal_connect(
    built: Built, con: duckdb.DuckDBPyConnection, query: str, tmp_path: Path
) -> None:
    want_rel = con.sql(query)
    names = want_rel.columns
    want = want_rel.fetchall()
    assert want
    # parquet: typed
    out = tmp_path / "out.parquet"
    cli("sql", query, "--format", "parquet", "--output", out, "--root", built.root)
    t = pq.read_table(out)
    assert t.column_names == names
    got = [tuple(r[c] for c in names) for r in t.to_pylist()]
    assert [tuple(conv(v) for v in r) for r in got] == [tuple(conv(v) for v in r) for r in want]
    # json: numbers exact, times the same instants
    doc = json.loads(cli("sql", query, "--format", "json", "--root", built.root))
    assert [list(d) for d in doc[:1]] == [names]
    for d, w in zip(doc, want, strict=True):
        for c, wv in zip(names, w, strict=True):
            gv = d[c]
            if isinstance(wv, dt.datetime):
                assert _same_instant(gv, wv), (c, gv, wv)
            else:
                assert gv == wv and (type(gv) is type(wv) or isinstance(wv, float)), (c, gv, wv)
    # csv: text that parses back to the same values
    lines = cli("sql", query, "--format", "csv", "--root", built.root).splitlines()
    assert lines[0].split(",") == names
    parsed = pl.read_csv("\n".join(lines).encode(), infer_schema=False)  # every cell as text
    assert parsed.height == len(want)
    for r, w in zip(parsed.iter_rows(), want, strict=True):
        for c, gv, wv in zip(names, r, w, strict=True):
            if wv is None:
                assert gv in (None, ""), (c, gv)
            elif isinstance(wv, dt.datetime):
                assert _same_instant(gv, wv), (c, gv, wv)
            elif isinstance(wv, float):
                assert float(gv) == wv, (c, gv, wv)
            else:
                assert gv == str(wv), (c, gv, wv)


# ---------------------------------------------------------------------------------------------------
# the root, bound as a value


def small_lake(root: Path) -> None:
    rng = np.random.default_rng(3)
    df = random_series(rng, "5m", iso_ms("2025-01-01T00:00"), 300, head=2)
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", df)
    add_empty_ranges(root, "usdt_perp", "5m", "BTCUSDT", random_ranges(rng, "5m", df, 4))
    write_klines(root, "usdt_spot", "1M", "ETHUSDT", random_series(rng, "1M", iso_ms("2024-01-01T00:00"), 12))
    build_offsets(root, "usdt_perp", "1h")
    write_tail(
        root,
        "usdt_perp",
        "5m",
        tail_frame(
            [("BTCUSDT", ms_of(df["candle_begin_time"][-1]), 1.0, 2.0, 0.5, 1.5, 3.0, 4.5, 2, 1.0, 1.5, "ws")]
        ),
    )
    write_watermark(
        root,
        "usdt_perp",
        "5m",
        iso_ms("2025-01-02T00:00"),
        symbols=1,
        updated_at_ms=iso_ms("2025-01-02T00:05"),
    )
    t = dt.datetime(2025, 1, 1, tzinfo=UTC)
    funding = {
        "funding_time": [t, t + dt.timedelta(hours=8)],
        "funding_rate": [1e-4, -2e-4],
        "mark_price": [1.5, 2.5],
    }
    write_funding(root, "usdt_perp", "BTCUSDT", pl.DataFrame(funding))
    info = {c: [None] for c in EXCHANGE_INFO_SCHEMA} | {
        "snapshot_time": [t],
        "symbol": ["BTCUSDT"],
        "status": ["TRADING"],
    }
    write_exchange_info(root, "usdt_perp", pl.DataFrame(info, schema=EXCHANGE_INFO_SCHEMA))


def every_view(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    return {v: sorted(con.execute(f"SELECT * FROM {v}").fetchall(), key=repr) for v in VIEWS}


ODD_NAMES = [
    "it's",
    "a b",
    "ünï€ 日本",
    "100%",
    "a*b",
    "q?x",
    "d[ab]",
    "x]y",
    "a**b",
    "{a,b}",
    "$HOME",
    'say "hi"',
    "semi;colon",
]


def test_a_root_of_any_name_reads_the_same_lake(tmp_path: Path) -> None:
    """Quote, space, unicode, %, *, ?, [ and friends: the views read exactly the lake of that root,
    not a sibling a glob would also match (`a*b` matches `aXb`, `d[ab]` matches `da`)."""
    plain = tmp_path / "plain" / "lake"
    small_lake(plain)
    want = every_view(lake.connect(plain))
    assert all(
        want[v]
        for v in (
            "klines",
            "coverage",
            "offsets",
            "empty_ranges",
            "watermark",
            "klines_tail",
            "funding",
            "exchange_info",
        )
    )
    for name in ODD_NAMES:
        root = tmp_path / "odd" / name
        shutil.copytree(plain, root)
        assert every_view(lake.connect(root)) == want, name
    for name, sibling in (("a*b", "aXb"), ("q?x", "qZx"), ("d[ab]", "da"), ("a**b", "a/x/b")):
        decoy = tmp_path / "odd" / sibling
        decoy.mkdir(parents=True, exist_ok=True)
        write_klines(
            decoy,
            "usdt_perp",
            "5m",
            "ETHUSDT",
            random_series(np.random.default_rng(1), "5m", iso_ms("2025-01-01T00:00"), 20),
        )
        assert every_view(lake.connect(tmp_path / "odd" / name)) == want, name


@pytest.mark.parametrize("name", ["trade_type=usdt_spot", "symbol=ETHUSDT", "interval=1h", "x=1"])
def test_a_root_with_a_hive_like_directory_is_not_misread(tmp_path: Path, name: str) -> None:
    """DuckDB's hive partitioning takes `key=value` from the whole path, the root's directories
    included, and the first occurrence wins: under /data/trade_type=usdt_spot/lake every klines row
    said usdt_spot, under .../symbol=ETHUSDT/... every candle was ETHUSDT's, and `x=1` added a column
    `x` to exchange_info and funding. Either the views read the lake as it is, or connect refuses
    the root with a clear error (as it does a backslash); never silently other data."""
    plain = tmp_path / "plain" / "lake"
    small_lake(plain)
    want = every_view(lake.connect(plain))
    root = tmp_path / name / "lake"
    shutil.copytree(plain, root)
    try:
        con = lake.connect(root)
    except ValidationError as exc:
        assert "=" in str(exc)
        return
    assert every_view(con) == want


def test_a_root_with_a_backslash_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "a\\b"
    small_lake(root)
    with pytest.raises(ValidationError, match="backslash"):
        lake.connect(root)


# ---------------------------------------------------------------------------------------------------
# young lakes


def test_views_on_young_lakes_have_the_columns_of_a_full_one(built: Built, tmp_path: Path) -> None:
    """Each table alone (or none): every view answers, with its full columns and types, and holds
    exactly the rows of what exists."""
    full = lake.connect(built.root)
    types = {v: full.execute(f"DESCRIBE {v}").fetchall() for v in VIEWS}
    root = built.root
    pieces = {
        "nothing": [],
        "klines": ["klines", "_meta/schema/klines"],
        "tail only": ["klines_tail", "_meta/schema/klines_tail.v2"],
        "offsets only": ["offsets", "offsets_tail", "_meta/schema/offsets", "_meta/schema/offsets_tail"],
        "offsets tail only": ["offsets_tail", "_meta/schema/offsets_tail"],
        "exchange_info": ["exchange_info", "_meta/schema/exchange_info"],
        "funding": ["funding", "_meta/schema/funding"],
        "empty and live": ["_meta/empty", "_meta/live"],
    }
    for name, dirs in pieces.items():
        young = tmp_path / name.replace(" ", "_")
        young.mkdir()
        for d in dirs:
            shutil.copytree(root / d, young / d)
        con = lake.connect(young)
        for v in VIEWS:
            assert con.execute(f"DESCRIBE {v}").fetchall() == types[v], (name, v)
        n = {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0] for v in VIEWS}  # type: ignore[index]
        for v, table in (
            ("klines_partitions", "klines"),
            ("exchange_info", "exchange_info"),
            ("funding", "funding"),
            ("empty_ranges", "_meta/empty"),
        ):
            if table not in dirs:
                assert n[v] == 0, (name, v)
            else:
                assert n[v] == full.execute(f"SELECT count(*) FROM {v}").fetchone()[0], (name, v)  # type: ignore[index]
        if "klines_tail" in dirs:
            tail = {
                (tt, iv, r["symbol"], ms_of(r["candle_begin_time"]))
                for tt, iv, df in built.tail_rows
                for r in df.iter_rows(named=True)
            }
            got = {
                (r[0], r[1], r[2], ms_of(r[3]))
                for r in con.execute(
                    'SELECT trade_type, "interval", symbol, candle_begin_time FROM klines'
                ).fetchall()
            }
            assert got == tail, name
            assert n["coverage"] == len({k[:3] for k in tail}) and n["latest"] == n["coverage"]
        if name == "offsets tail only":
            assert 0 < n["offsets"] == full.execute("SELECT count(*) FROM offsets_tail").fetchone()[0]  # type: ignore[index]
        if name == "offsets only":
            assert n["offsets"] == full.execute("SELECT count(*) FROM offsets").fetchone()[0]  # type: ignore[index]
