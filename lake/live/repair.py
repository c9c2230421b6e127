"""REST side of the live appender, on #4's ingest modules (one client, one shared weight budget).

* **Catch-up** (start-up, new listings) is #4's ``lake.ingest.backfill.backfill`` run with the
  feed's open ``RestClient``: it plans from what the lake holds (stored candles and confirmed-empty
  ranges), so it fills the tail after the last stored candle *and* any hole left by a killed run,
  writes per partition and records confirmed-empty slots. ``catchup_start`` picks where each symbol
  starts; symbols sharing a start go in one call.
* **Period repair** is latency-sensitive and targeted (a few (symbol, period) pairs per boundary),
  so it asks for exactly those slots: ``fetch_closed`` pages them with #4's ``plan_pages`` (windows
  of exactly ``limit`` slots, right on every market incl. COIN-M) through ``client.klines``, which
  takes weight permits from the shared governor, retries and handles 429/418.

Only closed candles are ever asked for: callers bound ranges by the server clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import DataError, LakeError, NotFoundError, UnreadableJsonError
from lake.ingest.pages import answer_gaps, plan_pages
from lake.ingest.rest_client import RestClient
from lake.store.fs import LakeFS
from lake.store.klines import list_partitions, to_lakefs
from lake.store.meta import read_json, write_json

__all__ = [
    "FetchResult",
    "catchup_start",
    "fetch_closed",
    "fetch_many",
    "last_stored",
    "read_pending_catchup",
    "read_provisional",
    "write_pending_catchup",
    "write_provisional",
]

PENDING_DIR = "_meta/live_catchup"  # not under _meta/live: the watermark view globs that

log = logging.getLogger("lake.live.repair")


class FetchResult:
    """Rows of one symbol's range and the slots the answers prove empty."""

    __slots__ = ("empty", "rows")

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.empty: list[tuple[int, int]] = []

    def empty_opens(self, iv: Interval) -> set[int]:
        out: set[int] = set()
        for a, b in self.empty:
            out.update(iv.opens(a, b))
        return out


async def fetch_closed(client: RestClient, symbol: str, interval: str, start: int, end: int) -> FetchResult:
    """Closed candles of ``symbol`` opening in ``[start, end)`` (ascending, one per slot) and the
    slots proven empty. ``end`` must be at most the open of the still-forming candle.

    Raises the client's errors (``UpstreamError``, ``NotFoundError`` …).
    """
    iv = parse_interval(interval)
    out = FetchResult()
    rows: dict[int, list[Any]] = {}
    pages = plan_pages(client.market, iv, start, end)
    while pages:
        page = pages.pop(0)
        got = await client.klines(
            symbol, iv.name, start_ms=page.start_ms, end_ms=page.end_time, limit=page.limit
        )
        opens: list[int] = []
        for r in got:
            t = _open_ms(r, symbol)
            if page.start_ms <= t < page.end_ms:
                rows[t] = list(r)
                opens.append(t)
        opens.sort()
        gaps, unresolved = answer_gaps(iv, page, opens, recent_first=client.market.name == "cm")
        out.empty.extend(gaps)
        if unresolved is not None:
            pages[:0] = plan_pages(client.market, iv, *unresolved)
    out.rows = [rows[t] for t in sorted(rows)]
    return out


def _open_ms(row: Any, symbol: str) -> int:
    """The open time of one REST kline row; a row that is not one (a hostile or buggy upstream:
    an object, a number, ``"x"``, 1e400) is this symbol's ``DataError``, not an exception that
    escapes ``fetch_many`` and stops ``lake live``. Its values are checked where it is stored."""
    try:
        if not isinstance(row, (list, tuple)) or len(row) < 11 or isinstance(row[0], bool):
            raise TypeError("not a kline row of 12 fields")
        return int(row[0])
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{symbol}: malformed kline row {row!r:.100}: {exc}") from exc


async def fetch_many(
    client: RestClient, interval: str, ranges: Mapping[str, tuple[int, int]], *, concurrency: int = 16
) -> tuple[dict[str, FetchResult], dict[str, str]]:
    """``fetch_closed`` for many symbols at once (at most ``concurrency`` in flight).

    Returns ``(results, errors)``: every symbol ends in exactly one of them (nothing is dropped
    silently). A symbol the exchange does not know (``NotFoundError``) gets a result whose whole
    range is empty: it has no candles there.
    """
    sem = asyncio.Semaphore(concurrency)
    results: dict[str, FetchResult] = {}
    errors: dict[str, str] = {}

    async def one(sym: str, start: int, end: int) -> None:
        async with sem:
            try:
                results[sym] = await fetch_closed(client, sym, interval, start, end)
            except NotFoundError as exc:
                log.warning("%s: unknown to the exchange (%s)", sym, exc)
                gone = FetchResult()
                gone.empty.append((start, end))
                results[sym] = gone
            except LakeError as exc:
                errors[sym] = str(exc)

    await asyncio.gather(*(one(s, a, b) for s, (a, b) in ranges.items()))
    return results, errors


def catchup_start(
    iv: Interval, end: int, *, last: int | None, watermark: int | None, history: int
) -> int | None:
    """Where one symbol's catch-up starts so that it is complete up to ``end`` (exclusive).

    * nothing stored: the last ``history`` candles before ``end`` (None when ``history`` is 0);
    * stored: after the last stored candle, or after the previous run's watermark if that is
      earlier (the backfill plan then finds any hole the killed run had not repaired yet).

    Returns None when there is nothing to fetch.
    """
    assert iv.ms is not None
    if last is None:
        return end - history * iv.ms if history > 0 else None
    start = last + iv.ms
    if watermark is not None:
        start = min(start, watermark + iv.ms)
    return start if start < end else None


def _pending_path(trade_type: str, interval: str) -> str:
    tt = get_trade_type(trade_type)
    return f"{PENDING_DIR}/{tt.name}/{parse_interval(interval, spot=tt.is_spot).name}.json"


def read_pending_catchup(lfs: LakeFS, trade_type: str, interval: str) -> dict[str, int]:
    """Catch-up starts a previous run recorded and did not finish (``{symbol: start ms}``).

    A run stopped during its catch-up has meanwhile stored the newest candles from the websocket,
    so planning from the last stored candle would skip the history it never fetched.
    """
    try:
        raw = read_json(lfs, _pending_path(trade_type, interval))
    except UnreadableJsonError:
        log.warning("%s %s: unreadable pending catch-up record ignored", trade_type, interval)
        return {}
    out: dict[str, int] = {}
    for sym, start in raw.items() if isinstance(raw, dict) else ():
        try:
            out[validate_symbol(sym)] = int(start)
        except (LakeError, TypeError, ValueError):
            continue
    return out


def write_pending_catchup(lfs: LakeFS, trade_type: str, interval: str, pending: Mapping[str, int]) -> None:
    """Record the catch-up starts still to do (atomically); no record when nothing is pending."""
    rel = _pending_path(trade_type, interval)
    if pending:
        write_json(lfs, rel, dict(pending))
    elif lfs.exists(rel):
        lfs.remove(rel)


def _provisional_path(trade_type: str, interval: str) -> str:
    tt = get_trade_type(trade_type)
    return f"{PENDING_DIR}/{tt.name}/{parse_interval(interval, spot=tt.is_spot).name}-provisional.json"


def read_provisional(lfs: LakeFS, trade_type: str, interval: str) -> dict[tuple[str, int], list[Any]]:
    """Candles a previous run stored from REST before they were final and had not asked for again
    (``{(symbol, open ms): REST row}``).

    They are under that run's watermark and its successor's catch-up starts after them: without
    this record a run stopped within half a minute of such a repair kept its early values for good.
    """
    try:
        raw = read_json(lfs, _provisional_path(trade_type, interval))
    except UnreadableJsonError:
        log.warning("%s %s: unreadable record of provisional candles ignored", trade_type, interval)
        return {}
    out: dict[tuple[str, int], list[Any]] = {}
    for sym, rows in raw.items() if isinstance(raw, dict) else ():
        try:
            sym = validate_symbol(sym)
        except LakeError:
            continue
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, list) and len(row) >= 11 and isinstance(row[0], int):
                out[(sym, row[0])] = row
    return out


def write_provisional(
    lfs: LakeFS, trade_type: str, interval: str, rows: Mapping[tuple[str, int], Sequence[Any]]
) -> None:
    """Record the provisional candles (atomically); no record when there is none."""
    rel = _provisional_path(trade_type, interval)
    if rows:
        doc: dict[str, list[list[Any]]] = {}
        for (sym, _t), row in sorted(rows.items()):
            doc.setdefault(sym, []).append(list(row))
        write_json(lfs, rel, doc)
    elif lfs.exists(rel):
        lfs.remove(rel)


def _opens_in(lfs: LakeFS, path: str) -> list[int]:
    data = lfs.read_bytes_or_none(path)
    if data is None:
        return []
    # (the bytes themselves, not io.BytesIO(data): Polars 2.1 keeps a small object alive for every
    # file-like object it reads, never freed, which in a process that runs for months adds up)
    col = pl.read_parquet(data, columns=["candle_begin_time"])["candle_begin_time"]
    return [int(v) for v in col.dt.epoch("ms").to_list()]


def last_stored(
    root: str | os.PathLike[str] | LakeFS, trade_type: str, interval: str, symbol: str
) -> int | None:
    """Open time (ms) of the last stored candle of one series, or None (reads one partition)."""
    lfs = to_lakefs(root)
    keys = sorted(list_partitions(lfs, trade_type, interval, symbol), key=lambda k: k.date)
    for key in reversed(keys):
        opens = _opens_in(lfs, key.path)
        if opens:
            return max(opens)
    return None
