"""``lake live``: keep the lake current from websocket kline streams, repaired over REST."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from lake.binance.symbols import validate_symbols
from lake.cli_common import (
    CmRestUrlOpt,
    CmWsUrlOpt,
    ConfigOpt,
    JsonOpt,
    RestUrlOpt,
    RootOpt,
    SimUrlOpt,
    SpotRestUrlOpt,
    SpotWsUrlOpt,
    UmRestUrlOpt,
    UmWsUrlOpt,
    WebhookUrlOpt,
    WsUrlOpt,
    check_number,
    get_settings,
    print_json,
)
from lake.errors import ValidationError
from lake.live.runner import LiveConfig, run_live


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def live_cmd(
    trade_types: Annotated[
        list[str],
        typer.Option("--type", help="Trade type to follow (repeat or comma-separate), e.g. usdt_perp."),
    ],
    intervals: Annotated[
        list[str] | None,
        typer.Option("--interval", help="Kline interval; default 5m (repeat or comma-separate for several)."),
    ] = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols",
            help="Only these symbols (comma-separated); default: all TRADING. With several --type, "
            "each type takes the symbols it lists. Such a run publishes its own watermark, not the feed's.",
        ),
    ] = None,
    offsets: Annotated[
        list[str] | None,
        typer.Option(
            "--offsets",
            help="Keep these all-offset intervals current too (e.g. 1h; repeat or comma-separate), each from "
            "the coarsest --interval dividing it.",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace", help="Seconds (server time) after a period closes before missing candles are fetched."
        ),
    ] = 10.0,
    periods: Annotated[int | None, typer.Option("--periods", help="Stop after N period boundaries.")] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Stop after this many seconds.")
    ] = None,
    history: Annotated[
        int, typer.Option("--history", help="Candles fetched for a symbol the lake holds nothing of.")
    ] = 1500,
    exchange_info_every: Annotated[
        int,
        typer.Option(
            "--exchange-info-every",
            help="Refresh exchangeInfo every N periods, at most once a minute (0: never).",
        ),
    ] = 1,
    compact_every: Annotated[
        float,
        typer.Option(
            "--compact-every",
            help="Seconds between moves of freshly written candles (the tail) into their partitions.",
        ),
    ] = 60.0,
    health_every: Annotated[
        float, typer.Option("--health-every", help="Seconds between health log lines.")
    ] = 30.0,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
    sim_url: SimUrlOpt = None,
    ws_url: WsUrlOpt = None,
    rest_url: RestUrlOpt = None,
    spot_ws_url: SpotWsUrlOpt = None,
    um_ws_url: UmWsUrlOpt = None,
    cm_ws_url: CmWsUrlOpt = None,
    spot_rest_url: SpotRestUrlOpt = None,
    um_rest_url: UmRestUrlOpt = None,
    cm_rest_url: CmRestUrlOpt = None,
    webhook_url: WebhookUrlOpt = None,
) -> None:
    """Follow closed klines live (websocket), repair gaps over REST and publish a watermark per feed.

    Start-up catches up from the last stored candle of each symbol; after each period plus --grace,
    every symbol must have its candle (missing ones are fetched over REST). SIGINT/SIGTERM flush and
    exit 0; a restart resumes with no hole. Example:
    ``lake live --type usdt_perp --interval 5m --offsets 1h``.
    """
    settings = get_settings(
        config,
        write=True,
        root=root,
        sim_url=sim_url,
        ws_url=ws_url,
        rest_url=rest_url,
        spot_ws_url=spot_ws_url,
        um_ws_url=um_ws_url,
        cm_ws_url=cm_ws_url,
        spot_rest_url=spot_rest_url,
        um_rest_url=um_rest_url,
        cm_rest_url=cm_rest_url,
        webhook_url=webhook_url,
    )
    wanted = _split([symbols]) if symbols is not None else None
    if symbols is not None and not wanted:
        raise ValidationError("--symbols is empty")
    if intervals is not None and not _split(intervals):
        raise ValidationError("--interval is empty")
    # NaN passes every comparison (a NaN --duration never stops): finite values only.
    check_number("--grace", grace)
    for name, value in (
        ("--compact-every", compact_every),
        ("--duration", duration),
        ("--health-every", health_every),
    ):
        check_number(name, value, strict=True)
    check_number("--exchange-info-every", exchange_info_every)
    cfg = LiveConfig(
        trade_types=tuple(_split(trade_types)),
        intervals=tuple(_split(intervals)) or ("5m",),
        # (validated as everywhere else: lower case is refused, never upper-cased into a path)
        symbols=tuple(validate_symbols(wanted)) if wanted else None,
        offsets=tuple(_split(offsets)),
        grace_s=grace,
        periods=periods,
        duration_s=duration,
        history=history,
        exchange_info_every=exchange_info_every,
        health_every_s=health_every,
        compact_every_s=compact_every,
    )
    summary = asyncio.run(run_live(settings, cfg))
    if json_out:
        print_json(summary)
    else:
        for feed in summary["feeds"]:
            typer.echo(
                f"{feed['feed']}: watermark {feed['watermark']}, {feed['periods_complete']} periods complete, "
                f"{feed['appender']['closed']} closed candles from ws, {feed['rest_repaired']} repaired over REST, "
                f"{sum(feed['appender']['bad'].values())} bad messages"
            )


def register(app: typer.Typer) -> None:
    app.command("live")(live_cmd)
