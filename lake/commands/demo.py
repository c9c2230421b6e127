"""``lake demo``: the whole pipeline offline, against the built-in simulator."""

from __future__ import annotations

from typing import Annotated

import typer

from lake.cli_common import RootOpt
from lake.demo import demo_options, run_demo


def demo(
    root: RootOpt = None,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Where to write the PNG chart (default lake-demo.png).")
    ] = None,
    symbols: Annotated[
        int | None, typer.Option("--symbols", help="Simulated symbols per market (default 30).")
    ] = None,
    days: Annotated[
        int | None, typer.Option("--days", help="Days of history to backfill (default 7).")
    ] = None,
    periods: Annotated[
        int | None, typer.Option("--periods", help="Live 5m periods to run (default 3).")
    ] = None,
) -> None:
    """Run the whole pipeline offline against the built-in simulator.

    Simulator → archive + REST backfill → live (with a dropped connection repaired) → 1h offsets →
    comparison with the simulated Quantclass reference → coverage → chart.

    Without --root the lake is temporary; pass --root DIR to keep it (and query it afterwards).
    """
    opts = demo_options(root=root, plot=plot, symbols=symbols, days=days, live_periods=periods)
    result = run_demo(opts)
    total = sum(result.steps.values())
    typer.echo(f"demo finished in {total:.0f}s: {result.rows} candles; chart at {result.plot}")
    if opts.root:
        typer.echo(f"lake kept at {opts.root}: try `lake status --root {opts.root}`")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
