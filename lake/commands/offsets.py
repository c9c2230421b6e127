"""``lake offsets``: build (incrementally) a target interval at every offset from a base interval."""

from __future__ import annotations

from typing import Annotated

import typer

from lake.cli_common import (
    ConfigOpt,
    JsonOpt,
    RootOpt,
    get_settings,
    print_json,
    report_console,
    series_filters,
)
from lake.errors import NotFoundError, ValidationError
from lake.progress import Progress
from lake.transform.build import build_offsets


def offsets(
    trade_types: Annotated[
        list[str], typer.Option("--type", help="Trade type, e.g. usdt_perp (one per run).")
    ],
    interval: Annotated[str, typer.Option("--interval", help="Target interval, e.g. 1h.")],
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base interval (default: the one used before, for a new symbol the table's, else "
            "the coarsest stored one that divides --interval).",
        ),
    ] = None,
    offsets: Annotated[
        str, typer.Option("--offsets", help="'all' or a comma-separated list, e.g. 0m,15m.")
    ] = "all",
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="seed (the seed's pandas rule) or binance (Binance's: zero-volume candles ignored, "
            "slots the exchange confirmed empty count as present). Default: the one used before, "
            "else seed.",
        ),
    ] = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", help="Only these symbols (comma-separated).")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Recompute series built with another base or method.")
    ] = False,
    fold: Annotated[
        bool,
        typer.Option(
            "--fold",
            help="Move the tail (recent bins) into the period files now, not when it is a month old.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Candles of --interval at every offset of --base, written to the offsets table (only what changed).

    Reads the klines partitions: candles `lake live` wrote in the last minute (its tail, compacted
    every --compact-every seconds) are built by the next run after they are compacted; `lake live
    --offsets` builds them itself. Bins whose first or last base candle is missing are not built;
    with --method binance a slot the exchange confirmed empty (maintenance, before a listing) counts
    as present, so an hour cut by one is built as Binance builds it (docs/offsets.md).
    """
    if len(trade_types) > 1:  # a plain option silently kept only the last one
        raise ValidationError(
            f"one --type per offsets run (got {', '.join(trade_types)}): run it once per trade type"
        )
    trade_type = trade_types[0]
    settings = get_settings(config, write=True, must_exist=True, root=root)  # its klines are there
    series_filters(trade_type, interval, symbols)  # bad names fail before any progress line
    with Progress(enabled=False if json_out else None) as progress:
        tasks: list[int] = []

        def report(done: int, total: int) -> None:
            # The task starts with the first report, so an early error logs no "done" line.
            if not tasks:
                tasks.append(progress.add(f"{trade_type} {interval} offsets", total=None))
            progress.update(tasks[0], completed=done, total=total)

        result = build_offsets(
            settings.root,
            trade_type,
            interval,
            base=base,
            offsets=offsets,
            method=method,
            symbols=symbols,
            rebuild=rebuild,
            fold=fold,
            progress=report,
        )
    if result.symbols == 0:  # an explicit --base (or --symbols) the lake holds nothing of
        raise NotFoundError(
            f"no stored {trade_type} {result.base} klines"
            + (f" of {symbols}" if symbols else "")
            + f" to build {interval} offsets from"
        )
    if json_out:
        print_json(result.to_dict())
        return
    report_console().print(
        f"{result.trade_type} {result.interval} from {result.base} ({result.method}), "
        f"{len(result.offsets)} offsets: {result.symbols_updated}/{result.symbols} symbols updated, "
        f"{result.base_partitions_changed} base partitions changed ({result.base_rows_read} candles "
        f"read), {result.bins} bins, "
        f"{result.written} files written ({result.tail_bins} bins to the tail, {result.folded} tails "
        f"folded), {result.unchanged} unchanged, {result.removed} removed in {result.seconds:.1f}s"
    )


def register(app: typer.Typer) -> None:
    app.command("offsets")(offsets)
