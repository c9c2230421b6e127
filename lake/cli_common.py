"""Shared CLI plumbing: option types, settings from flags, time parsing, JSON output."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lake.errors import ConfigError, NotFoundError, ValidationError
from lake.settings import Settings, load_settings

__all__ = [
    "ArchiveListUrlOpt",
    "ArchiveUrlOpt",
    "CmRestUrlOpt",
    "CmWsUrlOpt",
    "ConfigOpt",
    "JsonOpt",
    "QuantclassFilesUrlOpt",
    "QuantclassUrlOpt",
    "RestUrlOpt",
    "RootOpt",
    "SimUrlOpt",
    "SpotRestUrlOpt",
    "SpotWsUrlOpt",
    "UmRestUrlOpt",
    "UmWsUrlOpt",
    "WebhookUrlOpt",
    "WsUrlOpt",
    "check_number",
    "check_output",
    "get_settings",
    "parse_when",
    "print_json",
    "series_filters",
]

RootOpt = Annotated[
    str | None,
    typer.Option("--root", help="Lake root: a local path or an s3:// (gs://, az://) URL (env LAKE_ROOT)."),
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


# One market's endpoint: over --rest-url / --ws-url (and over any key from the env or the config file).
SpotRestUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--spot-rest-url",
        help="REST base URL of spot only (env LAKE_SPOT_REST_URL; default https://api.binance.com).",
    ),
]
UmRestUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--um-rest-url",
        help="REST base URL of USDⓈ-M futures only (env LAKE_UM_REST_URL; default https://fapi.binance.com).",
    ),
]
CmRestUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--cm-rest-url",
        help="REST base URL of COIN-M futures only (env LAKE_CM_REST_URL; default https://dapi.binance.com).",
    ),
]
SpotWsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--spot-ws-url",
        help="Websocket base URL of spot only (env LAKE_SPOT_WS_URL; default wss://stream.binance.com:9443).",
    ),
]
UmWsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--um-ws-url",
        help="Websocket base URL of USDⓈ-M futures only (env LAKE_UM_WS_URL; default wss://fstream.binance.com/market).",
    ),
]
CmWsUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--cm-ws-url",
        help="Websocket base URL of COIN-M futures only (env LAKE_CM_WS_URL; default wss://dstream.binance.com).",
    ),
]
QuantclassUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--quantclass-url",
        help="Quantclass data API base URL (env LAKE_QUANTCLASS_URL; default https://api.quantclass.cn).",
    ),
]
QuantclassFilesUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--quantclass-files-url",
        help="Fetch the Quantclass files from this base URL instead of the host the API names "
        "(a mirror; env LAKE_QUANTCLASS_FILES_URL; default: as named).",
    ),
]
WebhookUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--webhook-url",
        help="Alert webhook URL (env LAKE_WEBHOOK_URL; default: alerts are only logged). A URL with a "
        "token is better in the env or lake.toml: other users can see a command line.",
    ),
]
ArchiveUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--archive-url",
        help="Archive (data.binance.vision) base URL for the files (env LAKE_ARCHIVE_URL); the "
        "listing is --archive-list-url.",
    ),
]
ArchiveListUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--archive-list-url",
        help="S3 bucket URL the archive is listed from (env LAKE_ARCHIVE_LIST_URL; default: "
        "data.binance.vision's bucket).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def series_filters(
    trade_type: str | None, interval: str | None, symbols: str | None
) -> tuple[str | None, str | None, list[str] | None]:
    """Validate the optional --type / --interval / --symbols filters of read-only commands."""
    from lake.binance.intervals import parse_interval
    from lake.binance.markets import get_trade_type
    from lake.binance.symbols import validate_symbols

    if trade_type is not None:  # "" is an unknown trade type, not "no filter"
        get_trade_type(trade_type)
    if interval is not None:
        parse_interval(interval)
    return trade_type, interval, (validate_symbols(symbols) if symbols is not None else None)


def get_settings(
    config: Path | None = None, *, write: bool = False, must_exist: bool = False, **flags: Any
) -> Settings:
    """Settings from defaults < config file < env < these CLI flags (``None`` = flag not given).

    A local root must be a directory (or not exist yet); with ``write`` it (or the directory it will
    be created in) must also be writable; with ``must_exist`` (commands that only read or tidy a lake)
    it must exist, so a mistyped root is one clear error instead of an empty report.
    """
    settings = load_settings(config, **flags)
    _check_root(settings.root, write, must_exist)
    return settings


def _check_root(root: str, write: bool, must_exist: bool = False) -> None:
    if not root.removeprefix("file://").strip():  # Path("") is the current directory
        raise ConfigError("lake root is empty (check --root / LAKE_ROOT / lake.toml)")
    if "://" in root and not root.startswith("file://"):
        return  # object storage: checked by the store itself
    path = Path(root.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"lake root {root} is not a directory")
    if must_exist and not path.exists():
        raise NotFoundError(f"no lake at {root}: the directory does not exist (check --root / LAKE_ROOT)")
    if write:
        existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
        if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
            raise ConfigError(f"lake root {root} is not writable (no write permission on {existing})")


def check_number(name: str, value: float | None, *, minimum: float = 0.0, strict: bool = False) -> None:
    """Reject NaN, infinities and values below ``minimum`` (or equal to it when ``strict``)."""
    if value is None:
        return
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValidationError(f"{name} must be a number {bound}, got {value:g}")


def check_output(name: str, output: Path | None, root: str) -> None:
    """An output file must be creatable and must not be written into the lake's tables (a stray file
    there breaks readers): inside the root, only a file with a suffix directly under it is allowed."""
    if output is None:
        return
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", str(output)):  # Path() folded s3://b/x to s3:/b/x
        raise ValidationError(f"{name} must be a local file path, got {str(output).replace(':/', '://', 1)}")
    if output.is_dir():
        raise ValidationError(f"{name} {output} is a directory; give a file name")
    if not output.absolute().parent.is_dir():
        raise ValidationError(f"{name} {output}: directory {output.absolute().parent} does not exist")
    if "://" in root and not root.startswith("file://"):
        return
    lake_dir = Path(root.removeprefix("file://")).resolve()
    target = output.resolve()
    if target.is_relative_to(lake_dir) and (target.parent != lake_dir or not target.suffix):
        raise ValidationError(
            f"{name} {output} is inside the lake's tables or state under {root}; write it elsewhere "
            "(or as a file with a suffix directly under the root)"
        )


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


def report_console() -> Console:
    """The console command reports print to: the terminal's width on a TTY; piped or redirected,
    wide enough that table cells are not cut to ``usdt_…`` (rich's default there is 80 columns)."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def print_json(obj: object) -> None:
    """One line of standard JSON: NaN and infinities (a relative error against a zero reference)
    become ``null``, as JavaScript's ``JSON.stringify`` writes them; strict parsers refuse them."""
    typer.echo(
        json.dumps(_finite(obj), default=_default, indent=None, separators=(",", ":"), allow_nan=False)
    )


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
