"""``lake backfill``: fill the lake over REST, at the weight limit, fetching only what is missing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from lake.cli_common import (
    ArchiveListUrlOpt,
    ArchiveUrlOpt,
    CmRestUrlOpt,
    ConfigOpt,
    JsonOpt,
    RestUrlOpt,
    RootOpt,
    SimUrlOpt,
    SpotRestUrlOpt,
    UmRestUrlOpt,
    check_number,
    get_settings,
    parse_when,
    print_json,
)
from lake.errors import IncompleteError, ValidationError
from lake.ingest.backfill import BackfillReport, backfill
from lake.progress import Progress
from lake.store.fs import LakeFS

if TYPE_CHECKING:
    from lake.ingest.archive.hybrid import HybridResult

_T = TypeVar("_T")

log = logging.getLogger("lake.backfill")

MAX_DAYS = 36_500  # a century: far more than any market's history, still a valid date


def backfill_cmd(
    trade_types: Annotated[
        list[str],
        typer.Option(
            "--type", help="Trade type (repeat for several; they run concurrently), e.g. usdt_perp."
        ),
    ],
    intervals: Annotated[
        list[str] | None, typer.Option("--interval", help="Kline interval (one per run; default 5m).")
    ] = None,
    days: Annotated[
        float | None,
        typer.Option("--days", help=f"The last N days up to the server's now (0 < N <= {MAX_DAYS})."),
    ] = None,
    start: Annotated[
        str | None, typer.Option("--start", help="Start (UTC), e.g. 2024-01-01 or 2024-01-01T12:00.")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--end", help="End, exclusive (UTC); default: the server's now.")
    ] = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols",
            help="Only these symbols (comma-separated); default: all TRADING. With several --type, "
            "each type takes the symbols it lists.",
        ),
    ] = None,
    funding: Annotated[
        bool, typer.Option("--funding", help="Also fill the funding table (perpetuals).")
    ] = False,
    recheck: Annotated[
        bool, typer.Option("--recheck", help="Refetch ranges recorded as confirmed empty.")
    ] = False,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
    rest_url: RestUrlOpt = None,
    sim_url: SimUrlOpt = None,
    # -- archive source (issue #5; logic in lake.ingest.archive) --
    source: Annotated[
        str,
        typer.Option(
            "--source", help="archive, rest or auto (archive for published days, REST for the rest)."
        ),
    ] = "auto",
    include_delisted: Annotated[
        bool, typer.Option("--include-delisted", help="Also backfill archive symbols no longer TRADING.")
    ] = False,
    keep_zips: Annotated[
        bool,
        typer.Option(
            "--keep-zips", help="Keep verified archive zips after ingest (in downloads/ of state_dir)."
        ),
    ] = False,
    archive_url: ArchiveUrlOpt = None,
    archive_list_url: ArchiveListUrlOpt = None,
    spot_rest_url: SpotRestUrlOpt = None,
    um_rest_url: UmRestUrlOpt = None,
    cm_rest_url: CmRestUrlOpt = None,
) -> None:
    """Backfill klines of one or more trade types: only what the lake lacks.

    With the default --source auto: archive files for the days data.binance.vision has published,
    REST for the rest.

    Archive files are stored whole: every UTC day the window touches, and the whole month when a
    monthly file is taken (when 8 or more days of a month are wanted, say), so the lake may hold
    candles before --start and after --end; --source rest stores [--start, --end) only.

    Examples: ``lake backfill --type usdt_perp --type usdt_spot --days 15``;
    ``lake backfill --type coin_perp --interval 1h --start 2024-01-01 --end 2024-03-01 --funding``.
    """
    if intervals and len(intervals) > 1:  # a plain option would silently keep only the last one
        raise ValidationError(
            f"one --interval per backfill run (got {', '.join(intervals)}): run it once per interval"
        )
    interval = intervals[0] if intervals else "5m"
    settings = get_settings(
        config,
        write=True,
        root=root,
        rest_url=rest_url,
        sim_url=sim_url,
        archive_url=archive_url,
        archive_list_url=archive_list_url,
        spot_rest_url=spot_rest_url,
        um_rest_url=um_rest_url,
        cm_rest_url=cm_rest_url,
    )
    check_number("--days", days, strict=True)
    if days is not None and days > MAX_DAYS:
        raise ValidationError(f"--days must be at most {MAX_DAYS}, got {days:g}")
    if days is None and start is None:
        raise ValidationError("give --days N or --start DATE")
    if days is not None and (start is not None or end is not None):
        raise ValidationError("--days cannot be combined with --start/--end")
    t_start = parse_when(start, name="--start") if start is not None else None
    t_end = parse_when(end, name="--end") if end is not None else None
    if t_start is not None and t_end is not None and t_start >= t_end:
        raise ValidationError(f"--start {start} is not before --end {end}")
    if t_start is not None and t_start > dt.datetime.now(dt.UTC):
        # nothing to fetch: the run would end "up_to_date" as if the lake held that future
        raise ValidationError(f"--start {start} is in the future")
    wanted = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
    if symbols is not None and not wanted:
        raise ValidationError("--symbols is empty")
    kinds = [t.strip() for item in trade_types for t in item.split(",") if t.strip()]
    lfs = LakeFS(settings.root)
    if source != "rest":  # issue #5: archive (+ REST for the rest) — see lake.ingest.archive.hybrid
        _archive_source(
            lfs, kinds, interval, t_start, t_end, days, wanted, funding, recheck, json_out, settings,
            source=source, include_delisted=include_delisted, keep_zips=keep_zips,
        )  # fmt: skip
        return
    if include_delisted or keep_zips:
        raise ValidationError("--include-delisted and --keep-zips need --source archive or auto")

    async def run() -> BackfillReport:
        with Progress() as progress:
            return await backfill(
                lfs,
                kinds,
                interval,
                start=t_start,
                end=t_end,
                days=days,
                symbols=wanted,
                funding=funding,
                recheck=recheck,
                settings=settings,
                progress=progress,
            )

    report = _run_listing_missing(run, json_out)
    _render(report, json_out)


def _run_listing_missing(run: Callable[[], Coroutine[Any, Any, _T]], json_out: bool) -> _T:
    """Run; when ranges stay missing, print what was done and every missing range, then re-raise."""
    from lake.ingest.archive.hybrid import HybridResult

    try:
        return asyncio.run(run())
    except IncompleteError as exc:
        done = getattr(exc, "result", None)  # an archive run's both parts
        rep = getattr(exc, "report", None)
        if isinstance(done, HybridResult):
            _render_hybrid(done, json_out)
        elif isinstance(rep, BackfillReport):
            _render(rep, json_out)
        for line in exc.missing:
            typer.echo(f"missing: {line}", err=True)
        raise


def _render(report: BackfillReport, json_out: bool) -> None:
    if json_out:
        print_json(report.to_dict())
        return
    by_status: dict[str, int] = {}
    for s in report.series:
        by_status[s.status] = by_status.get(s.status, 0) + 1
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
    typer.echo(
        f"backfill {report.interval}: {report.symbols} symbols ({statuses}), {report.candles:,} candles written, "
        f"{report.holes:,} empty slots confirmed, {report.elapsed_s:.1f}s, "
        f"weight utilisation {report.utilisation:.0%}"
    )
    for m in report.markets.values():
        typer.echo(
            f"  {m.market}: {m.requests} requests, weight {m.weight} over {m.server_ms / 1000:.0f}s server time "
            f"(limit {m.weight_limit}/{m.window_ms // 1000}s) → {m.utilisation:.0%}"
        )
    if report.funding_rows:
        typer.echo(f"  funding: {report.funding_rows} rows added")


# -- archive source (issue #5) -------------------------------------------------------------------
def _archive_source(
    lfs: LakeFS,
    kinds: list[str],
    interval: str,
    t_start: Any,
    t_end: Any,
    days: float | None,
    wanted: list[str] | None,
    funding: bool,
    recheck: bool,
    json_out: bool,
    settings: Any,
    *,
    source: str,
    include_delisted: bool,
    keep_zips: bool,
) -> None:
    from lake.ingest.archive.hybrid import SOURCES, archive_backfill

    if source not in SOURCES:
        raise ValidationError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")

    async def run() -> HybridResult:
        with Progress() as progress:
            return await archive_backfill(
                lfs, kinds, interval, settings=settings, start=t_start, end=t_end, days=days,
                symbols=wanted, source=source, include_delisted=include_delisted, keep_zips=keep_zips,
                funding=funding, recheck=recheck, progress=progress,
            )  # fmt: skip

    _render_hybrid(_run_listing_missing(run, json_out), json_out)


def _render_hybrid(result: HybridResult, json_out: bool) -> None:
    if json_out:
        print_json(result.to_dict())
        return
    for a in result.archive:
        lacking = sum(len(v) for v in a.lacking.values())
        cut = sum(len(v) for v in a.cut.values())
        left = " (left for REST)" if result.rest else ""
        typer.echo(
            f"archive {a.trade_type} {a.interval}: {len(a.symbols)} symbols, {a.files_downloaded} files "
            f"downloaded ({a.files_reuploaded} re-uploaded), {a.rows:,} rows, {a.seconds:.1f}s"
            + (f"; {lacking} day(s) not in the archive{left}" if lacking else "")
            + (f"; {cut} range(s) cut short in archive files{left}" if cut else "")
            + (f", {len(a.missing)} range(s) of them missing" if a.missing else "")
            + (f"; {len(a.kept)} range(s) kept that re-uploaded files no longer have" if a.kept else "")
        )
    if result.rest is not None:
        _render(result.rest, json_out)


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill_cmd)
