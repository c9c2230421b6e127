"""Funding rates of perpetuals into the ``funding`` table (layout in ``lake.store.tables``).

``/fapi/v1/fundingRate`` and ``/dapi/v1/fundingRate`` answer ascending rows
``{symbol, fundingTime, fundingRate, markPrice}`` for ``startTime..endTime`` (inclusive), at most
``limit`` (1000) per request. USDⓈ-M requests also pass the separate 500-per-5-minutes limiter
(``RestClient.funding_governor``). Funding times are irregular (8h, 4h or 1h apart, and a symbol's
interval changes over time), so there is no grid to check against: a run fetches what lies before
the first and after the last stored funding time within ``[start, end)``, and every stored gap that
cannot be one funding interval (``funding_gaps``). A gap the exchange really has (a trading halt)
costs one request per run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from lake.binance.markets import get_trade_type
from lake.errors import DataError
from lake.ingest.rest_client import RestClient
from lake.store.fs import LakeFS
from lake.store.tables import FUNDING_SCHEMA, read_funding, write_funding

__all__ = ["FUNDING_PAGE", "fetch_funding", "funding_frame", "funding_gaps", "sync_funding"]

FUNDING_PAGE = 1000


def funding_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Raw fundingRate rows → the funding table's columns. Raises ``DataError`` on malformed rows."""
    try:
        times = [int(r["fundingTime"]) for r in rows]
        rates = [float(r["fundingRate"]) for r in rows]
        marks = [float(m) if (m := r.get("markPrice")) not in (None, "") else None for r in rows]
        # (a hostile or buggy answer: a time of 1e400 or beyond Int64, a "NaN" rate, an "Infinity"
        # mark price must be a DataError, not a crash nor a value stored in the lake)
        if any(not 0 <= t < _MAX_MS for t in times):
            raise ValueError("a fundingTime outside 1970-9999")
        if not all(math.isfinite(x) for x in (*rates, *(m for m in marks if m is not None))):
            raise ValueError("a non-finite fundingRate or markPrice")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"malformed funding rows: {exc!r}") from exc
    return pl.DataFrame(
        {
            "funding_time": pl.Series(times, dtype=pl.Int64)
            .cast(pl.Datetime("ms"))
            .dt.replace_time_zone("UTC"),
            "funding_rate": pl.Series(rates, dtype=pl.Float64),
            "mark_price": pl.Series(marks, dtype=pl.Float64),
        },
        schema=FUNDING_SCHEMA,
    )


_MAX_MS = 253_402_300_800_000  # 10000-01-01


MAX_FUNDING_INTERVAL_MS = 8 * 3_600_000  # the longest funding interval Binance uses
_SLACK_MS = 60_000  # funding times are a few ms off the hour at times


def funding_gaps(stored: pl.DataFrame, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Ranges of ``[start_ms, end_ms)`` to fetch given the stored rows: before the first, after the
    last, and between two stored funding times that cannot be consecutive, i.e. further apart than
    the longest funding interval (8h), or at least 1.5× the spacing of their neighbours (a 1h or 4h
    symbol missing rows; a symbol moving from 4h to 8h funding is not a gap by this rule, except at
    the first or last stored spacing, which has one neighbour only: asking there again costs one
    request per run, missing a hole would lose rows). A row lost right after a move from 8h to 4h
    is not found: the stored times are those of a move one row later, so no rule on times alone can
    tell the two apart (the rows are fetched whole per window, so only a damaged store lacks one)."""
    inside = stored.filter(
        (pl.col("funding_time").dt.epoch("ms") >= start_ms) & (pl.col("funding_time").dt.epoch("ms") < end_ms)
    )
    if inside.height == 0:
        return [(start_ms, end_ms)] if start_ms < end_ms else []
    ms = np.unique(inside["funding_time"].dt.epoch("ms").to_numpy())
    first, last = int(ms[0]), int(ms[-1])
    out: list[tuple[int, int]] = []
    if first > start_ms:
        out.append((start_ms, first))
    d = np.diff(ms)
    if len(d):
        ref = np.zeros(len(d), dtype=np.int64)  # the larger neighbouring spacing (0: none)
        ref[1:] = d[:-1]
        ref[:-1] = np.maximum(ref[:-1], d[1:])
        suspect = (d > MAX_FUNDING_INTERVAL_MS + _SLACK_MS) | ((ref > 0) & (d * 2 >= ref * 3))
        out += [(int(ms[i]) + 1, int(ms[i + 1])) for i in np.flatnonzero(suspect)]
    if last + 1 < end_ms:
        out.append((last + 1, end_ms))
    return out


async def fetch_funding(client: RestClient, symbol: str, start_ms: int, end_ms: int) -> pl.DataFrame:
    """Every funding row of ``symbol`` with ``start_ms ≤ fundingTime < end_ms``.

    A full page is either the oldest or the newest ``FUNDING_PAGE`` rows of the window asked for:
    Binance documents neither for COIN-M (its klines answer the newest). Either way the page is a
    contiguous run ``[lo, hi]`` of the window's rows, so both sides of it are asked next (the side
    the order left empty costs one empty answer per full page): nothing is lost in either order.
    """
    frames: list[pl.DataFrame] = []
    todo = [(start_ms, end_ms)]
    while todo:
        a, b = todo.pop()
        if a >= b:
            continue
        rows = await client.funding_rate(symbol, start_ms=a, end_ms=b - 1, limit=FUNDING_PAGE)
        if not rows:
            continue
        df = funding_frame(rows)
        frames.append(df)
        if len(rows) < FUNDING_PAGE:
            continue
        ms = df["funding_time"].dt.epoch("ms")
        ms = ms.filter((ms >= a) & (ms < b))
        if ms.len() == 0:
            # A full page of nothing asked for (a server or proxy ignoring startTime/endTime): the
            # windows left and right of it would be [a, b) again, asked for ever. Say so instead.
            raise DataError(
                f"fundingRate {symbol}: a full page of {len(rows)} rows, none in the window asked for"
            )
        lo, hi = int(ms.min()), int(ms.max())  # type: ignore[arg-type]
        # both windows are strictly smaller than [a, b): lo and hi are inside it
        todo.append((hi + 1, b))
        todo.append((a, lo))
    if not frames:
        return pl.DataFrame(schema=FUNDING_SCHEMA)
    out = pl.concat(frames)
    ms = out["funding_time"].dt.epoch("ms")
    return (
        out.filter((ms >= start_ms) & (ms < end_ms)).unique("funding_time", keep="last").sort("funding_time")
    )


async def sync_funding(
    client: RestClient,
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    symbol: str,
    start: dt.datetime | int,
    end: dt.datetime | int,
) -> int:
    """Fetch what the funding table lacks for ``[start, end)`` and upsert it; returns rows added."""
    tt = get_trade_type(trade_type)
    s = start if isinstance(start, int) else int(start.timestamp() * 1000)
    e = end if isinstance(end, int) else int(end.timestamp() * 1000)
    stored = await asyncio.to_thread(read_funding, root, tt.name, symbol)
    added = 0
    for a, b in funding_gaps(stored, s, e):
        df = await fetch_funding(client, symbol, a, b)
        if df.height:
            n = await asyncio.to_thread(write_funding, root, tt.name, symbol, df)
            added += n
    return added
