"""Compare the lake's offsets with Quantclass's 1h candles: the seed's error table.

For every offset (``0m`` … ``55m``) the reference file of the trade type (``spot`` for usdt_spot,
``swap`` for usdt_perp) is matched with the lake's ``offsets`` on (symbol, offset, candle_begin_time)
and each column's error is ``max(|ours / theirs − 1|)`` — the ``compare`` view of ``sql/compare.sql``
does the arithmetic, so the SQL and this command report the same numbers.

The seed reports the per-column maximum over all symbols and offsets (``CompareResult.summary``); the
per (symbol, offset, column) rows are ``CompareResult.detail``. Unlike the seed, nothing is dropped
silently: reference candles the lake lacks are counted (``missing``), and reference symbols the lake
does not hold at any of the reference's offsets are listed (``absent_symbols``). The other way round,
within the hours the reference covers (per offset, the ``candle_begin_time`` values it has rows of), our
candles of reference symbols that it has no row of are counted (``extra``), and our symbols with candles
in those hours that it never names are listed (``unreferenced_symbols``). Those are counted by Polars
from the offsets of the reference's hours alone (a view would open every file of the table to find
them), so they are not in the ``compare`` view.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from lake.errors import DataError, IncompleteError, NotFoundError, ValidationError
from lake.quantclass.client import QuantclassClient
from lake.quantclass.files import FileName, decode_archive, kind_of, read_candles_csv
from lake.query.connect import connect
from lake.schema import OFFSET_SCHEMA
from lake.settings import Settings
from lake.store.fs import LakeFS, write_file_atomic
from lake.transform.build import offsets_symbols, scan_offsets

__all__ = [
    "COLUMNS",
    "QUANTCLASS_OFFSETS",
    "CompareResult",
    "compare_quantclass",
    "compare_with_reference",
    "fetch_reference",
    "load_reference_dir",
]

QUANTCLASS_OFFSETS = tuple(f"{5 * i}m" for i in range(12))
# The seed's column order.
COLUMNS = (
    "open",
    "close",
    "high",
    "low",
    "volume",
    "quote_volume",
    "trade_num",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)
_KEYS = ("trade_type", "interval", "offset", "symbol", "candle_begin_time")
_SERIES = ["offset", "symbol"]


@dataclass(frozen=True)
class CompareResult:
    """The seed's table (``summary``: column, max_rel_error) and the per-series ``detail``.

    ``detail`` has a row per (offset, symbol, column) of every series compared, and of every series
    of a reference symbol that only the lake holds in the reference's hours (nothing compared:
    ``reference_rows`` 0, ``max_rel_error`` null); ``extra`` is the sum of its per-series ``extra``.
    ``symbols`` and ``offsets`` are those of the series compared.
    """

    trade_type: str
    interval: str
    summary: pl.DataFrame
    detail: pl.DataFrame
    reference_rows: int = 0
    matched: int = 0
    missing: int = 0
    offsets: tuple[str, ...] = ()
    symbols: int = 0  # compared (present in the reference and the lake)
    absent_symbols: list[str] = field(default_factory=list)  # in the reference, not in the lake
    extra: int = 0  # our candles of reference symbols in its hours that it has no row of
    unreferenced_symbols: list[str] = field(default_factory=list)  # ours in its hours, never in it

    def max_error(self, column: str) -> float | None:
        row = self.summary.filter(pl.col("column") == column)
        return None if row.height == 0 else row["max_rel_error"][0]

    def to_dict(self) -> dict[str, object]:
        errors = dict(self.summary.iter_rows())
        return {
            "trade_type": self.trade_type,
            "interval": self.interval,
            "errors": errors,
            # Standard JSON has no infinity, so an infinite error (ours ≠ 0 where theirs is 0) prints
            # as null in `errors`, as a column nothing was compared in does: these columns tell them apart.
            "infinite_errors": [c for c, e in errors.items() if e is not None and math.isinf(e)],
            "reference_rows": self.reference_rows,
            "matched": self.matched,
            "missing": self.missing,
            "offsets": list(self.offsets),
            "symbols": self.symbols,
            "absent_symbols": self.absent_symbols,
            "extra": self.extra,
            "unreferenced_symbols": self.unreferenced_symbols,
        }


def compare_with_reference(
    root: str | os.PathLike[str] | LakeFS, trade_type: str, interval: str, reference: pl.DataFrame
) -> CompareResult:
    """Compare the lake's offsets with ``reference`` (``offset``, ``symbol``, ``candle_begin_time``, values)."""
    ref = reference.with_columns(pl.lit(trade_type).alias("trade_type"), pl.lit(interval).alias("interval"))
    # (from listings: reading the offsets' whole history for their symbols cost O(history))
    ours = offsets_symbols(root, trade_type, interval, ref["offset"].unique().to_list())
    named = set(ref["symbol"].unique().to_list())
    absent = sorted(named - ours)
    only_ours = _not_in_reference(root, trade_type, interval, reference)
    unreferenced = sorted(set(only_ours["symbol"].to_list()) - named)
    extra = only_ours.filter(pl.col("symbol").is_in(sorted(named)))
    ref = ref.filter(pl.col("symbol").is_in(sorted(ours)))
    con = connect(root)
    try:
        con.register("reference_frame", ref.select(*_KEYS, *COLUMNS).to_arrow())
        con.execute("CREATE OR REPLACE VIEW reference AS SELECT * FROM reference_frame")
        detail = con.sql(
            'SELECT * FROM compare WHERE trade_type = ? AND "interval" = ?', params=[trade_type, interval]
        ).pl()
    finally:
        con.close()
    detail = _with_extra(detail, extra, trade_type, interval).sort("symbol", "offset", "column")
    summary = pl.DataFrame({"column": list(COLUMNS)}).join(
        detail.group_by("column").agg(pl.col("max_rel_error").max()), on="column", how="left"
    )
    series = detail.unique(_SERIES).filter(pl.col("reference_rows") > 0)
    return CompareResult(
        trade_type=trade_type,
        interval=interval,
        summary=summary,
        detail=detail,
        reference_rows=int(series["reference_rows"].sum()),
        matched=int(series["matched"].sum()),
        missing=int(series["missing"].sum()),
        offsets=tuple(sorted(set(series["offset"].to_list()), key=_offset_minutes)),
        symbols=series["symbol"].n_unique(),
        absent_symbols=absent,
        extra=int(extra["extra"].sum()),
        unreferenced_symbols=unreferenced,
    )


def _not_in_reference(
    root: str | os.PathLike[str] | LakeFS, trade_type: str, interval: str, reference: pl.DataFrame
) -> pl.DataFrame:
    """Per (offset, symbol) of ours, how many candles in the reference's hours of that offset (the
    ``candle_begin_time`` values it has rows of) it has no row of (``extra``); series with none left out."""
    keys = [*_SERIES, "candle_begin_time"]
    theirs = reference.select(*_SERIES, pl.col("candle_begin_time").cast(OFFSET_SCHEMA["candle_begin_time"]))
    # The hours it holds rows of, not its first to last: files saved days apart leave days between
    # them that it does not cover, and our candles there are not missing from it.
    hours = theirs.select("offset", "candle_begin_time").drop_nulls().unique()
    if hours.height == 0:
        return pl.DataFrame(schema={"offset": pl.String, "symbol": pl.String, "extra": pl.Int64})
    bounds = hours.select(
        pl.col("candle_begin_time").min().alias("first"),
        (pl.col("candle_begin_time").max() + dt.timedelta(milliseconds=1)).alias("end"),
    )
    # Only the period files and tail bins of these hours are read, not the offsets' whole history.
    held = scan_offsets(root, trade_type, interval, start=bounds.item(0, 0), end=bounds.item(0, 1))
    return (
        held.select(keys)
        .join(hours.lazy(), on=["offset", "candle_begin_time"], how="semi")
        .join(theirs.lazy(), on=keys, how="anti")
        .group_by(_SERIES)
        .agg(pl.len().cast(pl.Int64).alias("extra"))
        .collect()
    )


def _with_extra(detail: pl.DataFrame, extra: pl.DataFrame, trade_type: str, interval: str) -> pl.DataFrame:
    """``detail`` with each series' ``extra``, and rows (nothing compared) for the series of ``extra``
    the reference has no row of: their candles are counted, so the detail shows where."""
    out = detail.join(extra, on=_SERIES, how="left").with_columns(pl.col("extra").fill_null(0))
    only_ours = extra.join(detail.select(_SERIES).unique(), on=_SERIES, how="anti")
    if only_ours.height == 0:
        return out
    rows = only_ours.join(pl.DataFrame({"column": list(COLUMNS)}), how="cross").with_columns(
        pl.lit(trade_type).alias("trade_type"),
        pl.lit(interval).alias("interval"),
        pl.lit(None).alias("max_rel_error"),
        pl.lit(0).alias("reference_rows"),
        pl.lit(0).alias("matched"),
        pl.lit(0).alias("missing"),
    )
    return pl.concat([out, rows.select(out.columns).cast(out.schema)])


async def fetch_reference(
    settings: Settings,
    trade_type: str,
    offsets: tuple[str, ...] = QUANTCLASS_OFFSETS,
    *,
    save_dir: str | os.PathLike[str] | None = None,
) -> pl.DataFrame:
    """Download the latest Quantclass file of ``trade_type`` for every offset (``offset`` column added).

    With ``save_dir`` each archive is also kept under its own name, for ``--reference-dir`` later.
    """
    kind = kind_of(trade_type)
    async with QuantclassClient.from_settings(settings) as qc:

        async def one(offset: str) -> pl.DataFrame:
            latest = await qc.latest(offset)
            data = await qc.download(latest.url(kind))
            name = FileName(latest.ts, kind, offset)
            try:
                df = await asyncio.to_thread(decode_archive, data)  # kept only if it can be read
            except DataError as exc:
                # named as --save-reference would keep it (the URL carries a token)
                raise DataError(f"Quantclass's {name}: {exc}") from exc
            if save_dir is not None:
                target = Path(save_dir) / str(name)
                await asyncio.to_thread(_save, target, data)
            return df.with_columns(pl.lit(offset).alias("offset"))

        frames = await asyncio.gather(*(one(o) for o in offsets))
    return pl.concat(frames)


def _save(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(target, lambda tmp: tmp.write_bytes(data))


def load_reference_dir(directory: str | os.PathLike[str], trade_type: str) -> pl.DataFrame:
    """Reference candles from files on disk: ``*-<spot|swap>_1h<offset>.7z`` (or ``.csv``) of the trade type."""
    kind = kind_of(trade_type)
    d = Path(directory)
    if not d.is_dir():
        raise NotFoundError(f"reference directory {d} does not exist")
    frames = []
    for k, path in enumerate(sorted(d.iterdir())):  # by name: oldest ``ts`` first
        name = FileName.parse(path.name)
        if name is None or name.kind != kind:
            continue
        data = path.read_bytes()
        try:
            df = decode_archive(data) if name.ext == "7z" else read_candles_csv(data)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
        frames.append(df.with_columns(pl.lit(name.offset).alias("offset"), pl.lit(k).alias("_file")))
    if not frames:
        raise NotFoundError(f"no Quantclass {kind} files (e.g. 202410081500-{kind}_1h0m.7z) in {d}")
    # Successive files of an offset overlap (each holds the latest hours): a candle is taken from
    # the newest file holding it, with all of that file's rows for it, as a download compares them
    # (the seed's merge keeps a file's duplicate rows, and its max then sees every one).
    keys = ["offset", "symbol", "candle_begin_time"]
    return pl.concat(frames).filter(pl.col("_file") == pl.col("_file").max().over(keys)).drop("_file")


async def compare_quantclass(
    settings: Settings,
    trade_type: str,
    interval: str = "1h",
    *,
    reference_dir: str | os.PathLike[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
) -> CompareResult:
    """Fetch (or load from ``reference_dir``) the Quantclass files and compare them with the lake."""
    kind_of(trade_type)
    if interval != "1h":
        raise ValidationError(f"Quantclass serves 1h candles only, not {interval!r}")
    if reference_dir is not None:
        reference = await asyncio.to_thread(load_reference_dir, reference_dir, trade_type)
    else:
        reference = await fetch_reference(settings, trade_type, save_dir=save_dir)
    if reference.height == 0:  # a file mid-update, say: the lake is not what is missing
        where = f"the files in {reference_dir}" if reference_dir is not None else "Quantclass's latest files"
        raise IncompleteError(f"nothing to compare: {where} hold no {kind_of(trade_type)} candles")
    return await asyncio.to_thread(compare_with_reference, settings.root, trade_type, interval, reference)


def _offset_minutes(name: str) -> int:
    return int(name.rstrip("m")) if name.endswith("m") and name[:-1].isdigit() else 10**9
