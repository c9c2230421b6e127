"""A deterministic synthetic lake of 5m klines for the offsets benchmark (numpy, written with the store).

Prices are geometric random walks rounded to a tick, volumes log-normal with some zero-volume candles,
and each symbol has a few holes (maintenance-like gaps), so the benchmark exercises the same paths as
real data. Generation is cached: a lake is built once per (symbols, days) under ``bench/_work/``, and
again when the klines file format changes (``FORMAT``): a lake cached by an older writer would
measure that writer's files (until 2026-11-23 the offsets benchmark read files of an earlier writer,
Arrow schema embedded: their bare scan took 2.7–3.3 s where the files lake writes now take 1.2–1.9 s).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from lake.schema import KLINE_SCHEMA
from lake.store.dayprints import META_KEY
from lake.store.fs import LakeFS
from lake.store.klines import encode_parquet, read_partition, write_klines
from lake.store.parquet_plain import CREATED_BY
from lake.store.paths import PartitionKey

__all__ = [
    "BENCH_START",
    "WORK",
    "append_day",
    "ensure_lake",
    "remove_days",
    "symbol_names",
    "synthetic_klines",
]

WORK = Path(__file__).resolve().parent / "_work"
# 2024 is a leap year: 365 days plus the appended day stay in one calendar year (the worst case
# for yearly offset files, which the incremental run must then rewrite).
BENCH_START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
STEP_MS = 300_000
PER_DAY = 288
FORMAT = f"{CREATED_BY}; {META_KEY}; a second page from the day before the last, unless whole"  # its layout


def symbol_names(count: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(count)]


def synthetic_klines(symbol_index: int, start_ms: int, count: int, *, holes: bool = True) -> pl.DataFrame:
    """``count`` 5m candles from ``start_ms`` for one symbol; deterministic in (symbol_index, start_ms)."""
    rng = np.random.default_rng([symbol_index, start_ms // STEP_MS])
    t = start_ms + STEP_MS * np.arange(count, dtype=np.int64)
    price0 = 10.0 ** rng.uniform(-3, 4)
    tick = 10.0 ** (np.floor(np.log10(price0)) - 4)
    steps = rng.normal(0.0, 0.002, size=(count, 4))
    close = price0 * np.exp(np.cumsum(steps[:, 0]))
    open_ = np.concatenate([[price0], close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(steps[:, 1]))
    low = np.minimum(open_, close) * np.exp(-np.abs(steps[:, 2]))
    o, h, lo, c = (np.round(x / tick) * tick for x in (open_, high, low, close))
    volume = np.round(rng.lognormal(3.0, 1.0, size=count), 3)
    zero = rng.random(count) < 0.01
    volume[zero] = 0.0
    h[zero] = lo[zero] = o[zero] = c[zero]
    trades = np.where(zero, 0, rng.integers(1, 5000, size=count))
    quote = volume * c
    taker = np.round(volume * rng.uniform(0.2, 0.8, size=count), 3)
    keep = np.ones(count, dtype=bool)
    if holes:
        for _ in range(3):
            at = int(rng.integers(0, count))
            keep[at : at + int(rng.integers(1, 30))] = False
    df = pl.DataFrame(
        {
            "candle_begin_time": t,
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": volume,
            "quote_volume": quote,
            "trade_num": trades,
            "taker_buy_base_asset_volume": taker,
            "taker_buy_quote_asset_volume": taker * c,
            "source": ["archive"] * count,
        }
    )
    return (
        df.filter(pl.Series(keep))
        .with_columns(pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC")))
        .cast(KLINE_SCHEMA)
    )


def _start_ms() -> int:
    return int(BENCH_START.timestamp() * 1000)


def ensure_lake(symbols: int, days: int, *, workers: int = 8, log: bool = True) -> Path:
    """Path of a cached lake with ``symbols`` × ``days`` of 5m usdt_perp klines (built if missing)."""
    root = WORK / f"lake-{symbols}x{days}"
    done = root / ".complete.json"
    if done.exists() and json.loads(done.read_text()).get("format") == FORMAT:
        return root
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    names = symbol_names(symbols)

    def one(i: int) -> None:
        write_klines(root, "usdt_perp", "5m", names[i], synthetic_klines(i, _start_ms(), days * PER_DAY))

    with ThreadPoolExecutor(workers) as pool:
        for n, _ in enumerate(pool.map(one, range(symbols)), 1):
            if log and n % 25 == 0:
                print(f"generated {n}/{symbols} symbols ({time.perf_counter() - t0:.0f}s)", flush=True)
    doc = {"symbols": symbols, "days": days, "seconds": time.perf_counter() - t0, "format": FORMAT}
    done.write_text(json.dumps(doc))
    return root


def append_day(root: Path, symbols: int, days: int) -> None:
    """Write day ``days`` (0-based: ``days`` = the cached range's length is the day after it) for every
    symbol."""
    names = symbol_names(symbols)
    start = _start_ms() + days * PER_DAY * STEP_MS

    def one(i: int) -> None:
        write_klines(root, "usdt_perp", "5m", names[i], synthetic_klines(i, start, PER_DAY, holes=False))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(symbols)))


def remove_days(root: Path, symbols: int, days: int) -> None:
    """Undo ``append_day`` so the cached lake is back to ``days`` days: rows from day ``days`` on are
    dropped from the partition holding that day (a month for 5m), which is rewritten, or deleted when
    nothing is left, and later partitions are deleted."""
    start = _start_ms() + days * PER_DAY * STEP_MS
    lfs = LakeFS(str(root))
    for name in symbol_names(symbols):
        key = PartitionKey.for_candle("klines", "usdt_perp", "5m", name, start)
        sdir = root / key.path.rsplit("/", 2)[0]
        for later in sorted(sdir.glob("date=*")) if sdir.exists() else []:
            if later.name > f"date={key.date.isoformat()}":
                shutil.rmtree(later)
        old = read_partition(lfs, key)
        if old is None:
            continue
        kept = old.filter(pl.col("candle_begin_time").dt.epoch("ms") < start)
        if kept.height == old.height:
            continue
        if kept.height == 0:
            shutil.rmtree(root / key.path.rsplit("/", 1)[0])
        else:
            lfs.write_atomic(key.path, encode_parquet(kept))


if __name__ == "__main__":  # pragma: no cover - manual helper
    import sys

    print(ensure_lake(int(sys.argv[1]), int(sys.argv[2])))
    print(os.getpid())
