"""``lake compact``: move candles ``lake live`` left in the tail into their partitions."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lake.cli_common import ConfigOpt, JsonOpt, RootOpt, check_number, get_settings, print_json
from lake.store.fs import LakeFS
from lake.store.litter import sweep_temps
from lake.store.tail import compact_tail, tail_feeds


def compact(
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="Seconds a compacted tail file is kept for queries already reading it before it is "
            "retired (emptied for reuse).",
        ),
    ] = 120.0,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Also remove the hidden temp files writers killed mid-write left anywhere in the lake "
            "(walks the whole lake).",
        ),
    ] = False,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Move the live tail into the partitions now (lake live does it every --compact-every).

    Readers see the same candles before and after; useful after a live feed was killed and not
    restarted, before bulk jobs that read only partitions (``lake offsets``). Safe while ``lake live``
    runs. Exits 1 if some symbol could not be written (its tail files are kept).

    ``--sweep`` removes the temp files (``.<name>.tmp-<pid>-…``) of writers that were killed: those
    of processes no longer running here, written 10 minutes ago or more, and any a day old.
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
    swept = sweep_temps(lfs) if sweep else None
    if json_out:
        doc: dict[str, Any] = {"root": lfs.url_root, "feeds": out}
        if swept is not None:
            doc["temp_files"] = {
                "removed": swept.removed,
                "kept": swept.kept,
                "bytes_freed": swept.bytes_freed,
            }
        print_json(doc)
    elif not out:
        typer.echo(f"no tail under {lfs.url_root}")
    if swept is not None and not json_out:
        typer.echo(
            f"temp files of killed writers: {swept.removed} removed ({swept.bytes_freed:,} bytes)"
            + (f", {swept.kept} kept (their writers may still run)" if swept.kept else "")
        )
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
