"""``lake compare``: the seed's error table of our offsets against Quantclass's 1h candles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lake.cli_common import (
    ConfigOpt,
    JsonOpt,
    QuantclassFilesUrlOpt,
    QuantclassUrlOpt,
    RootOpt,
    SimUrlOpt,
    check_output,
    get_settings,
    print_json,
    report_console,
)
from lake.errors import IncompleteError, ValidationError
from lake.quantclass.compare import compare_quantclass
from lake.store.fs import write_file_atomic


def compare(
    trade_type: Annotated[str, typer.Option("--type", help="usdt_perp or usdt_spot.")],
    interval: Annotated[
        str, typer.Option("--interval", help="Target interval (Quantclass serves 1h).")
    ] = "1h",
    reference: Annotated[
        str, typer.Option("--reference", help="Reference source: quantclass.")
    ] = "quantclass",
    reference_dir: Annotated[
        Path | None,
        typer.Option(
            "--reference-dir", help="Use files already on disk (…-swap_1h0m.7z) instead of the API."
        ),
    ] = None,
    save_reference: Annotated[
        Path | None, typer.Option("--save-reference", help="Keep the downloaded files in this directory.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Per symbol × offset × column detail (.parquet or .csv)."),
    ] = None,
    json_out: JsonOpt = False,
    root: RootOpt = None,
    config: ConfigOpt = None,
    sim_url: SimUrlOpt = None,
    quantclass_url: QuantclassUrlOpt = None,
    quantclass_files_url: QuantclassFilesUrlOpt = None,
) -> None:
    """Max relative error per column over all symbols and offsets (0 for OHLC and trade_num is a match).

    The errors are over the candles both sides hold; reference candles the lake lacks (the newest
    hours, say, when the reference runs ahead of the lake) are counted as missing in the summary
    line and in the JSON (`missing`, `absent_symbols`) and do not change the exit code. The other
    way round, within the hours the reference covers (per offset, the hours it has rows of), lake
    candles of reference symbols it has no row of are counted (`extra`, per series in --output) and
    lake symbols it never names are listed (`unreferenced_symbols`); they do not change the exit
    code either, as the reference may leave symbols out on purpose. Exits with code 5 when nothing
    could be compared (no offsets of the reference symbols, or none of the reference candles in the
    lake).
    """
    if reference != "quantclass":
        raise ValidationError(f"unknown reference {reference!r}; valid: quantclass")
    if output is not None and output.suffix not in (".parquet", ".csv"):
        raise ValidationError("--output must end with .parquet or .csv")
    settings = get_settings(
        config,
        must_exist=True,
        root=root,
        sim_url=sim_url,
        quantclass_url=quantclass_url,
        quantclass_files_url=quantclass_files_url,
    )
    check_output("--output", output, settings.root)
    result = asyncio.run(
        compare_quantclass(
            settings, trade_type, interval, reference_dir=reference_dir, save_dir=save_reference
        )
    )
    if result.symbols == 0:
        # Nothing compared is not a match: say what is missing instead of printing an empty table.
        raise IncompleteError(
            f"nothing to compare: the lake has no {trade_type} {interval} offsets of the "
            f"{len(result.absent_symbols)} reference symbols; run `lake offsets --type {trade_type} "
            f"--interval {interval}` first"
        )
    if output is not None:
        detail = result.detail
        write_file_atomic(output, detail.write_parquet if output.suffix == ".parquet" else detail.write_csv)
    # No candle in common (the reference covers hours the lake has no offsets for yet) is not a
    # match either: an all "-" table with exit 0 read as success.
    none_matched = result.matched == 0
    if json_out:
        print_json(result.to_dict())
        if none_matched:
            raise IncompleteError(_none_matched(result.reference_rows, trade_type, interval))
        return
    console = report_console()
    table = Table(title=f"{trade_type} {interval} vs Quantclass: max |ours / theirs − 1|")
    table.add_column("column")
    table.add_column("max relative error", justify="right")
    for column, err in result.summary.iter_rows():
        table.add_row(column, "-" if err is None else f"{err:.6e}")
    console.print(table)
    console.print(
        f"{result.symbols} symbols × {len(result.offsets)} offsets, {result.matched}/{result.reference_rows} "
        f"reference candles matched, {result.missing} missing from the lake, "
        f"{result.extra} lake candles in the reference's hours not in the reference"
    )
    if result.absent_symbols:
        console.print(
            f"{len(result.absent_symbols)} reference symbols not in the lake: {_some(result.absent_symbols)}"
        )
    if result.unreferenced_symbols:
        console.print(
            f"{len(result.unreferenced_symbols)} lake symbols in the reference's hours not in the "
            f"reference: {_some(result.unreferenced_symbols)}"
        )
    if output is not None:
        console.print(f"detail written to {output}")
    if none_matched:
        raise IncompleteError(_none_matched(result.reference_rows, trade_type, interval))


def _some(symbols: list[str]) -> str:
    return ", ".join(symbols[:10]) + (" …" if len(symbols) > 10 else "")


def _none_matched(rows: int, trade_type: str, interval: str) -> str:
    return (
        f"none of the {rows} reference candles is in the lake's {trade_type} {interval} offsets "
        "(their hours are not in the lake yet: backfill or let `lake live` run up to them, then "
        "`lake offsets`)"
    )


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
