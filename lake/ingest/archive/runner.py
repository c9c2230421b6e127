"""Archive ingest of one (trade type, interval): list, plan, download, verify, parse, write, record.

    report = await ingest_archive(settings, "usdt_perp", "1m", ["BTCUSDT"], start_ms, end_ms)
    report.lacking            # {symbol: [(start_ms, end_ms), …]} units the archive has no candle for
    report.cut                # {symbol: [(start_ms, end_ms), …]} what files lack after their last candle
    report.missing            # those of both the run cannot explain, as "<type> <iv> <SYMBOL> [a, b): …"
    report.kept               # earlier rows a re-uploaded monthly file no longer has, kept (warnings)

Steps per symbol: list its daily and monthly directories (paginated S3 listing), read what the lake
holds and the manifest, plan (``plan.plan_series``). Then a bounded pool of workers downloads every
planned file (``download.Downloader``: temp file, SHA-256 against ``.CHECKSUM``, atomic move), parses
it (``parse.parse_kline_zip``; rows outside the file's period are a ``DataError``, rows repeating an
open time are deduplicated), upserts it with ``write_klines`` and only then records it in the manifest. The daily
files of one symbol and month are upserted together, and manifest records are written per symbol in
batches (``_groups``, ``_run_jobs``). Nothing is written for a file that failed verification. A failed
file does not stop the others; at the end the run raises one error naming every failed file. Zips
are deleted after ingest unless ``keep_zips``.

Once the files are in, the units the lake lacked candles of are read again (``_shortfalls``): a
verified file can be cut hours before its period ends (binance-public-data #413), and what it lacks
after its last candle is ``cut`` and, unless a delisting explains it, missing (``shortfall``). A
re-uploaded monthly file that lost candles leaves its earlier version's rows in place (a truncated
re-upload is no reason to delete); the daily files of those days are fetched where the archive has
them, and the ranges no file settles are named in ``kept``: the lake keeps candles the archive's
current file no longer has, and says so. They are recorded (``manifest.update_kept``) for
``lake audit``, and later runs fetch a daily file of theirs once one is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import polars as pl

from lake.binance.intervals import MS_PER_DAY, Interval, parse_interval
from lake.binance.markets import Endpoints, get_trade_type
from lake.binance.symbols import validate_symbols
from lake.errors import DataError, LakeError, UpstreamError, ValidationError
from lake.ingest.archive.download import Downloaded, Downloader, clean_partials
from lake.ingest.archive.listing import ListEntry, fetch_listing, symbols_from_prefixes
from lake.ingest.archive.manifest import (
    KeptRange,
    kept_dir,
    read_kept,
    read_manifest,
    record_files,
    update_kept,
)
from lake.ingest.archive.parse import parse_kline_zip
from lake.ingest.archive.plan import (
    DAILY,
    FREQS,
    MONTHLY,
    MONTHLY_MIN_DAYS,
    ArchiveFile,
    FileRecord,
    PlannedFile,
    SeriesPlan,
    UnitState,
    daily_available,
    file_from_name,
    month_start,
    next_month,
    plan_series,
    series_prefix,
    span_minus,
    symbols_prefix,
    units,
)
from lake.ingest.archive.shortfall import cut_ranges, ended_units, kept_ranges
from lake.net import proxy_from_env
from lake.progress import Progress
from lake.settings import Settings
from lake.store.fs import LakeFS
from lake.store.klines import list_partitions, scan_klines, write_klines
from lake.store.meta import read_empty_ranges

__all__ = [
    "ArchiveReport",
    "download_dir",
    "ingest_archive",
    "lake_holes",
    "lake_units",
    "list_archive_symbols",
]

log = logging.getLogger("lake.archive")

_RECORD_BATCH = 64  # manifest records written at once per symbol (see _run_jobs)


def download_dir(settings: Settings) -> Path:
    """Where zips are downloaded: ``<state dir>/downloads`` (never inside the parquet tree)."""
    return settings.state_path / "downloads"


@dataclass(frozen=True, slots=True)
class FailedFile:
    """An archive file that failed; ``bad``: the file itself is wrong (checksum, corrupt zip, bad
    rows), not merely unavailable (HTTP errors, timeouts)."""

    symbol: str
    start_ms: int
    end_ms: int
    bad: bool
    message: str


@dataclass
class ArchiveReport:
    """What one archive ingest did."""

    trade_type: str
    interval: str
    symbols: list[str] = field(default_factory=list)
    files_planned: int = 0
    files_downloaded: int = 0
    files_reused: int = 0  # verified zips found on disk (``--keep-zips`` or an interrupted run)
    files_reuploaded: int = 0  # files Binance replaced since they were ingested
    units_skipped: int = 0  # days (months above 1d) the lake or a verified file already covers
    rows: int = 0
    partitions_written: int = 0
    bytes: int = 0
    requests: int = 0
    checksum_retries: int = 0
    # units without a file, or that a verified monthly file left without a candle and no daily file covers
    lacking: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # ranges after the last candle of a unit an ingested file covers, where the series does not go on
    # lacking candles (a file cut before its period's end), or a file without any candle
    # (``shortfall.cut_ranges``)
    cut: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # the lacking units and cut ranges inside the published archive and the series' life
    # (``_missing``), merged into ranges:
    # "usdt_spot 5m BTCUSDT [2024-02-12T00:00:00Z, 2024-02-13T00:00:00Z): not in the archive"
    missing: list[str] = field(default_factory=list)
    # earlier archive rows kept where a re-uploaded monthly file has no candle and no daily file
    # vouches for them (``shortfall.kept_ranges``): "usdt_spot 5m BTCUSDT [a, b): 576 candle(s)
    # kept that the re-uploaded BTCUSDT-5m-2024-02.zip no longer has"
    kept: list[str] = field(default_factory=list)
    windows: dict[str, tuple[int, int]] = field(default_factory=dict)  # per symbol [start, end) planned
    failed: list[str] = field(default_factory=list)
    failed_files: list[FailedFile] = field(default_factory=list)  # every entry of ``failed`` but a
    # failure before any file (the archive unreachable)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "trade_type": self.trade_type,
            "interval": self.interval,
            "symbols": len(self.symbols),
            "files_planned": self.files_planned,
            "files_downloaded": self.files_downloaded,
            "files_reused": self.files_reused,
            "files_reuploaded": self.files_reuploaded,
            "units_skipped": self.units_skipped,
            "rows": self.rows,
            "partitions_written": self.partitions_written,
            "bytes": self.bytes,
            "requests": self.requests,
            "checksum_retries": self.checksum_retries,
            "lacking_units": sum(len(v) for v in self.lacking.values()),
            "cut_ranges": sum(len(v) for v in self.cut.values()),
            "missing": list(self.missing),
            "kept": list(self.kept),
            "failed": list(self.failed),
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------------------
# What the lake holds
# --------------------------------------------------------------------------------------------------


def _window(lfs: LakeFS, tt: str, iv: Interval, symbol: str, start_ms: int, end_ms: int) -> pl.LazyFrame:
    """The stored candles of one series opening in ``[start_ms, end_ms)``, with ``t``: open ms."""
    start = dt.datetime.fromtimestamp(start_ms / 1000, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(end_ms / 1000, tz=dt.UTC)
    lf = scan_klines(lfs, tt, iv.name, [symbol], start, end)
    return lf.with_columns(t=pl.col("candle_begin_time").dt.epoch("ms"))


def _times(lfs: LakeFS, tt: str, iv: Interval, symbol: str, start_ms: int, end_ms: int) -> pl.Series:
    return _window(lfs, tt, iv, symbol, start_ms, end_ms).select("t").collect()["t"].sort()


def _times_and_archive(
    lfs: LakeFS, tt: str, iv: Interval, symbol: str, start_ms: int, end_ms: int
) -> tuple[pl.Series, pl.Series]:
    """Sorted open times (ms) of the stored candles, and whether each came from the archive."""
    df = (
        _window(lfs, tt, iv, symbol, start_ms, end_ms)
        .select("t", a=pl.col("source") == "archive")
        .collect()
        .sort("t")
    )
    return df["t"], df["a"]


def lake_units(
    lfs: LakeFS,
    trade_type: str,
    interval: Interval | str,
    symbol: str,
    start_ms: int,
    end_ms: int,
    *,
    window: tuple[int, int] | None = None,
) -> dict[int, UnitState]:
    """Per planning unit in ``[start_ms, end_ms)``: stored candles, candles recorded as confirmed
    empty, and stored candles that came from the archive. With ``window``, only candles opening in
    it are counted (see ``_lake_states``)."""
    return _lake_states(lfs, trade_type, parse_interval(interval), symbol, start_ms, end_ms, window)[1]


def _lake_states(
    lfs: LakeFS,
    trade_type: str,
    iv: Interval,
    symbol: str,
    start_ms: int,
    end_ms: int,
    window: tuple[int, int] | None,
) -> tuple[dict[int, UnitState], dict[int, UnitState]]:
    """``lake_units`` of whole units, and of the units clipped to ``window``, from one scan.

    The plan needs the clipped counts: a unit at the window's edge is complete when the window's
    part of it is, and rows stored outside the window must not stand in for missing ones inside it
    (REST rows for 00:00-12:00 made a day with its 12:00-24:00 missing look complete for a window
    starting at 12:00). The manifest check needs whole units (a file's rows cover its whole period).
    """
    us = units(iv, start_ms, end_ms)
    if not us:
        return {}, {}
    lo, hi = us[0][0], us[-1][1]
    times, archive = _times_and_archive(lfs, trade_type, iv, symbol, lo, hi)
    empties = [(r.start_ms, r.end_ms) for r in read_empty_ranges(lfs, trade_type, iv.name, symbol)]
    whole = _count_units(iv, us, times, archive, empties, None)
    if window is None or (window[0] <= lo and hi <= window[1]):
        return whole, whole
    return whole, _count_units(iv, us, times, archive, empties, window)


def _count_units(
    iv: Interval,
    us: list[tuple[int, int]],
    times: pl.Series,
    archive: pl.Series,
    empties: list[tuple[int, int]],
    window: tuple[int, int] | None,
) -> dict[int, UnitState]:
    if window is not None:
        keep = (times >= window[0]) & (times < window[1])
        times, archive = times.filter(keep), archive.filter(keep)
    counts: dict[int, int] = {}
    from_archive: dict[int, int] = {}
    last: dict[int, int] = {}
    if times.len():
        bounds = pl.Series([u[0] for u in us], dtype=pl.Int64)
        idx = bounds.search_sorted(times, side="right") - 1
        per_unit = (
            pl.DataFrame({"i": idx, "a": archive, "t": times})
            .group_by("i")
            .agg(pl.len(), pl.col("a").sum(), pl.col("t").max())
        )
        for i, n, a, t in per_unit.iter_rows():
            counts[int(us[int(i)][0])] = int(n)
            from_archive[int(us[int(i)][0])] = int(a)
            last[int(us[int(i)][0])] = int(t)
    w0, w1 = window if window is not None else (us[0][0], us[-1][1])
    out: dict[int, UnitState] = {}
    for u0, u1 in us:
        a, b = max(u0, w0), min(u1, w1)
        empty = (
            sum(iv.count(max(r0, a), min(r1, b)) for r0, r1 in empties if r0 < b and r1 > a) if a < b else 0
        )
        out[u0] = UnitState(counts.get(u0, 0), empty, from_archive.get(u0, 0), last.get(u0, -1))
    return out


def lake_holes(
    lfs: LakeFS, trade_type: str, interval: Interval | str, symbol: str, start_ms: int, end_ms: int
) -> list[tuple[int, int]]:
    """Runs of aligned candles in ``[start_ms, end_ms)`` that the lake lacks and that are not recorded
    as confirmed empty, as half-open ``(start_ms, end_ms)`` ranges of their open times.

    A stored candle whose open time is not aligned (irregular 2018 klines, e.g. open 1518168494789,
    kept as Binance published it) fills the slot it falls in, as in the REST planner
    (``lake.ingest.pages.missing_ranges``)."""
    iv = parse_interval(interval)
    if start_ms >= end_ms:
        return []
    times = _times(lfs, trade_type, iv, symbol, start_ms, end_ms)
    first = iv.floor(start_ms)
    if first < start_ms:
        first = iv.next_open(first)
    spans: list[tuple[int, int]] = []
    if iv.ms is not None:
        step = iv.ms
        # Stored candles need not be aligned (irregular 2018 klines): each counts for its slot, so holes
        # are between aligned opens (unfloored, 09:27:00 then 09:28:14.789 made a hole of 09:28).
        slots = iv.floor_many(times)
        t = pl.concat([pl.Series([first - step]), slots, pl.Series([_ceil(end_ms, iv)])])
        gaps = (
            pl.DataFrame({"t": t})
            .with_columns(prev=pl.col("t").shift(1))
            .filter(pl.col("t") - pl.col("prev") > step)
        )
        for cur, prev in gaps.select("t", "prev").iter_rows():
            a = max(int(prev) + step, first)
            b = min(int(cur), end_ms)
            if a < b:
                spans.append((a, b))
    else:
        have = {iv.floor(t) for t in times.to_list()}
        run: list[int] = []
        for o in iv.opens(start_ms, end_ms):
            if o in have:
                if run:
                    spans.append((run[0], min(iv.next_open(run[-1]), end_ms)))
                    run = []
            else:
                run.append(o)
        if run:
            spans.append((run[0], min(iv.next_open(run[-1]), end_ms)))
    empties = read_empty_ranges(lfs, trade_type, iv.name, symbol)
    return _subtract(spans, [(r.start_ms, r.end_ms) for r in empties], iv)


def _ceil(ms: int, iv: Interval) -> int:
    f = iv.floor(ms)
    return f if f == ms else iv.next_open(f)


def _subtract(
    spans: list[tuple[int, int]], cut: list[tuple[int, int]], iv: Interval
) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        pieces = [(a, b)]
        for c0, c1 in cut:
            nxt: list[tuple[int, int]] = []
            for p0, p1 in pieces:
                if c1 <= p0 or c0 >= p1:
                    nxt.append((p0, p1))
                    continue
                if p0 < c0:
                    nxt.append((p0, c0))
                if c1 < p1:
                    nxt.append((c1, p1))
            pieces = nxt
        out.extend(p for p in pieces if iv.count(p[0], p[1]) > 0)
    return out


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


async def list_archive_symbols(
    session: aiohttp.ClientSession, endpoints: Endpoints, market: str
) -> list[str]:
    """Every symbol with a kline directory in the market's archive (daily or monthly), validated."""
    out: set[str] = set()
    for freq in FREQS:
        prefix = symbols_prefix(market, freq)
        listing = await fetch_listing(session, endpoints.archive_list, prefix)
        out.update(symbols_from_prefixes(listing.prefixes, prefix))
    return sorted(out)


async def _list_series(
    session: aiohttp.ClientSession, endpoints: Endpoints, market: str, symbol: str, iv: Interval
) -> dict[str, ListEntry]:
    """Zip and ``.CHECKSUM`` entries of one series (daily and monthly) by file name."""
    out: dict[str, ListEntry] = {}
    freqs = FREQS if daily_available(iv) else (MONTHLY,)
    for freq in freqs:
        listing = await fetch_listing(
            session, endpoints.archive_list, series_prefix(market, freq, symbol, iv)
        )
        for e in listing.entries.values():
            base = e.name.removesuffix(".CHECKSUM")
            f = file_from_name(market, freq, iv, base)
            if f is None or f.symbol != symbol:
                continue  # not a file of this series (or a hostile name): never used
            out[e.name] = e
    return out


def _listed_span(market: str, iv: Interval, listed: Mapping[str, ListEntry]) -> tuple[int, int, int] | None:
    """Start of the first listed period, end of the last, and start of the latest file (daily or
    monthly): the series had candles at or after that time, the archive publishing no empty file."""
    spans = []
    for name in listed:
        if name.endswith(".CHECKSUM"):
            continue
        for freq in (DAILY, MONTHLY):
            f = file_from_name(market, freq, iv, name)
            if f is not None:
                spans.append((f.start_ms, f.end_ms))
    if not spans:
        return None
    return min(a for a, _ in spans), max(b for _, b in spans), max(a for a, _ in spans)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class _Job:
    planned: PlannedFile
    trade_type: str


def _manifest_trusted(
    manifest: Mapping[str, FileRecord], lake: Mapping[int, UnitState]
) -> dict[str, FileRecord]:
    """Records whose rows the lake still holds (a record for data deleted since is not trusted)."""
    out: dict[str, FileRecord] = {}
    for name, rec in manifest.items():
        held = sum(s.rows for u0, s in lake.items() if rec.start_ms <= u0 < rec.end_ms)
        covered = any(rec.start_ms <= u0 < rec.end_ms for u0 in lake)
        if not covered or held >= rec.rows:
            out[name] = rec
    return out


async def ingest_archive(
    settings: Settings,
    trade_type: str,
    interval: str,
    symbols: Sequence[str],
    start_ms: int | None = None,
    end_ms: int | None = None,
    *,
    keep_zips: bool = False,
    progress: Progress | None = None,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = 8,
    checksum_attempts: int = 3,
    monthly_min_days: int = MONTHLY_MIN_DAYS,
    windows: Mapping[str, tuple[int | None, int | None]] | None = None,
    raise_on_failure: bool = True,
    trading: Collection[str] | None = None,
) -> ArchiveReport:
    """Ingest the archive files the lake lacks for ``symbols`` in ``[start_ms, end_ms)``.

    ``start_ms``/``end_ms`` default to each symbol's first/last archive file; ``windows`` overrides
    them per symbol. A file that fails (corrupt zip, checksum mismatch after retries, bad rows, not
    downloadable) does not stop the others; after every file was processed, a ``DataError`` names
    the failed files. With ``raise_on_failure=False`` they are only reported (``failed``,
    ``failed_files``), for a caller that goes on (``--source auto``).

    ``report.lacking`` lists the units the archive has no candle for; ``report.missing`` those of
    them it should have (``_missing``): ``trading`` names the symbols still trading (after a symbol
    that is not, the days past its last candle are not missing); ``None``: every symbol is.
    """
    t0 = time.monotonic()
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    syms = validate_symbols(list(symbols)) if symbols else []
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ValidationError(f"start ({_iso(start_ms)}) must be before end ({_iso(end_ms)})")
    market = tt.market_name
    lfs = LakeFS(settings.root)
    ddir = download_dir(settings)
    report = ArchiveReport(tt.name, iv.name, list(syms))
    if not syms:
        return report
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=settings.http_timeout, sock_read=settings.http_timeout * 3
            ),
            trust_env=proxy_from_env(settings.endpoints.archive, settings.endpoints.archive_list),
        )
    try:
        removed = await asyncio.to_thread(clean_partials, ddir)
        if removed:
            log.info("removed %d partial download(s) left by interrupted runs", removed)
        endpoints = settings.endpoints
        sem = asyncio.Semaphore(concurrency)

        listings: dict[str, dict[str, ListEntry]] = {}
        # series with kept ranges (one listing: few have any)
        with_kept = {
            n.removesuffix(".json") for n in await asyncio.to_thread(lfs.listdir, kept_dir(market, iv.name))
        }
        published: dict[str, int] = {}  # per symbol: end of the last period the archive lists
        latest: dict[str, int] = {}  # per symbol: start of the latest file the archive lists

        async def plan_one(sym: str) -> SeriesPlan | None:
            async with sem:
                listed = listings[sym] = await _list_series(session, endpoints, market, sym, iv)
            span = _listed_span(market, iv, listed)
            if span is not None:
                published[sym], latest[sym] = span[1], span[2]
            w = (windows or {}).get(sym, (None, None))
            lo = w[0] if w[0] is not None else start_ms
            hi = w[1] if w[1] is not None else end_ms
            if lo is None or hi is None:
                if span is None:
                    return None
                lo = span[0] if lo is None else lo
                hi = span[1] if hi is None else hi
            if lo >= hi:
                return None
            report.windows[sym] = (lo, hi)
            return await plan_window(sym, lo, hi)

        async def plan_window(sym: str, lo: int, hi: int) -> SeriesPlan:
            # Whole months around the window, so monthly manifest records can be checked against the lake.
            m_lo = _month_ms(month_start(_date(lo)))
            m_hi = _month_ms(next_month(_date(hi - 1)))
            lake, in_window = await asyncio.to_thread(
                _lake_states, lfs, tt.name, iv, sym, m_lo, m_hi, (lo, hi)
            )
            manifest = await asyncio.to_thread(read_manifest, lfs, market, iv.name, sym)
            trusted = _manifest_trusted(manifest, lake)
            kept = await asyncio.to_thread(read_kept, lfs, market, iv.name, sym) if sym in with_kept else []
            return plan_series(
                market, sym, iv, lo, hi, listings[sym], in_window, trusted,
                monthly_min_days=monthly_min_days, kept=[(k.start_ms, k.end_ms) for k in kept],
            )  # fmt: skip

        plans = [p for p in await asyncio.gather(*(plan_one(s) for s in syms)) if p is not None]
        jobs: list[_Job] = []
        for p in plans:
            report.units_skipped += p.skipped
            if p.lacking or p.unfilled:
                report.lacking[p.symbol] = sorted({*p.lacking, *p.unfilled})
            jobs.extend(_Job(f, tt.name) for f in p.fetch)
        report.files_planned = len(jobs)
        report.files_reuploaded = sum(1 for j in jobs if j.planned.reason == "reuploaded")
        downloader = Downloader(session, endpoints.archive, ddir, checksum_attempts=checksum_attempts)
        done: list[_Done] = []
        await _run_jobs(jobs, downloader, lfs, market, iv, report, progress, concurrency, keep_zips, done)
        # A monthly file can leave days of its month without a candle, or stop during its last day
        # (Binance has published truncated monthly files: binance-public-data #320, #359, #403). The
        # plan trusts a verified monthly file only for the days it filled and not for a day it was cut
        # on, so the daily files of those are planned once it is in, in this run: one run leaves the
        # lake as complete as the archive allows, and the next fetches nothing (with
        # `--source archive` no REST pass fills those days).
        again: list[_Job] = []
        if daily_available(iv):
            attempted = {j.planned.file.name for j in jobs}
            for d in done:
                f = d.planned.file
                lo, hi = report.windows[f.symbol]
                lo, hi = max(lo, f.start_ms), min(hi, f.end_ms)
                if not d.short or lo >= hi:
                    continue
                p = await plan_window(f.symbol, lo, hi)
                for x in p.fetch:
                    if x.file.freq == DAILY and x.file.name not in attempted:
                        attempted.add(x.file.name)
                        again.append(_Job(x, tt.name))
                # days it left empty that no daily file covers: the archive lacks them (with
                # `--source archive` nothing else fills them, and the run must say so)
                if p.unfilled:
                    report.lacking[f.symbol] = sorted({*report.lacking.get(f.symbol, ()), *p.unfilled})
            # The days a re-uploaded monthly file no longer has kept their earlier rows (``_vouched``);
            # their daily files, where the archive has them, settle those days (they are the days' own:
            # plan's module doc), inside the window or not.
            for d in done:
                sym = d.planned.file.symbol
                for a, b in d.lost:
                    for d0, _ in units(iv, a, b):
                        day = ArchiveFile(market, DAILY, sym, iv.name, _date(d0))
                        e = listings[sym].get(day.name)
                        if e is None or day.name in attempted:
                            continue
                        attempted.add(day.name)
                        ck = listings[sym].get(day.name + ".CHECKSUM")
                        # merged, not replacing the day: a daily file cut short must not delete the
                        # earlier rows either (what it lacks stays, and is named as kept)
                        again.append(_Job(PlannedFile(day, e, ck, "new"), tt.name))
        if again:
            report.files_planned += len(again)
            await _run_jobs(
                again, downloader, lfs, market, iv, report, progress, concurrency, keep_zips, done
            )
        await asyncio.to_thread(_shortfalls, lfs, market, iv, report, plans, done)
        if report.lacking or report.cut:
            report.missing = await asyncio.to_thread(
                _missing,
                lfs,
                report,
                iv,
                max(published.values(), default=None),
                None if trading is None else set(trading),
                latest,
            )
        report.bytes = downloader.bytes
        report.requests = downloader.requests
    finally:
        if own_session:
            await session.close()
    report.seconds = time.monotonic() - t0
    if report.failed and raise_on_failure:
        # bad data (exit 4) if any file failed verification, else an upstream failure (exit 3)
        bad = any(f.bad for f in report.failed_files) or len(report.failed_files) < len(report.failed)
        raise (DataError if bad else UpstreamError)(
            f"archive ingest failed for {len(report.failed)} file(s); nothing was written for them: "
            + "; ".join(report.failed[:20])
            + (" …" if len(report.failed) > 20 else "")
        )
    return report


_GROUP_ROWS = 46_000  # daily files of a symbol ingested together up to about a monthly 1m file's rows


def _groups(jobs: list[_Job], iv: Interval) -> list[list[_Job]]:
    """Jobs in the order and groups they are processed.

    Consecutive daily files of one symbol and month form one group, up to ``_GROUP_ROWS`` candles
    (a month of 1m, one day of 1s): their rows go to the lake in one ``write_klines`` call, so a
    month of daily files costs one lock and one batch of disk syncs instead of an fsync pair per day.
    Groups are interleaved across symbols (the first group of every symbol, then the second, …):
    the two files parsed and written at a time then belong to different series and do not wait for
    each other's series lock.

    A monthly file and the daily files of its month fetched with it (re-uploads: ``plan_series``)
    form one group, monthly first. The result does not depend on that order: a monthly file writes
    nothing on the days daily files own (``PlannedFile.keep``), and a re-uploaded daily file replaces
    its day.
    """
    per_day = max(1, MS_PER_DAY // iv.approx_ms)
    size = max(1, min(31, _GROUP_ROWS // per_day))
    by_symbol: dict[str, list[list[_Job]]] = {}

    def order(j: _Job) -> tuple[str, dt.date, bool, dt.date]:
        f = j.planned.file
        return f.symbol, month_start(f.period), f.freq == DAILY, f.period

    for j in sorted(jobs, key=order):
        f = j.planned.file
        groups = by_symbol.setdefault(f.symbol, [])
        first = groups[-1][0].planned.file if groups else None
        if (
            first is not None
            and f.freq == DAILY
            and month_start(first.period) == month_start(f.period)
            and (first.freq == MONTHLY or len(groups[-1]) < size)
        ):
            groups[-1].append(j)
        else:
            groups.append([j])
    out: list[list[_Job]] = []
    rank = 0
    while True:
        layer = [gs[rank] for _, gs in sorted(by_symbol.items()) if rank < len(gs)]
        if not layer:
            return out
        out.extend(layer)
        rank += 1


async def _run_jobs(
    jobs: list[_Job],
    downloader: Downloader,
    lfs: LakeFS,
    market: str,
    iv: Interval,
    report: ArchiveReport,
    progress: Progress | None,
    concurrency: int,
    keep_zips: bool,
    ingested: list[_Done] | None = None,
) -> None:
    """Process ``jobs``; every file ingested (and recorded) is appended to ``ingested``."""
    if not jobs:
        return
    task = progress.add(f"archive {report.trade_type} {iv.name}", total=len(jobs)) if progress else None
    queue: asyncio.Queue[list[_Job]] = asyncio.Queue()
    for g in _groups(jobs, iv):
        queue.put_nowait(g)
    cpu = asyncio.Semaphore(2)  # parse+write are CPU-bound and run in threads
    # Manifest records are written per symbol in batches (when the symbol's last file is in, or every
    # _RECORD_BATCH files, and for whatever is pending when the run ends, failed or not): one JSON
    # rewrite per file was two fsyncs per file. A record still follows its rows into the lake, so a
    # crash before a batch is written only costs re-ingesting those files (an upsert that changes
    # nothing), never a skipped file.
    left: dict[str, int] = {}
    for j in jobs:
        left[j.planned.file.symbol] = left.get(j.planned.file.symbol, 0) + 1
    pending: dict[str, list[tuple[str, FileRecord, dict[str, object]]]] = {}

    async def flush(symbol: str) -> None:
        batch = pending.pop(symbol, [])
        if batch:
            await asyncio.to_thread(record_files, lfs, market, iv.name, symbol, batch)

    def failed(pf: PlannedFile, exc: LakeError) -> None:
        log.error("archive file %s failed: %s", pf.file.key, exc)
        text = str(exc)  # the download and parse errors name the file already
        msg = text if text.startswith(pf.file.key) else f"{pf.file.key}: {text}"
        report.failed.append(msg)
        f = pf.file
        report.failed_files.append(
            FailedFile(f.symbol, f.start_ms, f.end_ms, isinstance(exc, DataError), msg)
        )

    async def worker() -> None:
        while True:
            try:
                group = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            sym = group[0].planned.file.symbol
            got: list[tuple[PlannedFile, Downloaded]] = []
            try:
                for job in group:
                    try:
                        got.append((job.planned, await downloader.fetch(job.planned.file)))
                    except LakeError as exc:
                        failed(job.planned, exc)
                if got:
                    try:
                        async with cpu:
                            done = await asyncio.to_thread(_ingest_files, lfs, group[0].trade_type, got)
                    except LakeError as exc:  # e.g. the series lock timed out: nothing was recorded
                        done = _Ingested([(0, exc)] * len(got))
                    for i, ((pf, dl), (rows, err)) in enumerate(zip(got, done.files, strict=True)):
                        if err is not None:
                            failed(pf, err)
                            continue
                        meta: dict[str, object] = {
                            "etag": dl.etag or pf.entry.etag,
                            "last_modified": pf.entry.last_modified,
                        }
                        if pf.file.freq == DAILY:  # where its day ends for a monthly file (``keep``)
                            spans = done.vouched.get(i, [])
                            meta["vouched_end_ms"] = spans[-1][1] if spans else pf.file.start_ms
                        pending.setdefault(sym, []).append((pf.file.name, _record(pf, dl, rows), meta))
                        if ingested is not None:
                            lost, vouched = tuple(done.lost.get(i, ())), tuple(done.vouched.get(i, ()))
                            ended = tuple(done.ended.get(i, ()))
                            ingested.append(_Done(pf, i in done.short, ended, lost, vouched))
                        report.rows += rows
                        if dl.reused:
                            report.files_reused += 1
                        else:
                            report.files_downloaded += 1
                        report.checksum_retries += dl.attempts - 1
                    report.partitions_written += done.partitions
            finally:
                if not keep_zips and got:  # ingested, or verified but unusable
                    await asyncio.to_thread(_unlink_all, [dl.path for _, dl in got])
                left[sym] -= len(group)
                if progress is not None and task is not None:
                    progress.advance(task, len(group), info=f"{downloader.bytes / 1e6:.1f} MB")
            if left[sym] == 0 or len(pending.get(sym, ())) >= _RECORD_BATCH:
                await flush(sym)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(jobs))))))
    finally:
        for sym in list(pending):
            await flush(sym)


@dataclass
class _Ingested:
    files: list[tuple[int, LakeError | None]]  # per file: rows, or why it failed
    partitions: int = 0
    # monthly files (by position) that may leave days to daily files: a whole UTC day of their period
    # without a row, or no row for the period's last candle (a cut on its last day leaves no day
    # empty; a monthly file cut by a maintenance hour inside the month is not re-planned for that)
    short: set[int] = field(default_factory=set)
    # per file, the units it has a candle in the last slot of (``shortfall.ended_units``)
    ended: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # re-uploaded monthly files: where they replaced nothing (no candle there) and the earlier rows stay
    lost: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # daily files: the part of their day up to the end of their last candle (``_vouched``)
    vouched: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Done:
    """A file ingested and recorded by ``_run_jobs`` (``_Ingested`` says what its flags mean)."""

    planned: PlannedFile
    short: bool
    ended: tuple[tuple[int, int], ...]
    lost: tuple[tuple[int, int], ...] = ()
    vouched: tuple[tuple[int, int], ...] = ()


def _ingest_files(lfs: LakeFS, trade_type: str, items: list[tuple[PlannedFile, Downloaded]]) -> _Ingested:
    """Parse files of one series and upsert their rows in one ``write_klines`` call; a file that does
    not parse fails alone, and if the combined write is refused (bad values), each file is written
    on its own so that only the bad one fails."""
    out = _Ingested([])
    frames: list[pl.DataFrame] = []
    # A re-uploaded file replaces what the old one put in its period: a candle it removed or moved
    # (an off-grid 2018 open time corrected) must not survive next to the new rows.
    replaces: list[list[tuple[int, int]]] = []
    for pf, dl in items:
        f = pf.file
        try:
            df = parse_kline_zip(dl.data or dl.path, start_ms=f.start_ms, end_ms=f.end_ms, name=f.key)
        except LakeError as exc:
            out.files.append((0, exc))
            continue
        if f.freq == MONTHLY and _short(df, pf.file):
            out.short.add(len(out.files))
        out.ended[len(out.files)] = ended_units(f.iv, df, f.start_ms, f.end_ms)
        if f.freq == DAILY:
            out.vouched[len(out.files)] = _vouched(f.iv, df, f.start_ms, f.end_ms)
        replace = list(pf.replace)
        if replace and f.freq == MONTHLY:
            vouched = _vouched(f.iv, df, f.start_ms, f.end_ms)
            lost = [p for r in replace for p in span_minus(r, vouched)]
            if lost:
                out.lost[len(out.files)] = lost
            replace = _overlap(replace, vouched)
        elif replace and pf.reason != "reuploaded":
            # A daily file taken on a day with a monthly file's rows replaces them up to its last
            # candle, as the monthly file leaves alone what the day's daily file has (``keep``): a
            # daily file cut short then leaves the monthly file's later hours in either order.
            replace = _overlap(replace, out.vouched[len(out.files)])
        if pf.keep:  # what daily files own (their days up to their last candle): not written
            t = df["candle_begin_time"].dt.epoch("ms")
            df = df.filter(~pl.any_horizontal([(t >= a) & (t < b) for a, b in pf.keep]))
        out.files.append((df.height, None))
        frames.append(df)
        replaces.append(replace)
    if not frames:
        return out
    f0 = items[0][0].file
    try:
        res = write_klines(
            lfs, trade_type, f0.interval, f0.symbol, pl.concat(frames, how="vertical"),
            replace_archive=[r for rs in replaces for r in rs],
        )  # fmt: skip
        out.partitions = res.partitions_written
        return out
    except DataError:
        pass
    it = iter(zip(frames, replaces, strict=True))
    for i, (rows, err) in enumerate(out.files):
        if err is not None:
            continue
        frame, replace = next(it)
        try:
            out.partitions += write_klines(
                lfs, trade_type, f0.interval, f0.symbol, frame, replace_archive=replace
            ).partitions_written
        except DataError as exc:
            out.files[i] = (rows, exc)
    return out


def _days_with_rows(df: pl.DataFrame) -> int:
    return int((df["candle_begin_time"].dt.epoch("ms") // MS_PER_DAY).n_unique()) if df.height else 0


def _short(df: pl.DataFrame, f: ArchiveFile) -> bool:
    """Whether a monthly file's rows leave a whole UTC day of its month empty or stop before the
    month's last candle (see ``_Ingested.short``)."""
    if _days_with_rows(df) < -(-(f.end_ms - f.start_ms) // MS_PER_DAY):
        return True
    iv = f.iv
    return iv.floor(_last_open(df)) < iv.floor(f.end_ms - 1)


def _vouched(iv: Interval, df: pl.DataFrame, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The part of ``[start_ms, end_ms)`` a re-uploaded monthly file's rows ``df`` speak for: the
    days (months above ``1d``) it has a candle on, up to the end of its last candle.

    A truncated re-upload (#320: only the month's first days; a cut mid-day) says nothing about the
    days it lost, so it must not delete the rows its earlier version put there: nothing in the run
    would put them back outside its window, and a day without any candle in a monthly file is never
    taken as one the exchange had no candle on. Inside the span, its rows replace the old ones
    (a candle it removed or moved, as a re-upload does)."""
    if not df.height:
        return []
    end = min(end_ms, iv.next_open(iv.floor(_last_open(df))))
    if daily_available(iv) and end_ms - start_ms <= MS_PER_DAY:  # a daily file: its one day
        return [(start_ms, end)] if start_ms < end else []
    t = df["candle_begin_time"].dt.epoch("ms")
    days = set((t // MS_PER_DAY).unique().to_list()) if daily_available(iv) else None
    out: list[tuple[int, int]] = []
    for u0, u1 in units(iv, start_ms, end):
        if days is not None and u0 // MS_PER_DAY not in days:
            continue
        a, b = max(u0, start_ms), min(u1, end)
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _last_open(df: pl.DataFrame) -> int:
    last = df["candle_begin_time"].dt.epoch("ms").max()
    assert isinstance(last, int)
    return last


def _overlap(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where two lists of half-open ranges overlap (each sorted and disjoint)."""
    return [(max(x0, y0), min(x1, y1)) for x0, x1 in a for y0, y1 in b if max(x0, y0) < min(x1, y1)]


_FAR_MS = 4_102_444_800_000  # 2100-01-01


def _first_and_last(
    lfs: LakeFS, tt: str, iv: Interval, symbol: str, start_ms: int
) -> tuple[int | None, int | None]:
    """Open times of the series' first stored candle at or after ``start_ms`` and of its last one
    (reading two partitions, as a rule: the first one after ``start_ms`` and the last one)."""
    keys = sorted(list_partitions(lfs, tt, iv.name, symbol), key=lambda k: k.date)
    if not keys:
        return None, None
    first: int | None = None
    for k in (k for k in keys if k.end_ms > start_ms):  # (the first one, unless it has none after start)
        lo = _times(lfs, tt, iv, symbol, max(start_ms, k.start_ms), k.end_ms)
        if lo.len():
            first = int(lo[0])
            break
    hi = _times(lfs, tt, iv, symbol, keys[-1].start_ms, _FAR_MS)  # (the live tail's candles too)
    return first, (int(hi[-1]) if hi.len() else None)


def _shortfalls(
    lfs: LakeFS,
    market: str,
    iv: Interval,
    report: ArchiveReport,
    plans: Sequence[SeriesPlan],
    done: Sequence[_Done],
) -> None:
    """Once the run's files are in: fill ``report.cut`` (files cut before their period's end, or
    without any candle: ``shortfall.cut_ranges``) and ``report.kept`` (earlier rows a re-uploaded
    monthly file no longer has, that no daily file of this run settled: ``shortfall.kept_ranges``).

    Only units the lake lacked candles of when the run was planned, or that a file of this run left
    short, are read again: a run of complete files reads nothing more."""
    by_symbol: dict[str, list[_Done]] = {}
    for d in done:
        by_symbol.setdefault(d.planned.file.symbol, []).append(d)
    # series with kept ranges (one listing: few have any)
    recorded = {n.removesuffix(".json") for n in lfs.listdir(kept_dir(market, iv.name))} if done else set()
    failed: dict[str, list[tuple[int, int]]] = {}
    for ff in report.failed_files:
        failed.setdefault(ff.symbol, []).append((ff.start_ms, ff.end_ms))
    for p in plans:
        sym = p.symbol
        lo, hi = report.windows[sym]
        mine = by_symbol.get(sym, [])
        whole: set[tuple[int, int]] = set()  # units a file of this run wrote the last candle of
        cand = set(p.incomplete)
        for d in mine:
            f = d.planned.file
            a, b = max(lo, f.start_ms), min(hi, f.end_ms)
            if a >= b:
                continue
            ended = set(d.ended)
            if ended and d.planned.keep:  # (what daily files own: the monthly file wrote nothing there)
                owned = [
                    u
                    for c0, c1 in span_minus((f.start_ms, f.end_ms), sorted(d.planned.keep))
                    for u in units(iv, c0, c1)
                    if c0 <= u[0] and u[1] <= c1
                ]
                ended &= set(owned)
            whole |= ended
            cand.update(u for u in units(iv, a, b) if u not in ended)
        lacking = set(report.lacking.get(sym, ()))
        empty: set[int] = set()  # units whose own file was ingested without a row
        if cand - whole or (lacking and not daily_available(iv)):
            empty = {
                r.start_ms
                for r in read_manifest(lfs, market, iv.name, sym).values()
                if r.rows == 0 and units(iv, r.start_ms, r.end_ms) == [(r.start_ms, r.end_ms)]
            }
        # Units reported lacking already (no file; a day a monthly file left blank), or whose file
        # failed, are not read again; a month a 1w/3d/1mo file left blank is lacking too, but its
        # file has no candle at all, which is no listing later in the month (``cut_ranges``).
        bad = failed.get(sym, [])
        cand = {
            u
            for u in cand - whole
            if (u not in lacking or u[0] in empty) and not any(x0 < u[1] and u[0] < x1 for x0, x1 in bad)
        }
        if cand:
            cuts = cut_ranges(lfs, report.trade_type, iv, sym, cand, (lo, hi), empty)
            if cuts:
                report.cut[sym] = cuts
        # what the run's daily files have candles for is theirs: only the rest is kept unconfirmed
        settled = [v for d in mine if d.planned.file.freq == DAILY for v in d.vouched]
        added: list[KeptRange] = []
        for d in mine:
            if not d.lost:
                continue
            for a, b, n in kept_ranges(lfs, report.trade_type, iv, sym, d.lost, settled):
                msg = (
                    f"{report.trade_type} {iv.name} {sym} [{_iso(a)}, {_iso(b)}): {n} candle(s) kept that the "
                    f"re-uploaded {d.planned.file.name} no longer has"
                )
                log.warning("archive rows kept: %s", msg)
                report.kept.append(msg)
                added.append(KeptRange(a, b, d.planned.file.name))
        # Kept for `lake audit` too, until a daily file or a later version of the file settles them.
        replaced = {d.planned.file.name for d in mine if d.planned.file.freq == MONTHLY and d.planned.replace}
        if added or (sym in recorded and (settled or replaced)):
            update_kept(lfs, market, iv.name, sym, replaced=replaced, settled=settled, added=added)


def _missing(
    lfs: LakeFS,
    report: ArchiveReport,
    iv: Interval,
    horizon: int | None,
    trading: set[str] | None,
    latest: Mapping[str, int] | None = None,
) -> list[str]:
    """The lacking units and cut ranges (``report.cut``) the run cannot explain, as ranges clipped to
    each symbol's window.

    A unit is explained when it lies
    * at or after the archive's horizon (``horizon``: the end of the last period it lists for any
      symbol of the run): not published yet, the last day or two (``--source auto`` takes them from
      REST);
    * before the series' first stored candle at or after the window's start: the symbol was listed
      (or relisted) later, as the REST backfill's ``short_history`` (the monthly file of a mid-month
      listing has nothing for the month's first days); a window without any candle is REST's
      ``no_data``. Not a cut range: it follows a candle, or is a published file's whole period;
    * after the last stored candle of a symbol that is no longer trading (REST's ``ended``), when the
      archive lists no file of it starting at or after the unit's end (``latest``: per symbol, the
      start of its latest file). A delisted symbol's last stored candle is only where the lake
      stops: a window ending on a month whose file was cut at its end (no daily files for the cut
      days) made the cut look like the delisting, while the archive lists the files of later days.
    Anything else (a day without any file, a day a monthly file left empty while no daily file
    exists, a trading symbol's days the archive has published for others but not for it, a delisting
    gap between two candles of the window) is missing: without REST nothing says the exchange had no
    candles there, so an archive-only run reports it instead of succeeding as if the lake were whole.
    """
    if horizon is None:
        return []
    out: list[str] = []
    for sym in sorted({*report.lacking, *report.cut}):
        lo, hi = report.windows[sym]
        spans = [(*u, False) for u in report.lacking.get(sym, ())] + [
            (*c, True) for c in report.cut.get(sym, ())
        ]
        spans = [u for u in spans if u[0] < horizon]
        if not spans:
            continue
        first, last = _first_and_last(lfs, report.trade_type, iv, sym, lo)
        ended = trading is not None and sym not in trading
        later = (latest or {}).get(sym)
        runs: list[list[int]] = []
        for u0, u1, cut in sorted(spans):
            delisted = ended and (last is None or u0 > last) and (later is None or later < u1)
            if (not cut and (first is None or u1 <= first)) or delisted:
                continue
            a, b = max(u0, lo), min(u1, hi)
            if a >= b:
                continue
            if runs and runs[-1][1] >= a:
                runs[-1][1] = max(runs[-1][1], b)
            else:
                runs.append([a, b])
        out += [
            f"{report.trade_type} {iv.name} {sym} [{_iso(a)}, {_iso(b)}): not in the archive" for a, b in runs
        ]
    return out


def _record(pf: PlannedFile, got: Downloaded, rows: int) -> FileRecord:
    return FileRecord(
        sha256=got.sha256,
        zip_version=pf.entry.version,
        checksum_version=pf.checksum_entry.version if pf.checksum_entry is not None else "",
        rows=rows,
        start_ms=pf.file.start_ms,
        end_ms=pf.file.end_ms,
    )


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date()


def _month_ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")
