"""``lake compact``: move candles ``lake live`` left in the tail into their partitions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lake.cli_common import ConfigOpt, JsonOpt, RootOpt, check_number, get_settings, print_json
from lake.store.fs import LakeFS
from lake.store.tail import compact_tail, tail_feeds


def compact(
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="Retire compacted tail files (empty them for reuse) this many seconds after (running queries).",
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
    check_number("--grace", grace)
    settings = get_settings(config, must_exist=True, root=root)
    lfs = LakeFS(settings.root)
    out: list[dict[str, Any]] = []
    for tt, iv in tail_feeds(lfs):
        res = compact_tail(lfs, tt, iv, grace_s=grace)  # validates both names
        out.append(
            {
                "trade_type": tt,
                "interval": iv,
                "files_compacted": res.files_compacted,
                "candles": res.rows,
                "symbols": len(res.symbols),
                "files_retired": res.files_retired,
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
                f"of {r['symbols']} symbols moved; {r['files_retired']} old tail files retired"
            )
        for sym, err in r["failed"].items():
            typer.echo(f"lake compact: {r['trade_type']} {r['interval']} {sym}: {err}", err=True)
    if any(r["failed"] for r in out):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("compact")(compact)
