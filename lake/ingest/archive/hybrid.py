"""``--source archive|rest|auto``: the archive for every published day, REST for the rest, one run.

    result = await archive_backfill(lfs, ["usdt_perp"], "1m", start=t0, source="auto",
                                    settings=settings, progress=progress)

How ``auto`` dispatches, per trade type (trade types of one market share one REST client):

1. One REST client per market (``lake.ingest.rest_client``) gives the server's "now" and exchangeInfo,
   hence the universe: the TRADING symbols, or the whitelist. With ``include_delisted`` the symbols
   the archive lists for the trade type that are not TRADING are added (``symbols.delisted_candidates``).
2. The archive part (``runner.ingest_archive``) ingests, for ``[start, end)``, every day (month above
   ``1d``) the lake lacks and the archive publishes: verified, parsed, upserted, recorded.
3. The REST part is #4's backfill (``lake.ingest.backfill.backfill``) over the same window and
   symbols, on the same client and governor. It plans from the lake, so it fetches exactly what is
   still missing: the last day or two the archive has not published yet, days the archive lacks, and
   the gaps inside archive days. A range REST answers empty is recorded as confirmed empty (an
   exchange hole for ``lake status``). Symbols exchangeInfo no longer lists are archive-only.

``source="archive"`` stops after step 2. Units the archive lacks are reported (``ArchiveReport.lacking``),
and so is what an ingested file lacks after its last candle (``ArchiveReport.cut``: a file cut short,
binance-public-data #413); those the archive should have had (``runner._missing``: not the days it has
not published yet, nor days before a symbol's first candle or after a delisted symbol's last) make the
run fail with ``IncompleteError`` (exit 5) naming each range, as the REST backfill does for ranges it
could not fetch. Rows a re-uploaded monthly file no longer has are kept and named
(``ArchiveReport.kept``, a warning; the exit code is unchanged). With ``auto`` REST fills
them, except for symbols exchangeInfo does not list (archive-only): their missing ranges fail the run
the same way once REST is done. ``source="rest"`` is the plain REST backfill (the command does not come
here).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lake.binance.intervals import MS_PER_DAY, parse_interval
from lake.binance.markets import TradeType, get_trade_type
from lake.binance.symbols import validate_symbols
from lake.errors import (
    DataError,
    IncompleteError,
    NotFoundError,
    StoreUnreachableError,
    UpstreamError,
    ValidationError,
)
from lake.ingest.archive.runner import ArchiveReport, ingest_archive, list_archive_symbols
from lake.ingest.archive.symbols import delisted_candidates, name_matches_trade_type
from lake.ingest.backfill import BackfillReport, backfill
from lake.ingest.rest_client import RestClient
from lake.ingest.universe import fetch_exchange_info, universe
from lake.net import proxy_from_env
from lake.progress import Progress
from lake.settings import Settings
from lake.store.fs import LakeFS

__all__ = ["SOURCES", "HybridResult", "archive_backfill"]

log = logging.getLogger("lake.archive")

SOURCES = ("archive", "rest", "auto")


@dataclass
class HybridResult:
    archive: list[ArchiveReport] = field(default_factory=list)
    rest: BackfillReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": [r.to_dict() for r in self.archive],
            "rest": self.rest.to_dict() if self.rest is not None else None,
        }


def _ms(t: dt.datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        raise ValidationError("pass timezone-aware (UTC) datetimes")
    return math.floor(t.timestamp() * 1000)


async def archive_backfill(
    root: LakeFS,
    trade_types: Sequence[str],
    interval: str,
    *,
    settings: Settings,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    days: float | None = None,
    symbols: Sequence[str] | None = None,
    source: str = "auto",
    include_delisted: bool = False,
    keep_zips: bool = False,
    funding: bool = False,
    recheck: bool = False,
    progress: Progress | None = None,
    concurrency: int = 8,
) -> HybridResult:
    """Archive first, then (``auto``) REST for whatever the lake still lacks; see the module doc.

    Raises ``DataError`` naming archive files that failed verification: with ``auto`` after the REST
    part has filled everything else (their days are left out of the lake, REST included);
    ``IncompleteError`` from the REST part.
    """
    if source not in ("archive", "auto"):
        raise ValidationError(f"source must be 'archive' or 'auto' here, got {source!r}")
    if funding and source == "archive":
        raise ValidationError("--funding needs REST: use --source auto or rest")
    tts = list({t.name: t for t in (get_trade_type(x) for x in trade_types)}.values())
    if not tts:
        raise ValidationError("no trade type given")
    iv = parse_interval(interval, spot=all(t.is_spot for t in tts))
    wanted = validate_symbols(list(symbols)) if symbols else None
    start_ms, end_ms = _ms(start), _ms(end)
    if (days is None) == (start is None):
        raise ValidationError("give either --days or --start (not both)")
    result = HybridResult()
    clients: dict[str, RestClient] = {}
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=settings.http_timeout, sock_read=settings.http_timeout * 3
        ),
        trust_env=proxy_from_env(settings.endpoints.archive, settings.endpoints.archive_list),
    )
    try:
        rest_symbols: dict[str, list[str]] = {}
        trading: dict[str, set[str]] = {}  # per trade type: its TRADING symbols
        planned: list[tuple[TradeType, list[str], int, int]] = []  # (trade type, symbols, lo, hi)
        claimed: set[str] = set()
        archived: dict[str, set[str]] = {}  # market -> symbols its archive lists (fetched on need)

        async def archive_names(market: str, unknown: list[str]) -> set[str]:
            if market not in archived:
                try:
                    archived[market] = set(await list_archive_symbols(session, settings.endpoints, market))
                except UpstreamError as exc:
                    # only the archive could have them (REST skips what exchangeInfo does not list):
                    # going on would end with nothing for them and exit 0
                    raise UpstreamError(
                        f"symbol(s) {', '.join(unknown)} are not in exchangeInfo and the {market} archive "
                        f"listing is unreachable: {exc}"
                    ) from exc
            return archived[market]

        for tt in tts:
            client = clients.get(tt.market_name)
            if client is None:
                client = RestClient.from_settings(settings, tt.market_name)
                await client.start()
                clients[tt.market_name] = client
            now = await client.server_time()
            snap = await fetch_exchange_info(client)
            closed_end = iv.floor(now)
            hi = closed_end if end_ms is None else min(end_ms, closed_end)
            lo = start_ms if start_ms is not None else hi - int((days or 0) * MS_PER_DAY)
            raw = {str(s.get("symbol")): s for s in snap.symbols}
            if wanted is not None:
                # A whitelist is shared by the trade types: each takes the symbols it lists, so that
                # `-t usdt_spot -t btc_spot --symbols BTCUSDT,ETHBTC` files each pair under its own
                # type. A symbol exchangeInfo no longer lists at all (delisted; the archive may still
                # have it) goes to the trade types its name fits, if their archive lists it.
                known = set(snap.listed(tt, wanted))
                gone = [
                    s for s in wanted if s not in known and s not in raw and name_matches_trade_type(s, tt)
                ]
                listed = await archive_names(tt.market_name, gone) if gone else set()
                syms = [s for s in wanted if s in known or (s in gone and s in listed)]
            else:
                syms = universe(snap, tt).symbols
                known = set(syms)
                if include_delisted:
                    listed_all = await list_archive_symbols(session, settings.endpoints, tt.market_name)
                    extra = [s for s in delisted_candidates(listed_all, tt, raw) if s not in syms]
                    if extra:
                        log.info(
                            "%s: adding %d delisted archive symbol(s): %s",
                            tt.name,
                            len(extra),
                            ", ".join(extra[:10]) + (" …" if len(extra) > 10 else ""),
                        )
                    syms += extra
                    known |= {s for s in extra if s in raw}
            claimed.update(syms)
            planned.append((tt, syms, lo, hi))
            trading[tt.name] = {s.symbol for s in snap.members(tt)}
            rest_symbols[tt.name] = [s for s in syms if s in known]
        if wanted is not None:
            absent = [s for s in wanted if s not in claimed]
            if absent:
                types = ", ".join(t.name for t in tts)
                raise NotFoundError(
                    f"unknown {types} symbol(s): {', '.join(absent)} "
                    "(neither in exchangeInfo nor in the archive for the trade type)"
                )
        for tt, syms, lo, hi in planned:
            if lo >= hi:
                # No candle of the window has closed yet (`--start` inside the current candle, e.g.
                # `--interval 1d --start <today 06:00>`): nothing to fetch, as the REST part reports.
                result.archive.append(ArchiveReport(tt.name, iv.name, list(syms)))
                continue
            try:
                rep = await ingest_archive(
                    settings, tt.name, iv.name, syms, lo, hi,
                    keep_zips=keep_zips, progress=progress, session=session, concurrency=concurrency,
                    raise_on_failure=source == "archive", trading=trading[tt.name],
                )  # fmt: skip
            except UpstreamError as exc:
                if source == "archive" or isinstance(exc, StoreUnreachableError):
                    raise  # (the lake's own store down is not the archive: REST cannot help)
                # The archive is a shortcut: REST below fills whatever it did not deliver.
                log.warning("archive unavailable for %s (%s); REST fills the whole window", tt.name, exc)
                rep = ArchiveReport(tt.name, iv.name, list(syms), failed=[str(exc)])
            result.archive.append(rep)
            if progress is not None:
                progress.message(_summary(rep))
        if source == "archive":
            _raise_if_missing(
                result,
                [m for rep in result.archive for m in rep.missing],
                "--source auto fills them over REST, or confirms them empty",
            )
            return result
        # Symbols REST does not serve (not in exchangeInfo) have only the archive: what it lacks for
        # them stays missing. (A missing line reads "<type> <interval> <SYMBOL> [start, end): …".)
        served = {k: set(v) for k, v in rest_symbols.items()}
        archive_only = [
            m
            for rep in result.archive
            for m in rep.missing
            if m.split(" ", 3)[2] not in served.get(rep.trade_type, set())
        ]
        # A file that failed verification (wrong checksum, corrupt zip, bad rows) keeps its days out
        # of the lake, REST included: the run fails on it below, after everything else is done. A
        # file that could not be downloaded is only a missed shortcut: REST fills its days.
        bad: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for rep in result.archive:
            for f in rep.failed_files:
                if f.bad:
                    bad.setdefault(rep.trade_type, {}).setdefault(f.symbol, []).append((f.start_ms, f.end_ms))
            unavailable = [f for f in rep.failed_files if not f.bad]
            if unavailable:
                log.warning(
                    "%s: %d archive file(s) could not be downloaded; REST fills their days",
                    rep.trade_type,
                    len(unavailable),
                )
        try:
            result.rest = await backfill(
                root, [t.name for t in tts], iv.name,
                start=start if start is not None else None, end=end, days=days,
                symbols={k: v for k, v in rest_symbols.items()} if (wanted is not None or include_delisted) else None,
                funding=funding, recheck=recheck, settings=settings, clients=clients, progress=progress,
                unknown_symbols="skip", skip=bad,
            )  # fmt: skip
        except IncompleteError as exc:
            # what the archive left missing is named too: its only-archive symbols' ranges, and the
            # files that failed verification (their days are skipped by REST; the DataError below
            # that names them is not reached)
            exc.missing.extend(archive_only)
            exc.missing.extend(
                f"{f.message}: nothing written for its days"
                for rep in result.archive
                for f in rep.failed_files
                if f.bad
            )
            rest = getattr(exc, "report", None)
            result.rest = rest if isinstance(rest, BackfillReport) else None
            exc.result = result  # type: ignore[attr-defined]  # (the command prints both parts)
            raise
        if bad:
            names = [f.message for rep in result.archive for f in rep.failed_files if f.bad]
            raise DataError(
                f"archive ingest failed for {len(names)} file(s); nothing was written for their days "
                "(everything else is done; rerun once the archive is fixed, or fill them with "
                "--source rest): " + "; ".join(names[:20]) + (" …" if len(names) > 20 else "")
            )
        _raise_if_missing(
            result, archive_only, "symbols exchangeInfo no longer lists: only the archive has them"
        )
        return result
    finally:
        for c in clients.values():
            await c.close()
        await session.close()


def _raise_if_missing(result: HybridResult, missing: list[str], hint: str) -> None:
    """``IncompleteError`` (exit 5) naming every range the archive should have had and did not."""
    if not missing:
        return
    err = IncompleteError(
        f"archive ingest incomplete: {len(missing)} range(s) missing, e.g. {missing[0]} ({hint})", missing
    )
    err.result = result  # type: ignore[attr-defined]
    raise err


def _summary(r: ArchiveReport) -> str:
    lacking = sum(len(v) for v in r.lacking.values())
    return (
        f"archive {r.trade_type} {r.interval}: {len(r.symbols)} symbols, {r.files_downloaded} files "
        f"({r.bytes / 1e6:.1f} MB, {r.files_reuploaded} re-uploaded), {r.rows:,} rows, "
        f"{r.units_skipped} units already held, {lacking} not in the archive"
        + (f", {sum(len(v) for v in r.cut.values())} range(s) cut short in archive files" if r.cut else "")
        + (f" ({len(r.missing)} range(s) missing)" if r.missing else "")
        + (f", {len(r.kept)} range(s) kept that re-uploaded files no longer have" if r.kept else "")
        + f", {r.seconds:.1f}s"
    )
