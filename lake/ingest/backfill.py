"""REST backfill: fetch exactly what the lake lacks, at the weight limit, writing as it goes.

    report = await backfill(root, ["usdt_perp", "usdt_spot"], "5m", days=15, settings=settings)
    report = await backfill(root, ["usdt_perp"], "1m", start=t0, end=t1, symbols=["BTCUSDT"],
                            clients={"um": client})          # reuse an open RestClient

Per market (trade types of one market share one client, one governor, one budget):

1. exchangeInfo → the universe of each trade type (``lake.ingest.universe``) and an
   ``exchange_info`` snapshot; the governor adopts the REQUEST_WEIGHT limit.
2. "now" is the server's time; only closed candles are fetched (``end`` is capped at the open of
   the candle still forming).
3. The plan starts from the lake: per symbol, the slot ranges in ``[start, end)`` neither stored
   nor confirmed empty (``lake.store.meta``; ``recheck=True`` ignores and re-derives those).
4. Each missing range is fetched in pages of exactly ``limit`` slots (``lake.ingest.pages``). The
   first page of a range goes first; when it is empty, one ``limit=1`` probe finds the symbol's next
   candle (listed after ``start``), so a young symbol costs two requests, not one per page. All
   other pages of all symbols are fetched concurrently, as fast as the governor allows.
5. Rows are buffered per partition and written (``write_klines``: upsert, atomic) as soon as every
   page overlapping that partition is answered; slots a full answer lacks are recorded as confirmed
   empty in the same step. A run killed at any point loses at most the partitions in flight; the
   next run's plan refetches exactly those.
6. A page that still fails after the client's retries is listed; the run goes on with the rest,
   then raises ``IncompleteError`` naming every missing range (nothing is skipped silently). After
   ``abort_after`` consecutive failures the remaining pages are not attempted (and listed too).

Slots whose candle would have closed less than ``settle_ms`` before server "now" are fetched but a
missing one there is neither recorded as empty nor reported missing (the exchange may not have it
yet); the next run asks again.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from lake.binance.intervals import MS_PER_DAY, Interval, parse_interval
from lake.binance.klines import REST_FLOAT_FIELDS, klines_from_rest
from lake.binance.markets import Endpoints, TradeType, get_trade_type
from lake.binance.symbols import validate_symbol, validate_symbols
from lake.errors import IncompleteError, LakeError, NotFoundError, ValidationError
from lake.ingest.funding import sync_funding
from lake.ingest.pages import Page, answer_gaps, missing_ranges, plan_pages
from lake.ingest.rest_client import RestClient
from lake.ingest.universe import Universe, fetch_exchange_info, universe, write_snapshot
from lake.progress import Progress
from lake.schema import KLINE_SCHEMA
from lake.store.fs import LakeFS
from lake.store.klines import collect_named, list_partitions, scan_klines, write_klines
from lake.store.meta import EmptyRange, add_empty_ranges, clear_empty_ranges, read_empty_ranges
from lake.store.paths import partition_end, partition_start

__all__ = [
    "BackfillReport",
    "MarketReport",
    "SeriesReport",
    "backfill",
    "resolve_range",
]

log = logging.getLogger("lake.ingest.backfill")


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SeriesReport:
    """What a run did for one (trade type, interval, symbol)."""

    trade_type: str
    interval: str
    symbol: str
    start_ms: int
    end_ms: int
    planned: int = 0  # slots missing at plan time
    fetched: int = 0  # candles received (closed, inside the range)
    written: int = 0  # candles new to the lake
    empty: int = 0  # slots confirmed empty by this run
    requests: int = 0
    first_ms: int | None = None  # first candle in range (stored or fetched)
    last_ms: int | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``up_to_date``, ``complete``, ``short_history`` (starts after start), ``ended`` (stops
        before end: delisted/halted), ``no_data`` or ``incomplete``."""
        if self.missing:
            return "incomplete"
        if self.planned == 0:
            return "up_to_date"
        if self.first_ms is None:
            return "no_data"
        if self.first_ms > self.start_ms:
            return "short_history"
        if self.last_ms is not None and parse_interval(self.interval).next_open(self.last_ms) < self.end_ms:
            return "ended"
        return "complete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "trade_type": self.trade_type,
            "interval": self.interval,
            "symbol": self.symbol,
            "start": _iso(self.start_ms),
            "end": _iso(self.end_ms),
            "status": self.status,
            "planned": self.planned,
            "fetched": self.fetched,
            "written": self.written,
            "empty": self.empty,
            "requests": self.requests,
            "first": _iso(self.first_ms),
            "last": _iso(self.last_ms),
            "missing": list(self.missing),
        }


@dataclass
class MarketReport:
    """Weight accounting of one market's client during the run."""

    market: str
    weight_limit: int
    window_ms: int
    requests: int = 0
    weight: int = 0
    status: dict[str, int] = field(default_factory=dict)
    server_ms: float = 0.0  # server time the run spanned on this market
    clock_rate: float = 1.0

    @property
    def utilisation(self) -> float:
        """Weight used ÷ weight the elapsed windows allowed (server time; at least one window)."""
        return self.weight / (self.weight_limit * max(self.server_ms, self.window_ms) / self.window_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "market": self.market,
            "weight_limit": self.weight_limit,
            "window_ms": self.window_ms,
            "requests": self.requests,
            "weight": self.weight,
            "status": self.status,
            "server_seconds": round(self.server_ms / 1000, 3),
            "clock_rate": round(self.clock_rate, 4),
            "utilisation": round(self.utilisation, 4),
        }


@dataclass
class BackfillReport:
    interval: str
    series: list[SeriesReport] = field(default_factory=list)
    markets: dict[str, MarketReport] = field(default_factory=dict)
    funding_rows: int = 0
    funding_missing: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def symbols(self) -> int:
        return len(self.series)

    @property
    def candles(self) -> int:
        return sum(s.written for s in self.series)

    @property
    def fetched(self) -> int:
        return sum(s.fetched for s in self.series)

    @property
    def holes(self) -> int:
        """Slots confirmed empty by the exchange during this run (maintenance, before listing, …)."""
        return sum(s.empty for s in self.series)

    @property
    def missing(self) -> list[str]:
        return [m for s in self.series for m in s.missing] + list(self.funding_missing)

    @property
    def utilisation(self) -> float:
        """Mean weight utilisation over the markets used."""
        vals = [m.utilisation for m in self.markets.values() if m.server_ms > 0]
        return sum(vals) / len(vals) if vals else 0.0

    def to_dict(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for s in self.series:
            by_status[s.status] = by_status.get(s.status, 0) + 1
        return {
            "interval": self.interval,
            "symbols": self.symbols,
            "candles": self.candles,
            "fetched": self.fetched,
            "holes": self.holes,
            "funding_rows": self.funding_rows,
            "elapsed_s": round(self.elapsed_s, 3),
            "utilisation": round(self.utilisation, 4),
            "by_status": by_status,
            "markets": {k: v.to_dict() for k, v in self.markets.items()},
            "missing": self.missing,
            "series": [s.to_dict() for s in self.series],
        }


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _to_ms(t: dt.datetime | int | None, name: str) -> int | None:
    if t is None:
        return None
    if isinstance(t, int):
        return t
    if t.tzinfo is None:
        raise ValidationError(f"naive datetime for {name}: pass a timezone-aware (UTC) datetime")
    return math.floor(t.timestamp() * 1000)


def resolve_range(
    interval: Interval,
    server_now_ms: int,
    *,
    start: dt.datetime | int | None = None,
    end: dt.datetime | int | None = None,
    days: float | None = None,
) -> tuple[int, int]:
    """``[start, end)`` in ms: aligned to the interval, ``end`` capped at the candle still forming."""
    closed_end = interval.floor(server_now_ms)
    end_ms = _to_ms(end, "end")
    e = closed_end if end_ms is None else min(end_ms, closed_end)
    if days is not None:
        s = e - int(days * MS_PER_DAY)
    else:
        start_ms = _to_ms(start, "start")
        assert start_ms is not None
        s = start_ms
    # Binance has nothing before 2017, and a negative startTime (--days 36500) is not a value its
    # API documents: start at the epoch at the earliest.
    s = max(s, 0)
    first = interval.floor(s)
    s = first if first >= s else interval.next_open(first)
    return s, max(s, e)


def _validate(
    trade_types: Sequence[str],
    interval: str,
    start: dt.datetime | int | None,
    end: dt.datetime | int | None,
    days: float | None,
) -> tuple[list[TradeType], Interval]:
    if not trade_types:
        raise ValidationError("no trade type given")
    tts = list({t.name: t for t in (get_trade_type(x) for x in trade_types)}.values())
    iv = parse_interval(interval, spot=all(t.is_spot for t in tts))
    if (days is None) == (start is None):
        raise ValidationError("give either --days or --start (not both)")
    if days is not None and not (days > 0 and math.isfinite(days)):
        raise ValidationError(f"--days must be a positive number, got {days:g}")
    s, e = _to_ms(start, "start"), _to_ms(end, "end")
    if s is not None and e is not None and s >= e:
        raise ValidationError(f"--start {_iso(s)} is not before --end {_iso(e)}")
    return tts, iv


# ----------------------------------------------------------------------------------------------
# Per-series state
# ----------------------------------------------------------------------------------------------


@dataclass
class _Part:
    pending: int = 0
    frames: list[pl.DataFrame] = field(default_factory=list)
    empties: list[tuple[int, int]] = field(default_factory=list)


class _Series:
    def __init__(self, tt: TradeType, iv: Interval, symbol: str, report: SeriesReport, record_until: int):
        self.tt = tt
        self.iv = iv
        self.symbol = symbol
        self.report = report
        self.record_until = record_until
        self.parts: dict[dt.date, _Part] = {}
        self.ready: list[tuple[dt.date, _Part]] = []  # complete partitions not yet handed to a writer
        self.outstanding = 0
        self.done = False

    def partitions(self, a: int, b: int) -> list[dt.date]:
        out: list[dt.date] = []
        d = partition_start(self.iv, a)
        while _date_ms(d) < b:
            out.append(d)
            d = partition_end(self.iv, d)
        return out

    def register(self, a: int, b: int) -> None:
        self.outstanding += 1
        for d in self.partitions(a, b):
            self.parts.setdefault(d, _Part()).pending += 1

    def add(self, rows: pl.DataFrame, opens: list[int], empties: Iterable[tuple[int, int]]) -> None:
        """Buffer a page's rows (sorted by open) and confirmed-empty ranges into their partitions."""
        if opens:
            for d in self.partitions(opens[0], opens[-1] + 1):
                lo = bisect.bisect_left(opens, _date_ms(d))
                hi = bisect.bisect_left(opens, _date_ms(partition_end(self.iv, d)))
                if hi > lo:
                    self.parts.setdefault(d, _Part()).frames.append(rows.slice(lo, hi - lo))
        for a, b in empties:
            b = min(b, self.record_until)
            if b <= a:
                continue
            self.report.empty += self.iv.count(a, b)
            for d in self.partitions(a, b):
                pa, pb = max(a, _date_ms(d)), min(b, _date_ms(partition_end(self.iv, d)))
                self.parts.setdefault(d, _Part()).empties.append((pa, pb))

    def release(self, a: int, b: int) -> list[tuple[dt.date, _Part]]:
        """A page over ``[a, b)`` is finished; return the partitions now complete."""
        self.outstanding -= 1
        ready: list[tuple[dt.date, _Part]] = []
        for d in self.partitions(a, b):
            p = self.parts[d]
            p.pending -= 1
            if p.pending == 0:
                ready.append((d, self.parts.pop(d)))
        return ready

    def seen(self, first: int, last: int) -> None:
        r = self.report
        r.first_ms = first if r.first_ms is None else min(r.first_ms, first)
        r.last_ms = last if r.last_ms is None else max(r.last_ms, last)


def _date_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class _Job:
    series: _Series
    page: Page
    kind: str  # "first" (first page of a missing range), "page", "probe"
    range_end: int


# ----------------------------------------------------------------------------------------------
# One market
# ----------------------------------------------------------------------------------------------


class _MarketRun:
    def __init__(
        self,
        client: RestClient,
        root: LakeFS,
        tts: list[TradeType],
        iv: Interval,
        *,
        symbols: Mapping[str, Sequence[str] | None],
        start: dt.datetime | int | None,
        end: dt.datetime | int | None,
        days: float | None,
        recheck: bool,
        funding: bool,
        settle_ms: int,
        workers: int,
        abort_after: int,
        unknown_symbols: str,
        pool: ThreadPoolExecutor,
        progress: Progress | None,
        skip: Mapping[str, Mapping[str, Sequence[tuple[int, int]]]] | None = None,
    ) -> None:
        self.client = client
        self.skip = skip or {}
        self.market = client.market
        self.root = root
        self.tts = tts
        self.iv = iv
        self.symbols = symbols
        self.start, self.end, self.days = start, end, days
        self.recheck = recheck
        self.funding = funding
        self.settle_ms = settle_ms
        self.workers = workers
        self.abort_after = abort_after
        self.unknown_symbols = unknown_symbols
        self.claimed: set[str] = set()  # whitelisted symbols a trade type of this market lists
        self.flush_partitions = 8
        self.pool = pool
        self.progress = progress
        self.series: list[_Series] = []
        self.queue: deque[_Job] = deque()
        self.wake = asyncio.Event()
        self.active = 0
        self.failures_in_row = 0
        self.aborted: str | None = None
        self.writes: set[asyncio.Future[None]] = set()
        self.write_error: BaseException | None = None
        self.tasks: dict[str, int] = {}
        self.done_by_tt: dict[str, int] = {}
        self.fetched_by_tt: dict[str, int] = {}
        self.funding_rows = 0
        self.funding_missing: list[str] = []
        self.t0_server = 0.0
        self.weight0 = 0
        self.requests0 = 0
        self.status0: dict[int, int] = {}

    async def _io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- planning --------------------------------------------------------------------------------
    async def plan(self) -> None:
        snap = await fetch_exchange_info(self.client)
        await self._io(write_snapshot, self.root, snap, [t.name for t in self.tts])
        now = await self.client.server_time()
        s, e = resolve_range(self.iv, now, start=self.start, end=self.end, days=self.days)
        # slots opening before record_until closed at least settle_ms ago: their absence is final
        record_until = max(s, min(e, self.iv.floor(now - self.settle_ms)))
        for tt in self.tts:
            wanted = self.symbols.get(tt.name)
            if wanted is not None and self.unknown_symbols in ("skip", "shared"):
                listed = snap.listed(tt, wanted)
                skipped = sorted(set(wanted) - set(listed), key=wanted.index)
                if skipped and self.unknown_symbols == "skip":
                    log.warning(
                        "%s: skipping symbols unknown to exchangeInfo: %s", tt.name, ", ".join(skipped)
                    )
                wanted = listed
                self.claimed.update(wanted)
            uni: Universe = universe(snap, tt, wanted)
            log.info(
                "%s %s: %d symbols, %s → %s (server now %s)",
                tt.name,
                self.iv.name,
                len(uni),
                _iso(s),
                _iso(e),
                _iso(now),
            )
            stored = await self._io(_stored_opens, self.root, tt.name, self.iv, uni.symbols, s, e)
            for sym in uni.symbols:
                empties = await self._io(_empties, self.root, tt.name, self.iv.name, sym, self.recheck)
                empties = sorted([*empties, *self.skip.get(tt.name, {}).get(sym, ())])
                opens = stored.get(sym, _NO_OPENS)
                rep = SeriesReport(tt.name, self.iv.name, sym, s, e)
                if len(opens):
                    rep.first_ms, rep.last_ms = int(opens.min()), int(opens.max())
                ser = _Series(tt, self.iv, sym, rep, record_until)
                ranges = missing_ranges(self.iv, s, e, opens, empties)
                rep.planned = sum(self.iv.count(a, b) for a, b in ranges)
                self.series.append(ser)
                for a, b in ranges:
                    pages = plan_pages(self.market, self.iv, a, b)
                    if pages:
                        ser.register(pages[0].start_ms, pages[0].end_ms)
                        self.queue.append(_Job(ser, pages[0], "first", b))
                if ser.outstanding == 0:
                    ser.done = True
            self.done_by_tt[tt.name] = sum(1 for x in self.series if x.tt is tt and x.done)
            self.fetched_by_tt[tt.name] = 0
            if self.progress is not None:
                self.tasks[tt.name] = self.progress.add(f"{tt.name} {self.iv.name}", total=len(uni), info="")
                self.progress.update(self.tasks[tt.name], completed=self.done_by_tt[tt.name])

    # -- fetching --------------------------------------------------------------------------------
    async def prepare(self) -> None:
        """Plan the market's series (exchangeInfo, the stored candles); nothing is fetched yet."""
        self.weight0, self.requests0 = self.client.stats.weight, self.client.stats.requests
        self.status0 = dict(self.client.stats.status)
        self.t0_server = self.client.clock.now_ms()
        await self.plan()

    async def run(self) -> None:
        """Fetch and store what ``prepare`` planned."""
        if self.recheck:
            # Only now, when nothing can stop the run before it re-derives them (an unknown symbol
            # of a shared whitelist is found after every market has planned).
            for ser in self.series:
                r = ser.report
                await self._io(
                    _forget_empties, self.root, r.trade_type, r.interval, r.symbol, r.start_ms, r.end_ms
                )
        ticker = asyncio.create_task(self._tick())
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.workers):
                    tg.create_task(self._worker())
            if self.writes:
                await asyncio.gather(*self.writes)
            if self.write_error is not None:
                raise self.write_error
            if self.funding:
                await self._funding()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)  # only the cancellation
            self._show()

    async def _worker(self) -> None:
        while True:
            if not self.queue:
                if self.active == 0:
                    self.wake.set()
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            job = self.queue.popleft()
            self.active += 1
            try:
                await self._do(job)
            finally:
                self.active -= 1
                if self.queue or self.active == 0:
                    self.wake.set()

    async def _do(self, job: _Job) -> None:
        ser, page = job.series, job.page
        if self.aborted is not None:
            self._fail(job, f"not attempted: {self.aborted}")
            return
        try:
            if job.kind == "probe":
                first = await self._find_first(ser, page.start_ms, job.range_end)
                self.failures_in_row = 0
                self._after_probe(job, first)
                return
            ser.report.requests += 1
            rows = await self.client.klines(
                ser.symbol, self.iv.name, start_ms=page.start_ms, end_ms=page.end_time, limit=page.limit
            )
            parsed = self._parse(ser, page, rows)
        except LakeError as exc:
            self.failures_in_row += 1
            if self.failures_in_row >= self.abort_after and self.aborted is None:
                self.aborted = f"aborted after {self.failures_in_row} failed requests in a row (last: {exc})"
                log.error("%s: %s", self.market.name, self.aborted)
            self._fail(job, str(exc))
            return
        self.failures_in_row = 0
        df, opens = parsed
        gaps, unresolved = answer_gaps(self.iv, page, opens, recent_first=self.market.name == "cm")
        if unresolved is not None:
            for p in plan_pages(self.market, self.iv, *unresolved):
                ser.register(p.start_ms, p.end_ms)
                self.queue.append(_Job(ser, p, "page", job.range_end))
        if job.kind == "first" and page.end_ms < job.range_end:
            if opens:
                for p in plan_pages(self.market, self.iv, page.end_ms, job.range_end):
                    ser.register(p.start_ms, p.end_ms)
                    self.queue.append(_Job(ser, p, "page", job.range_end))
            else:
                probe = Page(page.end_ms, job.range_end, 1, self.market.kline_weight(1))
                ser.register(probe.start_ms, probe.end_ms)
                self.queue.appendleft(_Job(ser, probe, "probe", job.range_end))
        if opens:
            ser.seen(opens[0], opens[-1])
            ser.report.fetched += len(opens)
            self.fetched_by_tt[ser.tt.name] += len(opens)
        ser.add(df, opens, gaps)
        self._finish(ser, page.start_ms, page.end_ms)

    def _parse(self, ser: _Series, page: Page, rows: list[list[Any]]) -> tuple[pl.DataFrame, list[int]]:
        keep = [r for r in rows if isinstance(r, list) and r and page.start_ms <= int(r[0]) < page.end_ms]
        if any(int(keep[i][0]) >= int(keep[i + 1][0]) for i in range(len(keep) - 1)):
            keep.sort(key=lambda r: int(r[0]))
            keep = [r for i, r in enumerate(keep) if i == 0 or int(r[0]) != int(keep[i - 1][0])]
        return rows_frame(keep), [int(r[0]) for r in keep]

    async def _find_first(self, ser: _Series, a: int, b: int) -> int | None:
        """Open time of the first candle in ``[a, b)``, or None: one ``limit=1`` request on spot and
        USDⓈ-M with ``startTime`` only (documented for spot, relied on by every client for USDⓈ-M:
        the oldest rows from startTime; how USDⓈ-M picks rows when endTime is set too is not
        documented, and answering the newest would make the probe find the last candle); on COIN-M,
        which answers the *latest* row of a window of at most 200 days, a scan over such windows and
        a binary search inside the first non-empty one.
        """

        async def last_or_first(lo: int, hi: int, *, open_ended: bool = False) -> int | None:
            ser.report.requests += 1
            end = None if open_ended else hi - 1
            rows = await self.client.klines(ser.symbol, self.iv.name, start_ms=lo, end_ms=end, limit=1)
            opens = [int(r[0]) for r in rows if isinstance(r, list) and r and lo <= int(r[0]) < hi]
            return min(opens) if opens else None

        if self.market.name != "cm":
            return await last_or_first(a, b, open_ended=True)
        span = (self.market.kline_max_span_days or 200) * MS_PER_DAY - 1
        w = a
        while w < b:
            w2 = min(b, w + span)
            last = await last_or_first(w, w2)
            if last is not None:
                lo, hi = w, self.iv.floor(last)  # a candle opens at hi; the first is in [lo, hi]
                while self.iv.count(lo, hi) > 0:
                    mid = self.iv.floor(lo + (hi - lo) // 2)
                    mid = mid if mid > lo else self.iv.next_open(lo)
                    found = await last_or_first(lo, mid)
                    if found is None:
                        lo = mid
                    else:
                        hi = self.iv.floor(found)
                        if hi <= lo:
                            break
                return hi
            w = w2
        return None

    def _after_probe(self, job: _Job, first: int | None) -> None:
        ser, page = job.series, job.page
        if first is None:
            ser.add(pl.DataFrame(), [], [(page.start_ms, job.range_end)])
        else:
            first = self.iv.floor(first)
            ser.add(pl.DataFrame(), [], [(page.start_ms, first)] if first > page.start_ms else [])
            for p in plan_pages(self.market, self.iv, first, job.range_end):
                ser.register(p.start_ms, p.end_ms)
                self.queue.appendleft(_Job(ser, p, "page", job.range_end))
        self._finish(ser, page.start_ms, page.end_ms)

    def _fail(self, job: _Job, reason: str) -> None:
        ser, page = job.series, job.page
        end = job.range_end if job.kind == "probe" else page.end_ms
        ser.report.missing.append(
            f"{ser.tt.name} {self.iv.name} {ser.symbol} [{_iso(page.start_ms)}, {_iso(end)}): {reason}"
        )
        if job.kind == "first" and page.end_ms < job.range_end:
            ser.report.missing.append(
                f"{ser.tt.name} {self.iv.name} {ser.symbol} [{_iso(page.end_ms)}, {_iso(job.range_end)}): "
                "not attempted (first page failed)"
            )
        self._finish(ser, page.start_ms, page.end_ms)

    def _finish(self, ser: _Series, a: int, b: int) -> None:
        for d, part in ser.release(a, b):
            if part.frames or part.empties:
                ser.ready.append((d, part))
        if ser.ready and (ser.outstanding == 0 or len(ser.ready) >= self.flush_partitions):
            # complete partitions go to the lake together (one upsert call, one empty-range update)
            parts, ser.ready = ser.ready, []
            fut = asyncio.ensure_future(self._write(ser, parts))
            self.writes.add(fut)
            fut.add_done_callback(self._written)
        if ser.outstanding == 0 and not ser.done:
            ser.done = True
            self.done_by_tt[ser.tt.name] += 1
            rep = ser.report
            if rep.status == "short_history":
                log.info(
                    "%s %s: history starts %s, after the requested start",
                    rep.trade_type,
                    rep.symbol,
                    _iso(rep.first_ms),
                )
            if self.progress is not None:  # with the counts: the last series' update is the "done" line
                tt = ser.tt.name
                self.progress.update(self.tasks[tt], completed=self.done_by_tt[tt], info=self._info(tt))

    async def _write(self, ser: _Series, parts: list[tuple[dt.date, _Part]]) -> None:
        frames = [f for _, p in parts for f in p.frames if f.height]
        df = pl.concat(frames) if frames else None
        empties = [EmptyRange(a, b) for _, p in parts for a, b in p.empties]
        try:
            written = await self._io(
                _write_part, self.root, ser.tt.name, ser.iv.name, ser.symbol, df, empties
            )
        except (LakeError, OSError) as exc:
            # The candles were fetched but are not in the lake: the run must not call the series
            # complete (the next run plans these partitions again).
            rep = ser.report
            for d, _ in sorted(parts, key=lambda x: x[0]):
                a = max(_date_ms(d), rep.start_ms)
                b = min(_date_ms(partition_end(self.iv, d)), rep.end_ms)
                rep.missing.append(
                    f"{ser.tt.name} {self.iv.name} {ser.symbol} [{_iso(a)}, {_iso(b)}): not written: {exc}"
                )
            log.error("%s %s %s: writing to the lake failed: %s", ser.tt.name, self.iv.name, ser.symbol, exc)
            return
        ser.report.written += written

    def _written(self, fut: asyncio.Future[None]) -> None:
        # A write future that failed after run() stopped waiting for it would lose its exception
        # (and a bug in the write path would pass for a complete run): keep the first one.
        self.writes.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and self.write_error is None:
            self.write_error = fut.exception()

    async def _funding(self) -> None:
        perps = [s for s in self.series if s.tt.is_perpetual]
        if not perps:
            return
        sem = asyncio.Semaphore(8)

        async def one(ser: _Series) -> None:
            async with sem:
                try:
                    added = await sync_funding(
                        self.client,
                        self.root,
                        ser.tt.name,
                        ser.symbol,
                        ser.report.start_ms,
                        ser.report.end_ms,
                    )
                    self.funding_rows += added  # not `+= await …`: that loses concurrent updates
                except LakeError as exc:
                    self.funding_missing.append(f"{ser.tt.name} funding {ser.symbol}: {exc}")

        async with asyncio.TaskGroup() as tg:
            for ser in perps:
                tg.create_task(one(ser))

    # -- progress --------------------------------------------------------------------------------
    def _info(self, tt: str) -> str:
        gov = self.client.governor
        return f"candles {self.fetched_by_tt.get(tt, 0):,} · weight {gov.used_now()}/{gov.limit}"

    def _show(self) -> None:
        if self.progress is None:
            return
        for tt, task in self.tasks.items():
            self.progress.update(task, info=self._info(tt))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._show()

    def market_report(self) -> MarketReport:
        st = self.client.stats
        status = {
            str(k): v - self.status0.get(k, 0)
            for k, v in sorted(st.status.items())
            if v - self.status0.get(k, 0)
        }
        return MarketReport(
            market=self.market.name,
            weight_limit=self.client.governor.limit,
            window_ms=self.client.governor.window_ms,
            requests=st.requests - self.requests0,
            weight=st.weight - self.weight0,
            status=status,
            server_ms=max(0.0, self.client.clock.now_ms() - self.t0_server),
            clock_rate=self.client.clock.rate,
        )


def rows_frame(rows: list[list[Any]], source: str = "rest") -> pl.DataFrame:
    """REST kline rows → lake kline frame; a column-wise fast path of ``klines_from_rest`` (same
    result, same parsing of the number strings by Polars), falling back to it on anything unusual."""
    n = len(rows)
    if n == 0 or any(len(r) < 11 for r in rows):
        return klines_from_rest(rows, source)
    try:
        cols = list(zip(*rows, strict=False))
        data: dict[str, pl.Series] = {}
        for name in KLINE_SCHEMA:
            if name == "candle_begin_time":
                # a direct cast (Series.dt.* would run a lazy query per call)
                data[name] = pl.Series(name, cols[0], dtype=pl.Int64, strict=True).cast(
                    pl.Datetime("ms", "UTC")
                )
            elif name == "trade_num":
                data[name] = pl.Series(name, cols[8], dtype=pl.Int64, strict=True)
            elif name == "source":
                data[name] = pl.Series(name, [source] * n, dtype=pl.String)
            else:
                data[name] = pl.Series(
                    name, cols[REST_FLOAT_FIELDS[name]], dtype=pl.String, strict=True
                ).cast(pl.Float64, strict=True)
        return pl.DataFrame(data)
    except (pl.exceptions.PolarsError, TypeError, ValueError):
        return klines_from_rest(rows, source)


_NO_OPENS = np.empty(0, dtype=np.int64)


def _stored_opens(
    root: LakeFS, trade_type: str, iv: Interval, symbols: list[str], start_ms: int, end_ms: int
) -> dict[str, np.ndarray]:
    """Stored open times (ms) per symbol, as int64 arrays in no guaranteed order.

    One scan per symbol selecting only the time column: no hive columns, no sort and no group-by
    over every row (a year of 1m is 525,600 opens a symbol; ``missing_ranges`` takes any order)."""
    if not symbols:
        return {}
    t0 = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
    t1 = dt.datetime.fromtimestamp(end_ms / 1000, tz=dt.UTC)
    out: dict[str, np.ndarray] = {}

    def files(sym: str) -> list[str]:  # a symbol's partition files, to name a damaged one
        return [root.full(k.path) for k in list_partitions(root, trade_type, iv.name, sym)]

    for sym in symbols:
        scan = scan_klines(root, trade_type, iv.name, [sym], t0, t1).select(
            pl.col("candle_begin_time").dt.epoch("ms")
        )
        t = collect_named(root, scan, functools.partial(files, sym)).to_series()
        if t.len():
            out[sym] = t.to_numpy()
    return out


def _empties(
    root: LakeFS, trade_type: str, interval: str, symbol: str, recheck: bool
) -> list[tuple[int, int]]:
    """The confirmed-empty ranges the plan may skip (none with ``recheck``)."""
    if recheck:
        return []
    return [(r.start_ms, r.end_ms) for r in read_empty_ranges(root, trade_type, interval, symbol)]


def _forget_empties(
    root: LakeFS, trade_type: str, interval: str, symbol: str, start_ms: int, end_ms: int
) -> None:
    """Forget the confirmed-empty ranges recorded inside ``[start_ms, end_ms)``; keep the rest."""
    ranges = read_empty_ranges(root, trade_type, interval, symbol)
    keep: list[EmptyRange] = []
    for r in ranges:
        if r.start_ms < start_ms:
            keep.append(EmptyRange(r.start_ms, min(r.end_ms, start_ms)))
        if r.end_ms > end_ms:
            keep.append(EmptyRange(max(r.start_ms, end_ms), r.end_ms))
    if ranges:
        clear_empty_ranges(root, trade_type, interval, symbol)
        add_empty_ranges(root, trade_type, interval, symbol, keep)


def _write_part(
    root: LakeFS,
    trade_type: str,
    interval: str,
    symbol: str,
    df: pl.DataFrame | None,
    empties: list[EmptyRange],
) -> int:
    added = 0
    if df is not None and df.height:
        added = write_klines(root, trade_type, interval, symbol, df).rows_added
    if empties:
        add_empty_ranges(root, trade_type, interval, symbol, empties)
    return added


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


async def backfill(
    root: str | os.PathLike[str] | LakeFS,
    trade_types: Sequence[str],
    interval: str = "5m",
    *,
    start: dt.datetime | int | None = None,
    end: dt.datetime | int | None = None,
    days: float | None = None,
    symbols: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    funding: bool = False,
    recheck: bool = False,
    settings: Any = None,
    endpoints: Endpoints | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    clients: Mapping[str, RestClient] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    settle_ms: int = 60_000,
    abort_after: int = 50,
    unknown_symbols: str = "error",
    write_threads: int = 2,
    client_options: Mapping[str, Any] | None = None,
    skip: Mapping[str, Mapping[str, Sequence[tuple[int, int]]]] | None = None,
) -> BackfillReport:
    """Fill ``[start, end)`` (or the last ``days``) of ``interval`` klines for ``trade_types``.

    ``symbols``: a whitelist, or ``{trade_type: [...]}``; default the TRADING universe. A whitelist
    given with several trade types is shared: each trade type takes the symbols it lists, and only a
    symbol none of them lists is unknown. ``unknown_symbols="error"`` raises ``NotFoundError`` naming
    the unknown symbols before anything is fetched; ``"skip"`` logs and skips them. ``clients`` maps market name → an open ``RestClient``
    to reuse (not closed here); other markets get a client built from ``settings`` (or from
    ``endpoints``/``state_dir``). Trade types run concurrently, one client per market. ``skip``
    (``{trade_type: {symbol: [(start_ms, end_ms), …]}}``) leaves those ranges alone this run
    (not fetched, not recorded): ``--source auto`` passes the days of archive files that failed
    verification, which must stay out of the lake until the archive is right.

    Returns a ``BackfillReport``; raises ``IncompleteError`` (with ``.missing``, and the report as
    ``.report``) when any range could not be fetched.
    """
    t0 = time.monotonic()
    tts, iv = _validate(trade_types, interval, start, end, days)
    if unknown_symbols not in ("error", "skip"):
        raise ValidationError("unknown_symbols must be 'error' or 'skip'")
    lfs = root if isinstance(root, LakeFS) else LakeFS(root)
    if isinstance(symbols, str):  # "BTCUSDT" or "BTCUSDT,ETHUSDT", not its characters
        symbols = validate_symbols(symbols)
    per_tt: dict[str, Sequence[str] | None] = {}
    for tt in tts:
        if symbols is None:
            per_tt[tt.name] = None
        elif isinstance(symbols, Mapping):
            got = symbols.get(tt.name)
            per_tt[tt.name] = None if got is None else [validate_symbol(x) for x in got]
        else:
            per_tt[tt.name] = [validate_symbol(x) for x in symbols]
    # a plain whitelist with several trade types is shared: each takes the symbols it lists
    shared = symbols is not None and not isinstance(symbols, Mapping) and len(tts) > 1
    by_market: dict[str, list[TradeType]] = {}
    for tt in tts:
        by_market.setdefault(tt.market_name, []).append(tt)
    opts = dict(client_options or {})
    report = BackfillReport(iv.name)
    own: list[RestClient] = []
    pool = ThreadPoolExecutor(max_workers=write_threads, thread_name_prefix="lake-write")
    runs: list[_MarketRun] = []
    try:
        for m, group in by_market.items():
            client = (clients or {}).get(m)
            if client is None:
                if settings is not None:
                    client = RestClient.from_settings(settings, m, **opts)
                else:
                    client = RestClient(m, endpoints=endpoints, state_dir=state_dir, **opts)
                own.append(client)
                await client.start()
            n = workers or min(client.max_concurrency, 16)
            runs.append(
                _MarketRun(
                    client,
                    lfs,
                    group,
                    iv,
                    symbols=per_tt,
                    start=start,
                    end=end,
                    days=days,
                    recheck=recheck,
                    funding=funding,
                    settle_ms=settle_ms,
                    workers=n,
                    abort_after=abort_after,
                    unknown_symbols="shared" if shared else unknown_symbols,
                    pool=pool,
                    progress=progress,
                    skip=skip,
                )
            )
        async with asyncio.TaskGroup() as tg:
            for r in runs:
                tg.create_task(r.prepare())
        if shared:
            # one whitelist for several trade types: each took the symbols it lists; a symbol none
            # of them lists is a typo (or of another type), an error before anything is fetched
            claimed = set().union(*(r.claimed for r in runs))
            absent = [x for x in dict.fromkeys(symbols or ()) if validate_symbol(x) not in claimed]
            if absent and unknown_symbols == "error":
                names = ", ".join(t.name for t in tts)
                raise NotFoundError(f"unknown {names} symbol(s): {', '.join(absent)}")
            if absent:
                log.warning("skipping symbols no trade type lists: %s", ", ".join(absent))
        async with asyncio.TaskGroup() as tg:
            for r in runs:
                tg.create_task(r.run())
    except BaseExceptionGroup as eg:
        # one market failed outright (e.g. exchangeInfo unreachable): surface the first lake error
        for exc in eg.exceptions:
            if isinstance(exc, LakeError):
                raise exc from None
        raise
    finally:
        for c in own:
            await c.close()
        pool.shutdown(wait=True)
    for r in runs:
        report.series.extend(s.report for s in r.series)
        report.markets[r.market.name] = r.market_report()
        report.funding_rows += r.funding_rows
        report.funding_missing.extend(r.funding_missing)
    report.elapsed_s = time.monotonic() - t0
    if report.missing:
        err = IncompleteError(
            f"backfill incomplete: {len(report.missing)} range(s) missing, e.g. {report.missing[0]}",
            report.missing,
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report
