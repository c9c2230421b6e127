"""``lake sim``: run the simulator standalone, or print its ground truth.

    lake sim --port 8765 --symbols 50 --speed 60 --seed 1            # same as `lake sim serve …`
    lake sim serve --set 'weight_limits={"spot": 6000, "um": 100000, "cm": 2400}' --set 'faults={"force_429": 3}'
    lake sim truth --type usdt_perp --interval 5m --symbols BTCUSDT --sim-start 2024-03-01 --start 2024-01-01 --end 2024-01-02

The main CLI mounts this with ``app.add_typer(sim_app, name="sim")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from lake.binance.markets import MARKETS
from lake.errors import LakeError, ValidationError
from lake.sim.clock import ms_to_iso, to_ms
from lake.sim.config import FaultConfig, SimConfig
from lake.sim.market import SimMarket
from lake.sim.server import SimServer
from lake.store.fs import write_file_atomic

__all__ = ["sim_app"]

sim_app = typer.Typer(help="Offline Binance simulator: REST, websocket streams and the data archive.")

Port = Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)]
Host = Annotated[str, typer.Option(help="Interface to listen on.")]
Symbols = Annotated[int, typer.Option("--symbols", help="Symbols per market.")]
Speed = Annotated[
    float, typer.Option(help="Virtual seconds per real second (60: a minute per second; 0 frozen).")
]
Seed = Annotated[int, typer.Option(help="Market seed: same seed, same candles.")]
Start = Annotated[str | None, typer.Option(help="Virtual start time (ISO 8601 or ms); default: now.")]
History = Annotated[int, typer.Option(help="Days of history before the start day.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the URLs as one JSON line.")]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Any SimConfig field as KEY=JSON, e.g. --set 'weight_limits={\"um\": 100000}'."
    ),
]


_DEFAULTS = SimConfig()


def _overrides(sets: list[str] | None) -> dict[str, Any]:
    """``KEY=JSON`` pairs as SimConfig keyword arguments (``faults`` takes a FaultConfig object)."""
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    defaults = {f: getattr(_DEFAULTS, f) for f in fields}
    out: dict[str, Any] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise typer.BadParameter(
                f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        # A value of the wrong kind (``weight_limits=notjson``) would be taken as given and fail at
        # start-up with a traceback: it must have the kind of the field's default.
        default = defaults.get(key)
        if default is not None and not _same_kind(value, default):
            raise typer.BadParameter(f"{item!r}: {key} takes a JSON {_kind(default)}")
        if key == "faults":
            value = FaultConfig(**value)
        elif key == "maintenance" and value is not None:
            value = tuple(tuple(w) for w in value)
        out[key] = value
    return out


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (Mapping, FaultConfig)):
        return isinstance(value, dict)
    if isinstance(default, (tuple, list, set, frozenset)):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true/false"
    if isinstance(default, (int, float)):
        return "number"
    if isinstance(default, (Mapping, FaultConfig)):
        return "object"
    if isinstance(default, (tuple, list, set, frozenset)):
        return "array"
    return "string"


def _config(seed: int, symbols: int, speed: float, start: str | None, history_days: int, host: str = "127.0.0.1",
            port: int = 0, sets: list[str] | None = None) -> SimConfig:  # fmt: skip
    kw: dict[str, Any] = dict(seed=seed, n_symbols=symbols, speed=speed, start=start, history_days=history_days,
                              host=host, port=port)  # fmt: skip
    kw.update(_overrides(sets))
    try:
        return SimConfig(**kw)
    except (LakeError, TypeError) as e:
        raise typer.BadParameter(str(e)) from e


async def _serve(config: SimConfig, as_json: bool) -> None:
    # The Quantclass-compatible API too, so that `lake compare` works against a standalone simulator
    # as it does in `lake demo` (the server itself stays free of lake.quantclass).
    from lake.sim.quantclass import add_quantclass_routes

    async with SimServer(config, extra_routes=add_quantclass_routes) as sim:
        ep = sim.endpoints
        urls = {
            "rest": sim.base_url,
            "ws": dict(ep.ws),
            "archive": ep.archive,
            "archive_list": ep.archive_list,
            "control": f"{sim.base_url}/_sim",
            "quantclass": ep.quantclass,
            "start": ms_to_iso(sim.clock.now_ms()),
            "speed": sim.clock.speed,
        }
        if as_json:
            print(json.dumps(urls), flush=True)
        else:
            prefixes = ", ".join(f"{m} {MARKETS[m].api_prefix}" for m in MARKETS)
            print(f"lake sim: seed {config.seed}, {config.n_symbols} symbols/market, speed {sim.clock.speed}x, "
                  f"virtual start {urls['start']}")  # fmt: skip
            print(f"  REST       {sim.base_url}  ({prefixes})")
            for m, u in ep.ws.items():
                print(f"  WS {m:<7} {u}")
            print(f"  Archive    {ep.archive}")
            print(f"  Listing    {ep.archive_list}")
            print(f"  Quantclass {ep.quantclass}")
            print(f"  Control    {sim.base_url}/_sim/{{info,stats,clock,faults}}")
            print("Ctrl-C to stop.", flush=True)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def _run_server(config: SimConfig, as_json: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, as_json))


@sim_app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    port: Port = 8765,
    host: Host = "127.0.0.1",
    symbols: Symbols = 10,
    speed: Speed = 1.0,
    seed: Seed = 1,
    start: Start = None,
    history_days: History = 730,
    as_json: AsJson = False,
    sets: Sets = None,
) -> None:
    """Without a sub-command: serve (same options as ``serve``)."""
    if ctx.invoked_subcommand is not None:
        given = [
            p.opts[0]
            for p in ctx.command.params
            if p.name and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"
        ]
        if given:  # they would be ignored: the sub-command has its own
            sub = ctx.invoked_subcommand
            raise ValidationError(
                f"{', '.join(given)} given before the sub-command {sub!r}, which would ignore them: "
                f"put a sub-command's options after it (lake sim {sub} --help)"
            )
        return
    _run_server(_config(seed, symbols, speed, start, history_days, host, port, sets), as_json)


@sim_app.command()
def serve(
    port: Port = 8765,
    host: Host = "127.0.0.1",
    symbols: Symbols = 10,
    speed: Speed = 1.0,
    seed: Seed = 1,
    start: Start = None,
    history_days: History = 730,
    as_json: AsJson = False,
    sets: Sets = None,
) -> None:
    """Run the simulator until Ctrl-C and print its base URLs."""
    _run_server(_config(seed, symbols, speed, start, history_days, host, port, sets), as_json)


@sim_app.command()
def truth(
    trade_type: Annotated[
        str, typer.Option("--type", help="Trade type (usdt_perp, …) or market (spot/um/cm).")
    ],
    interval: Annotated[str, typer.Option(help="Kline interval, e.g. 5m (1s: spot only).")],
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols (default: all).")] = None,
    start: Annotated[str | None, typer.Option(help="First candle open (inclusive).")] = None,
    end: Annotated[str | None, typer.Option(help="Last candle open (exclusive).")] = None,
    seed: Seed = 1,
    n_symbols: Annotated[int, typer.Option("--n-symbols", help="Symbols per market of that simulator.")] = 10,
    history_days: History = 730,
    sim_start: Annotated[
        str | None, typer.Option("--sim-start", help="The simulator's start (default now).")
    ] = None,
    now: Annotated[
        str | None, typer.Option(help="Virtual now for 'closed' (default: the sim start).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write .parquet or .csv instead of printing CSV.")
    ] = None,
) -> None:
    """Print or write the candles a simulator with these settings serves (closed candles only)."""
    try:  # (also run as its own app, sim_app, so errors are printed here, as lake's are)
        if output is not None and output.suffix not in (".parquet", ".csv"):
            raise ValidationError("--output must end in .parquet or .csv")
        market = SimMarket(
            SimConfig(seed=seed, n_symbols=n_symbols, history_days=history_days, start=sim_start)
        )
        syms = [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None
        df = market.truth(trade_type, interval, syms, start, end, now=to_ms(now) if now else None)
    except LakeError as e:
        typer.echo(f"lake: error: {e}", err=True)
        raise typer.Exit(e.exit_code) from e
    if output is None:
        df.write_csv(sys.stdout)
    elif output.suffix == ".parquet":
        write_file_atomic(output, df.write_parquet)
    else:
        write_file_atomic(output, df.write_csv)
