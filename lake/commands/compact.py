"""``lake compact``: move candles ``lake live`` left in the tail into their partitions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_trade_type
from lake.cli_common import ConfigOpt, JsonOpt, RootOpt, get_settings, print_json
from lake.store.fs import LakeFS
from lake.store.tail import TAIL_TABLE, compact_tail


def compact(
    grace: Annotated[
        float,
        typer.Option(
            "--grace", help="Delete compacted tail files this many seconds after (running queries)."
        ),
    ] = 120.0,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Upsert every tail file into its partitions (what ``lake live`` does every --compact-every).

    Readers see the same candles before and after; useful after a live feed was killed and not
    restarted, before bulk jobs that read only partitions (``lake offsets``). Safe while ``lake live``
    runs. Exits 1 if some symbol could not be written (its tail files are kept).
    """
    settings = get_settings(config, root=root)
    lfs = LakeFS(settings.root)
    out: list[dict[str, Any]] = []
    for tt_dir in lfs.listdir(TAIL_TABLE):
        if not tt_dir.startswith("trade_type="):
            continue
        for iv_dir in lfs.listdir(f"{TAIL_TABLE}/{tt_dir}"):
            if not iv_dir.startswith("interval="):
                continue
            tt = get_trade_type(tt_dir.split("=", 1)[1])
            iv = parse_interval(iv_dir.split("=", 1)[1], spot=tt.is_spot)
            res = compact_tail(lfs, tt.name, iv.name, grace_s=grace)
            out.append(
                {
                    "trade_type": tt.name,
                    "interval": iv.name,
                    "files_compacted": res.files_compacted,
                    "candles": res.rows,
                    "symbols": len(res.symbols),
                    "files_deleted": res.files_deleted,
                    "failed": res.failed,
                }
            )
    if json_out:
        print_json({"root": lfs.url_root, "feeds": out})
    elif not out:
        typer.echo(f"no tail under {lfs.url_root}")
    for r in out:
        if not json_out:
            typer.echo(
                f"{r['trade_type']} {r['interval']}: {r['files_compacted']} tail files, {r['candles']} candles "
                f"of {r['symbols']} symbols moved; {r['files_deleted']} old tail files deleted"
            )
        for sym, err in r["failed"].items():
            typer.echo(f"lake compact: {r['trade_type']} {r['interval']} {sym}: {err}", err=True)
    if any(r["failed"] for r in out):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("compact")(compact)
