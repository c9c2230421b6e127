"""BASELINE, not lake code: the seed article's pandas loop (``resample_symbol``), for the benchmark.

For every symbol: read its base candles, then for each of the n offsets run ``DataFrame.resample``
with that offset, aggregate first/last/max/min/sum, drop bins whose first and last base candles do
not span the target, and pickle the result per offset and symbol (as the seed does). Reading the
lake's parquet partitions (with Polars, the fastest reader here) replaces the seed's reading of one
pickle per symbol; the pickles are written uncompressed (the seed used ``.pkl.zst``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import polars as pl

__all__ = ["seed_resample_lake"]

_AGG = {
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
}


def _resample_symbol(
    df: pd.DataFrame, out_dir: Path, symbol: str, base: pd.Timedelta, target: pd.Timedelta
) -> None:
    for i in range(round(target / base)):
        offset = base * i
        r = df.resample(target, offset=offset, on="candle_begin_time").agg(_AGG).reset_index(drop=True)
        r = r[(r["candle_end_time"] - r["candle_begin_time"]) >= target].set_index("candle_end_time")
        d = out_dir / f"{int(offset.total_seconds() // 60)}m"
        d.mkdir(parents=True, exist_ok=True)
        r.to_pickle(d / f"{symbol}.pkl")


def seed_resample_lake(root: str | os.PathLike[str], out_dir: str | os.PathLike[str], trade_type: str = "usdt_perp",
                       base: str = "5m", target: str = "1h") -> dict[str, float]:  # fmt: skip
    """Run the seed loop over every symbol of (trade_type, base) in the lake; seconds for read and resample."""
    series = Path(root) / f"klines/trade_type={trade_type}/interval={base}"
    b, t = pd.Timedelta(base.replace("m", "min")), pd.Timedelta(target)
    read_s = work_s = 0.0
    for sym_dir in sorted(series.iterdir()):
        symbol = sym_dir.name.split("=", 1)[1]
        t0 = time.perf_counter()
        files = sorted(str(p / "data.parquet") for p in sym_dir.iterdir() if p.name.startswith("date="))
        # The fastest reader available (Polars), so the baseline is not slowed by its I/O.
        df = pl.read_parquet(files, glob=False).drop("source").to_pandas()
        df["candle_end_time"] = df["candle_begin_time"] + b
        t1 = time.perf_counter()
        _resample_symbol(df, Path(out_dir), symbol, b, t)
        read_s += t1 - t0
        work_s += time.perf_counter() - t1
    return {"read_s": read_s, "resample_and_write_s": work_s}
