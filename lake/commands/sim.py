"""``lake sim``: the offline Binance simulator (see ``lake.sim.cli``)."""

from __future__ import annotations

import typer

from lake.sim.cli import sim_app


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
