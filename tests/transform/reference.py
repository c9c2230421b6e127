"""Straightforward reference implementations the fast resampler is checked against.

``seed_resample`` is the seed's pandas ``resample_symbol`` for one symbol and one offset, generalised
from 1h/5m to any (T, B): ``DataFrame.resample`` with the offset, first/max/min/last/sum, then drop
bins whose first and last base candles do not span T. Pandas' default origin (``start_day``) is used
whenever T divides a day, as in the seed; other T are anchored at the epoch (weekly: first Monday).

``binance_resample`` is a plain Python loop over bins applying Binance's rule (zero-volume candles do
not move open/high/low).
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import polars as pl

SUMS = ["volume", "quote_volume", "trade_num", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"]
DAY_MS = 86_400_000
MONDAY_MS = 4 * DAY_MS


def _anchor(t_ms: int) -> int:
    return MONDAY_MS if t_ms == 7 * DAY_MS else 0


def seed_resample(df: pl.DataFrame, t_ms: int, b_ms: int, k: int) -> pl.DataFrame:
    """One symbol's bins of offset ``k`` (the seed's pandas code); columns as ``OFFSET_SCHEMA``."""
    pdf = df.select("candle_begin_time", "open", "high", "low", "close", *SUMS).to_pandas()
    pdf["candle_end_time"] = pdf["candle_begin_time"] + pd.Timedelta(milliseconds=b_ms)
    pdf["n_base"] = 1
    if DAY_MS % t_ms == 0:
        origin: str | pd.Timestamp = "start_day"
    else:
        origin = pd.Timestamp(_anchor(t_ms), unit="ms", tz="UTC")
    agg = {
        "candle_begin_time": "first",
        "candle_end_time": "last",
        "open": "first",
        "high": "max",
        "low": "min",
        "close": "last",
        **dict.fromkeys(SUMS, "sum"),
        "n_base": "sum",
    }
    out = (
        pdf.resample(
            pd.Timedelta(milliseconds=t_ms),
            offset=pd.Timedelta(milliseconds=k * b_ms),
            on="candle_begin_time",
            origin=origin,
        )
        .agg(agg)
        .reset_index(drop=True)
    )
    out = out[(out["candle_end_time"] - out["candle_begin_time"]) >= pd.Timedelta(milliseconds=t_ms)]
    out = out.drop(columns="candle_end_time")
    return pl.from_pandas(out).with_columns(
        pl.col("candle_begin_time").dt.cast_time_unit("ms"),
        pl.col("trade_num", "n_base").cast(pl.Int64),
    )


def binance_resample(
    df: pl.DataFrame, t_ms: int, b_ms: int, k: int, empty: list[tuple[int, int]] | None = None
) -> pl.DataFrame:
    """One symbol's bins of offset ``k`` under Binance's rule, by a plain loop over bins. With
    ``empty`` (ranges the exchange confirmed to have no candles; candles on the grid only), the span
    rule counts confirmed-empty slots as present: a bin is kept when its first slot and its last slot
    each hold a candle or are confirmed empty (a hole inside stays allowed, as in the seed)."""
    rows = df.sort("candle_begin_time").to_dicts()
    anchor = _anchor(t_ms) + k * b_ms
    bins: dict[int, list[dict]] = {}
    for r in rows:
        t = int(r["candle_begin_time"].timestamp() * 1000)
        start = anchor + (t - anchor) // t_ms * t_ms
        bins.setdefault(start, []).append(r)
    out = []
    for start, rs in sorted(bins.items()):
        first_t = int(rs[0]["candle_begin_time"].timestamp() * 1000)
        last_t = int(rs[-1]["candle_begin_time"].timestamp() * 1000)
        if empty is not None:
            ends = (start, start + t_ms - b_ms)
            known = {first_t, last_t}
            if any(s not in known and not any(a <= s < b for a, b in empty) for s in ends):
                continue
            first_t = start
        elif last_t + b_ms - first_t < t_ms:  # the seed's span rule (on the grid: first and last slot)
            continue
        traded = [r for r in rs if r["volume"] > 0] or rs
        row = {
            "candle_begin_time": dt.datetime.fromtimestamp(first_t / 1000, dt.UTC),  # pandas' first
            "open": traded[0]["open"],
            "high": max(r["high"] for r in traded),
            "low": min(r["low"] for r in traded),
            "close": rs[-1]["close"],
        }
        for c in SUMS:
            row[c] = sum(r[c] for r in rs)
        row["n_base"] = len(rs)
        out.append(row)
    schema = {
        "candle_begin_time": pl.Datetime("ms", "UTC"),
        **dict.fromkeys(["open", "high", "low", "close"], pl.Float64),
        **{c: (pl.Int64 if c == "trade_num" else pl.Float64) for c in SUMS},
        "n_base": pl.Int64,
    }
    return pl.DataFrame(out, schema=schema)
