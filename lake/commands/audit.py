"""``lake audit``: continuity report (maintenance vs real holes, provenance, segments)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lake.audit import SeriesAudit, audit
from lake.cli_common import (
    CmRestUrlOpt,
    ConfigOpt,
    JsonOpt,
    RestUrlOpt,
    RootOpt,
    SimUrlOpt,
    SpotRestUrlOpt,
    UmRestUrlOpt,
    get_settings,
    print_json,
    report_console,
    series_filters,
)
from lake.errors import NotFoundError
from lake.store.fs import LakeFS


def audit_cmd(
    trade_type: Annotated[str | None, typer.Option("--type", help="Only this trade type.")] = None,
    interval: Annotated[str | None, typer.Option("--interval", help="Only this interval.")] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Only these symbols (comma-separated).")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="Refetch unexpected holes over REST, then audit again.")
    ] = False,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
    sim_url: SimUrlOpt = None,
    rest_url: RestUrlOpt = None,
    spot_rest_url: SpotRestUrlOpt = None,
    um_rest_url: UmRestUrlOpt = None,
    cm_rest_url: CmRestUrlOpt = None,
) -> None:
    """Continuity report per series: every hole classified, rows per source, listing segments.

    Holes are maintenance (exchange-wide), confirmed empty, segment break (delist/relist) or
    missing; rows are counted per source (archive/rest/ws). "behind": the candles between a series'
    last one and the latest of its trade type and interval (a series a backfill left behind, or a
    delisted one; not a hole, not in the exit code). "kept": archive candles the lake still holds
    where a re-uploaded monthly file no longer has them, until a daily file of those days or a later
    upload settles them (a warning, not in the exit code).

    Maintenance is judged on the symbols the lake holds (at least two trading around the hole): in a
    lake of one symbol the same window is "confirmed empty" once the exchange answered it empty.

    Exits with code 1 while unexpected (missing) holes remain.
    """
    settings = get_settings(
        config,
        write=repair,
        must_exist=True,
        root=root,
        sim_url=sim_url,
        rest_url=rest_url,
        spot_rest_url=spot_rest_url,
        um_rest_url=um_rest_url,
        cm_rest_url=cm_rest_url,
    )
    trade_type, interval, syms = series_filters(trade_type, interval, symbols)
    lfs = LakeFS(settings.root)
    report = audit(lfs, trade_type, interval, syms)
    unknown = sorted(set(syms or ()) - {a.symbol for a in report})
    if unknown:  # a typo must not pass a scheduled check as a lake without holes
        scope = " ".join(f"{k} {v}" for k, v in (("--type", trade_type), ("--interval", interval)) if v)
        raise NotFoundError(
            f"no stored klines of {', '.join(unknown)}{f' ({scope})' if scope else ''} to audit"
        )
    if repair and any(a.unexpected for a in report):
        from lake.ingest.repair import repair_holes

        repair_holes(
            settings, [(a.trade_type, a.interval, a.symbol, a.unexpected) for a in report if a.unexpected]
        )
        report = audit(lfs, trade_type, interval, syms)
    unexpected = sum(len(a.unexpected) for a in report)
    if json_out:
        print_json(
            {"root": lfs.url_root, "series": [a.to_dict() for a in report], "unexpected_holes": unexpected}
        )
    else:
        _render(report, lfs.url_root)
    if unexpected:
        raise typer.Exit(1)


def _render(report: list[SeriesAudit], root: str) -> None:
    console = report_console()
    table = Table(title=f"audit {root}")
    for col in (
        "type",
        "interval",
        "symbol",
        "rows",
        "archive",
        "rest",
        "ws",
        "maint.",
        "empty",
        "breaks",
        "missing",
        "segments",
        "behind",
    ):
        table.add_column(col, justify="left" if col in ("type", "interval", "symbol") else "right")
    for a in report:
        kinds = {
            k: sum(h.missing for h in a.holes if h.kind == k)
            for k in ("maintenance", "confirmed_empty", "segment_break", "missing")
        }
        table.add_row(
            a.trade_type,
            a.interval,
            a.symbol,
            str(a.rows),
            *(str(a.sources.get(s, 0)) for s in ("archive", "rest", "ws")),
            str(kinds["maintenance"]),
            str(kinds["confirmed_empty"]),
            str(kinds["segment_break"]),
            str(kinds["missing"]),
            str(len(a.segments)),
            str(a.behind),
        )
    console.print(table)
    behind = [a for a in report if a.behind]
    if behind:
        console.print(
            f"{len(behind)} series end before the latest candle of their trade type and interval "
            "(column 'behind'): a delisted symbol stops there; `lake backfill` brings a trading one "
            "up to date"
        )
    for a in report:
        for k in a.kept:
            console.print(
                f"[yellow]kept[/yellow] {a.trade_type} {a.interval} {a.symbol}: {k.candles} archive candles "
                f"[{k.start:%Y-%m-%d %H:%M}, {k.end:%Y-%m-%d %H:%M}) that the re-uploaded {k.file} no longer has"
            )
    for a in report:
        for h in a.unexpected:
            console.print(
                f"[red]missing[/red] {a.trade_type} {a.interval} {a.symbol}: {h.missing} candles "
                f"[{h.start:%Y-%m-%d %H:%M}, {h.end:%Y-%m-%d %H:%M})"
            )


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)
