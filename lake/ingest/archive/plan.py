"""Which archive files to fetch: monthly files for whole months, daily ones for the rest, only what lacks.

Archive layout (``binance.md`` §5)::

    {archive}/{market prefix}/{daily|monthly}/klines/{SYMBOL}/{iv}/{SYMBOL}-{iv}-{YYYY-MM-DD|YYYY-MM}.zip

with ``iv`` the archive's interval name (``1mo`` for ``1M``) and a ``.CHECKSUM`` sidecar per zip.
Daily files exist for intervals up to ``1d``; ``3d``, ``1w`` and ``1mo`` are monthly only.

Planning works in *units*: days for intervals up to ``1d``, months above. A unit needs nothing when the
lake already holds every candle of it (counting ranges recorded as confirmed empty), or when the file
that covers it was ingested and verified before and the listing shows it unchanged (a day with a
maintenance hole stays short of candles forever; the manifest is what says the archive has been read).
A verified monthly file does not cover a day it left without any candle when that day has a daily
file: Binance has published truncated monthly files, and the daily one is fetched for that day; nor
the day before such a day when it left that one incomplete (where the file was cut, mid-day), nor an
incomplete last day of its month (a file cut there has no empty day after the cut).
A file the manifest knows but whose ETag/Last-Modified/Size changed in the listing was re-uploaded by
Binance and is fetched again whatever the lake holds. A day that a verified monthly file left without a
candle and that no daily file covers is ``unfilled``: nothing to fetch, but the archive lacks it.

Precedence when a monthly file and daily files cover the same day: **the day belongs to its daily file**
once that file was ingested, up to the end of its last candle. A monthly file writes nothing there
(``PlannedFile.keep``, any day of its month, inside the run's window or not), and a daily file
replaces the archive rows there (a re-uploaded one, of its whole day). After a daily file's last
candle the monthly file's rows stand: a daily file cut hours before its day's end (#413) says nothing
about those hours, and the monthly file is then taken for them (once, even when daily files hold
every other day of the month). Daily files are the ones Binance re-uploads with corrections, monthly
files are built once after the month and have been seen holding stale rows where the daily file and
REST agree (#475), or only the month's first days (#320). The lake then depends only on which file
versions were ingested, never on their order: ``{daily, monthly}`` in either order leaves the daily
file's rows on its day up to its last candle, and the monthly file's after it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lake.binance.intervals import MS_PER_DAY, Interval, parse_interval
from lake.binance.markets import get_market
from lake.binance.symbols import validate_symbol
from lake.errors import ValidationError
from lake.ingest.archive.listing import ListEntry

__all__ = [
    "ArchiveFile",
    "FileRecord",
    "PlannedFile",
    "SeriesPlan",
    "UnitState",
    "daily_available",
    "file_from_name",
    "merge_spans",
    "month_start",
    "next_month",
    "plan_series",
    "series_prefix",
    "span_minus",
    "symbols_prefix",
    "units",
]

DAILY, MONTHLY = "daily", "monthly"
FREQS = (DAILY, MONTHLY)
# Fetch the monthly file instead of daily ones when at least this many days of the month are lacking.
MONTHLY_MIN_DAYS = 8


def _ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


def _date(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date()


def month_start(d: dt.date) -> dt.date:
    return d.replace(day=1)


def next_month(d: dt.date) -> dt.date:
    return dt.date(d.year + 1, 1, 1) if d.month == 12 else dt.date(d.year, d.month + 1, 1)


def daily_available(interval: Interval) -> bool:
    """Whether the archive publishes daily files for ``interval`` (up to ``1d``)."""
    return interval.ms is not None and interval.ms <= MS_PER_DAY


def symbols_prefix(market: str, freq: str) -> str:
    """Listing prefix whose sub-directories are the symbols: ``data/spot/daily/klines/``."""
    if freq not in FREQS:
        raise ValidationError(f"unknown archive frequency {freq!r}")
    return f"{get_market(market).archive_prefix}/{freq}/klines/"


def series_prefix(market: str, freq: str, symbol: str, interval: Interval | str) -> str:
    """Listing prefix of one series' files: ``data/spot/daily/klines/BTCUSDT/1m/``."""
    iv = parse_interval(interval)
    return f"{symbols_prefix(market, freq)}{validate_symbol(symbol)}/{iv.archive_name}/"


@dataclass(frozen=True, slots=True, order=True)
class ArchiveFile:
    """One archive zip: a day (``daily``) or a month (``monthly``) of one series."""

    market: str
    freq: str
    symbol: str
    interval: str  # the lake's name (``1M``, not ``1mo``)
    period: dt.date  # the day, or the first day of the month

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        iv = parse_interval(self.interval)
        get_market(self.market)
        if self.freq == DAILY and not daily_available(iv):
            raise ValidationError(f"the archive has no daily {iv.archive_name} files")
        if self.freq == MONTHLY and self.period.day != 1:
            raise ValidationError(f"monthly file period must be a month start, got {self.period}")
        if self.freq not in FREQS:
            raise ValidationError(f"unknown archive frequency {self.freq!r}")

    @property
    def iv(self) -> Interval:
        return parse_interval(self.interval)

    @property
    def label(self) -> str:
        return self.period.isoformat() if self.freq == DAILY else self.period.strftime("%Y-%m")

    @property
    def name(self) -> str:
        return f"{self.symbol}-{self.iv.archive_name}-{self.label}.zip"

    @property
    def key(self) -> str:
        return f"{series_prefix(self.market, self.freq, self.symbol, self.interval)}{self.name}"

    @property
    def checksum_key(self) -> str:
        return f"{self.key}.CHECKSUM"

    @property
    def start_ms(self) -> int:
        return _ms(self.period)

    @property
    def end_ms(self) -> int:
        end = self.period + dt.timedelta(days=1) if self.freq == DAILY else next_month(self.period)
        return _ms(end)

    def __str__(self) -> str:
        return self.key


# The symbol part is checked by ArchiveFile (validate_symbol), which also admits CJK names.
_NAME_RE = re.compile(r"(?P<sym>[^/\-]+)-(?P<iv>[0-9a-z]+)-(?P<date>\d{4}-\d{2}(?:-\d{2})?)\.zip")


def file_from_name(market: str, freq: str, interval: Interval | str, name: str) -> ArchiveFile | None:
    """The ``ArchiveFile`` a listed zip name stands for, or ``None`` if it has another shape."""
    iv = parse_interval(interval)
    m = _NAME_RE.fullmatch(name)
    if m is None or m["iv"] != iv.archive_name:
        return None
    label = m["date"]
    try:
        if freq == DAILY and len(label) == 10:
            period = dt.date.fromisoformat(label)
        elif freq == MONTHLY and len(label) == 7:
            period = dt.date.fromisoformat(label + "-01")
        else:
            return None
        return ArchiveFile(market, freq, m["sym"], iv.name, period)
    except (ValueError, ValidationError):
        return None


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What the manifest remembers of one ingested file."""

    sha256: str
    zip_version: str
    checksum_version: str
    rows: int
    start_ms: int
    end_ms: int
    # a daily file: the end of its last candle (None in records older than the field: its whole day)
    vouched_end: int | None = None


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """A file to fetch, with its listing entries and why it is fetched: ``new``, ``reuploaded``,
    ``unrecorded`` (its rows are in the lake but its manifest record was lost to a crash, so a later
    re-upload could not be detected), or ``kept`` (a daily file of kept ranges: ``plan_series``).
    ``replace``: ranges whose stored archive rows the file's rows replace rather than merge with (a
    re-upload may remove or move a candle). ``keep``: ranges the file must not write to (what daily
    files own of a monthly file's days: the module doc)."""

    file: ArchiveFile
    entry: ListEntry
    checksum_entry: ListEntry | None
    reason: str = "new"
    replace: tuple[tuple[int, int], ...] = ()
    keep: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class UnitState:
    """What the lake holds for one planning unit (a day, or a month above ``1d``)."""

    rows: int  # stored candles opening in the unit
    empty: int  # candles of the unit inside ranges recorded as confirmed empty
    archive: int = 0  # stored candles of the unit with source = archive
    # open time of the unit's last stored candle (-1: none, or not known): where a file was cut
    last: int = field(default=-1, compare=False)


@dataclass(slots=True)
class SeriesPlan:
    symbol: str
    fetch: list[PlannedFile] = field(default_factory=list)
    skipped: int = 0  # units the lake or a verified file already covers
    lacking: list[tuple[int, int]] = field(default_factory=list)  # units the archive has no file for
    # units a verified monthly file covers but left without a candle, that no daily file covers either
    # (counted in ``skipped``: nothing to fetch for them, but the archive lacks them all the same)
    unfilled: list[tuple[int, int]] = field(default_factory=list)
    # every unit of the window the lake lacks candles of, fetched or not: where a file that is in
    # may be cut short (``runner`` checks them once the run's files are in)
    incomplete: list[tuple[int, int]] = field(default_factory=list)

    @property
    def lacking_units(self) -> int:
        return len(self.lacking)


def units(interval: Interval, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """Planning units overlapping ``[start_ms, end_ms)``: whole UTC days up to ``1d``, months above."""
    out: list[tuple[int, int]] = []
    if start_ms >= end_ms:
        return out
    if daily_available(interval):
        t = start_ms - start_ms % MS_PER_DAY
        while t < end_ms:
            out.append((t, t + MS_PER_DAY))
            t += MS_PER_DAY
        return out
    d = month_start(_date(start_ms))
    while _ms(d) < end_ms:
        nd = next_month(d)
        out.append((_ms(d), _ms(nd)))
        d = nd
    return out


def _changed(rec: FileRecord, entry: ListEntry, checksum: ListEntry | None) -> bool:
    """Whether the listing shows a file different from the one ingested (a re-upload)."""
    if entry.version != rec.zip_version:
        return True
    return checksum is not None and rec.checksum_version != "" and checksum.version != rec.checksum_version


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ``spans`` merged where they overlap or touch, sorted."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def span_minus(span: tuple[int, int], cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``span`` without the (sorted, disjoint) ``cuts``."""
    out: list[tuple[int, int]] = []
    a, b = span
    for c0, c1 in sorted(cuts):
        if c1 <= a or c0 >= b:
            continue
        if c0 > a:
            out.append((a, c0))
        a = max(a, c1)
    if a < b:
        out.append((a, b))
    return out


def plan_series(
    market: str,
    symbol: str,
    interval: Interval | str,
    start_ms: int,
    end_ms: int,
    listed: Mapping[str, ListEntry],
    lake: Mapping[int, UnitState],
    manifest: Mapping[str, FileRecord],
    *,
    monthly_min_days: int = MONTHLY_MIN_DAYS,
    kept: Sequence[tuple[int, int]] = (),
) -> SeriesPlan:
    """Plan one series over ``[start_ms, end_ms)``.

    ``listed`` maps zip and ``.CHECKSUM`` names (daily and monthly together) to their listing entries;
    ``lake`` maps each unit's start to what the lake holds of it inside the window (rows outside it
    must not make an edge unit look complete: ``runner._lake_states``); ``manifest`` maps ingested
    file names to their records. The result lists files to fetch (monthly ones for months with at least
    ``monthly_min_days`` lacking days, or days without a daily file) and the units the archive lacks.
    ``kept``: ranges of archive rows a re-uploaded monthly file no longer has (``manifest``, kept
    ranges); a daily file of theirs not ingested yet is fetched, to settle them.
    """
    iv = parse_interval(interval)
    validate_symbol(symbol)
    plan = SeriesPlan(symbol)
    daily_ok = daily_available(iv)

    def entry(f: ArchiveFile) -> tuple[ListEntry, ListEntry | None] | None:
        e = listed.get(f.name)
        return None if e is None else (e, listed.get(f.name + ".CHECKSUM"))

    def verified(f: ArchiveFile) -> bool:
        rec = manifest.get(f.name)
        found = entry(f)
        return rec is not None and found is not None and not _changed(rec, *found)

    def reuploaded(f: ArchiveFile) -> bool:
        rec = manifest.get(f.name)
        found = entry(f)
        return rec is not None and found is not None and _changed(rec, *found)

    by_month: dict[dt.date, list[tuple[int, int]]] = {}
    for u in units(iv, start_ms, end_ms):
        by_month.setdefault(month_start(_date(u[0])), []).append(u)

    for month, month_units in by_month.items():
        mfile = ArchiveFile(market, MONTHLY, symbol, iv.name, month)
        m_entry = entry(mfile)
        fetch_monthly = reuploaded(mfile)
        m_verified = verified(mfile)
        need: list[tuple[int, int]] = []
        daily_fetch: list[PlannedFile] = []
        no_daily: list[tuple[int, int]] = []
        cut_daily = False  # a day whose verified daily file ends before the day does (below)
        unrecorded = False
        # Days of the window the lake holds no candle of (nor an exchange hole): the day before one
        # that a verified monthly file left incomplete is where that file was cut (below).
        blank = {
            u0
            for u0, u1 in month_units
            if (st := lake.get(u0, UnitState(0, 0))).rows == 0
            and st.empty < iv.count(max(u0, start_ms), min(u1, end_ms))
        }
        for u0, u1 in month_units:
            state = lake.get(u0, UnitState(0, 0))
            expected = iv.count(max(u0, start_ms), min(u1, end_ms))
            complete = state.rows + state.empty >= expected
            if not complete:
                plan.incomplete.append((u0, u1))
            dfile = ArchiveFile(market, DAILY, symbol, iv.name, _date(u0)) if daily_ok else None
            if dfile is not None and reuploaded(dfile):
                found = entry(dfile)
                assert found is not None
                daily_fetch.append(
                    PlannedFile(dfile, found[0], found[1], "reuploaded", ((dfile.start_ms, dfile.end_ms),))
                )
                continue
            found = entry(dfile) if dfile is not None else None
            if (
                found is not None
                and dfile is not None
                and not verified(dfile)
                and any(k0 < u1 and u0 < k1 for k0, k1 in kept)
            ):
                # merged with the kept rows, not replacing them: what it has candles for is settled
                daily_fetch.append(PlannedFile(dfile, found[0], found[1], "kept"))
                continue
            # A verified monthly file covers its days, except a day it left empty while a daily file
            # exists: Binance has published truncated monthly files (2024-01 held only the 1st-10th
            # for some symbols, binance-public-data #320); the daily file fills that day. So does the
            # daily file of a day it left incomplete before such a day, or on the month's last day
            # (no day after it in the month can be blank): where it was cut, mid-day (a delisting
            # day's daily file, or that of a maintenance on the month's last day, is fetched once
            # more for nothing).
            cut = (
                not complete and state.rows > 0 and found is not None and (u1 in blank or u1 == mfile.end_ms)
            )
            monthly_covers = m_verified and ((state.rows > 0 and not cut) or found is None)
            if monthly_covers or (dfile is not None and verified(dfile)):
                plan.skipped += 1
                if m_verified and state.rows == 0 and found is None and not complete:
                    plan.unfilled.append((u0, u1))
                # A daily file cut before its day's end (binance-public-data #413) leaves the day's
                # last hours to the monthly file (module doc); a delisting day's file takes it once.
                rec = manifest.get(dfile.name) if dfile is not None else None
                if not complete and not monthly_covers and rec is not None and rec.vouched_end is not None:
                    cut_daily |= rec.vouched_end < min(u1, end_ms) and state.last < rec.vouched_end
                continue
            if complete and state.archive == 0:
                plan.skipped += 1
                continue
            if complete:
                # Archive rows no record accounts for: a crash between writing a file's rows and
                # recording it. Fetched again (an upsert that changes nothing) so that the record
                # exists and a later re-upload is noticed.
                unrecorded = True
            need.append((u0, u1))
            if dfile is None or found is None:
                no_daily.append((u0, u1))
            else:
                # on a day with the verified monthly file's rows (a cut day), they are replaced
                own = ((u0, u1),) if m_verified and state.archive > 0 else ()
                daily_fetch.append(
                    PlannedFile(dfile, found[0], found[1], "unrecorded" if complete else "new", own)
                )
        # A verified, unchanged monthly file is not fetched again: it would fill none of those days.
        take_monthly = not m_verified and (bool(no_daily) or len(need) >= monthly_min_days or cut_daily)
        if m_entry is not None and (fetch_monthly or take_monthly):
            reason = "reuploaded" if fetch_monthly else ("unrecorded" if unrecorded else "new")
            # A day a daily file was ingested for (inside the window or not) is the daily file's
            # up to its last candle (module doc): the monthly file writes nothing there, and a
            # re-uploaded one replaces its archive rows elsewhere only.
            daily_owned = [
                (d0, d1 if rec.vouched_end is None else min(d1, rec.vouched_end))
                for d0, d1 in (units(iv, mfile.start_ms, mfile.end_ms) if daily_ok else [])
                if (rec := manifest.get(ArchiveFile(market, DAILY, symbol, iv.name, _date(d0)).name))
                is not None
                and (rec.vouched_end is None or rec.vouched_end > d0)
            ]
            rest = span_minus((mfile.start_ms, mfile.end_ms), daily_owned)
            replace = tuple(rest) if fetch_monthly else ()
            keep = tuple(span_minus((mfile.start_ms, mfile.end_ms), rest))
            plan.fetch.append(PlannedFile(mfile, m_entry[0], m_entry[1], reason, replace, keep))
            # Re-uploaded daily files are still fetched: their days may differ from the monthly file.
            plan.fetch.extend(p for p in daily_fetch if p.reason == "reuploaded")
            continue
        plan.fetch.extend(daily_fetch)
        plan.lacking.extend(no_daily)
    return plan
