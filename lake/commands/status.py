"""``lake status``: what the lake holds, per series, with its holes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lake.cli_common import (
    ConfigOpt,
    JsonOpt,
    RootOpt,
    get_settings,
    print_json,
    report_console,
    series_filters,
)
from lake.store.coverage import coverage
from lake.store.fs import LakeFS


def status(
    trade_type: Annotated[str | None, typer.Option("--type", help="Only this trade type.")] = None,
    interval: Annotated[str | None, typer.Option("--interval", help="Only this interval.")] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Only these symbols (comma-separated).")
    ] = None,
    holes: Annotated[bool, typer.Option("--holes", help="List every hole.")] = False,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Coverage per (trade type, interval, symbol): first/last candle, rows, expected rows and holes."""
    settings = get_settings(config, must_exist=True, root=root)
    trade_type, interval, syms = series_filters(trade_type, interval, symbols)
    lfs = LakeFS(settings.root)
    cov = coverage(lfs, trade_type, interval, syms)
    extra = _live_status(lfs)
    if json_out:
        print_json({"root": lfs.url_root, "series": [c.to_dict() for c in cov], **extra})
        return
    console = report_console()
    if not cov:
        asked = [
            f"{flag} {v}"
            for flag, v in (("--type", trade_type), ("--interval", interval), ("--symbols", symbols))
            if v
        ]
        # a filter that matches nothing must not read as an empty lake
        console.print(f"no klines under {lfs.url_root}" + (f" matching {' '.join(asked)}" if asked else ""))
    table = Table(title=f"lake {lfs.url_root}")
    for col in (
        "type",
        "interval",
        "symbol",
        "first",
        "last",
        "rows",
        "expected",
        "missing",
        "exchange holes",
    ):
        table.add_column(col, justify="right" if col in ("rows", "expected", "missing") else "left")
    for c in cov:
        table.add_row(
            c.trade_type,
            c.interval,
            c.symbol,
            f"{c.first:%Y-%m-%d %H:%M}" if c.first else "-",
            f"{c.last:%Y-%m-%d %H:%M}" if c.last else "-",
            str(c.rows),
            str(c.expected),
            str(c.missing),
            str(c.exchange_missing),
        )
    if cov:
        console.print(table)
    if holes:
        for c in cov:
            for h in c.holes:
                console.print(
                    f"{c.trade_type} {c.interval} {c.symbol}: {h.kind} {h.missing} candles "
                    f"[{h.start:%Y-%m-%d %H:%M}, {h.end:%Y-%m-%d %H:%M})"
                )
    for line in extra.get("watermarks", []):
        scope = line.get("scope")
        only = f" (only {', '.join(map(str, scope))})" if isinstance(scope, list) else ""
        console.print(f"live watermark {line['trade_type']} {line['interval']}{only}: {line['watermark']}")


def _live_status(lfs: LakeFS) -> dict[str, list[dict[str, object]]]:
    try:
        from lake.live.watermark import read_watermarks
    except ImportError:
        return {}
    return {"watermarks": read_watermarks(lfs, subsets=True)}


def register(app: typer.Typer) -> None:
    app.command("status")(status)
