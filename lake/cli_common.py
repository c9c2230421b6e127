"""Shared CLI plumbing: option types, settings from flags, time parsing, JSON output."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from lake.errors import ValidationError
from lake.settings import Settings, load_settings

__all__ = [
    "ConfigOpt",
    "JsonOpt",
    "RootOpt",
    "SimUrlOpt",
    "get_settings",
    "parse_when",
    "print_json",
    "series_filters",
]

RootOpt = Annotated[
    str | None, typer.Option("--root", help="Lake root: a local path or fsspec URL (env LAKE_ROOT).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Settings file (TOML; env LAKE_CONFIG; default ./lake.toml).")
]
SimUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--sim-url", help="Use a `lake sim` server at this base URL for every endpoint (env LAKE_SIM_URL)."
    ),
]
RestUrlOpt = Annotated[
    str | None, typer.Option("--rest-url", help="REST base URL for every market (env LAKE_REST_URL).")
]
WsUrlOpt = Annotated[
    str | None, typer.Option("--ws-url", help="Websocket base URL for every market (env LAKE_WS_URL).")
]
ArchiveUrlOpt = Annotated[
    str | None,
    typer.Option("--archive-url", help="Archive (data.binance.vision) base URL (env LAKE_ARCHIVE_URL)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def series_filters(
    trade_type: str | None, interval: str | None, symbols: str | None
) -> tuple[str | None, str | None, list[str] | None]:
    """Validate the optional --type / --interval / --symbols filters of read-only commands."""
    from lake.binance.intervals import parse_interval
    from lake.binance.markets import get_trade_type
    from lake.binance.symbols import validate_symbols

    if trade_type:
        get_trade_type(trade_type)
    if interval:
        parse_interval(interval)
    return trade_type, interval, (validate_symbols(symbols) if symbols else None)


def get_settings(config: Path | None = None, **flags: Any) -> Settings:
    """Settings from defaults < config file < env < these CLI flags (``None`` = flag not given)."""
    return load_settings(config, **flags)


_REL = re.compile(r"(\d+)([dhm])")


def parse_when(value: str, *, name: str = "time") -> dt.datetime:
    """Parse ``2024-01-31``, ``2024-01-31T12:00``, ``2024-01-31 12:00:00`` (UTC unless an offset is given)."""
    try:
        t = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValidationError(f"invalid {name} {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM") from exc
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _default(o: object) -> object:
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(obj: object) -> None:
    typer.echo(json.dumps(obj, default=_default, indent=None, separators=(",", ":")))
