"""``lake offsets``: build (incrementally) a target interval at every offset from a base interval."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from lake.cli_common import ConfigOpt, JsonOpt, RootOpt, get_settings, print_json
from lake.progress import Progress
from lake.transform.build import build_offsets


def offsets(
    trade_type: Annotated[str, typer.Option("--type", help="Trade type, e.g. usdt_perp.")],
    interval: Annotated[str, typer.Option("--interval", help="Target interval, e.g. 1h.")],
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="Base interval (default: the one used before, else the coarsest stored one)."
        ),
    ] = None,
    offsets: Annotated[
        str, typer.Option("--offsets", help="'all' or a comma-separated list, e.g. 0m,15m.")
    ] = "all",
    method: Annotated[
        str,
        typer.Option(
            "--method", help="seed (the seed's pandas rule) or binance (zero-volume candles ignored)."
        ),
    ] = "seed",
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
    """Candles of --interval at every offset of --base, written to the offsets table (only what changed)."""
    settings = get_settings(config, root=root)
    with Progress(enabled=False if json_out else None) as progress:
        task = progress.add(f"{trade_type} {interval} offsets", total=None)
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
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if json_out:
        print_json(result.to_dict())
        return
    Console().print(
        f"{result.trade_type} {result.interval} from {result.base} ({result.method}), "
        f"{len(result.offsets)} offsets: {result.symbols_updated}/{result.symbols} symbols updated, "
        f"{result.base_partitions_changed} base partitions changed, {result.bins} bins, "
        f"{result.written} files written ({result.tail_bins} bins to the tail, {result.folded} tails "
        f"folded), {result.unchanged} unchanged, {result.removed} removed in {result.seconds:.1f}s"
    )


def register(app: typer.Typer) -> None:
    app.command("offsets")(offsets)
