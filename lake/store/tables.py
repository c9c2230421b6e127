"""Small side tables next to the klines: exchange_info snapshots and funding rates.

Layout under the lake root (hive-style, so ``read_parquet('<table>/**/*.parquet', hive_partitioning=1)``
yields the partition columns)::

    exchange_info/trade_type=<tt>/date=<YYYY-MM-DD>/data.parquet    one file per trade type and UTC day
    funding/trade_type=<tt>/symbol=<SYM>/data.parquet                 one file per perpetual

``exchange_info`` keeps every *distinct* snapshot of a day: a fetch whose rows equal the latest
stored snapshot of that day (ignoring ``snapshot_time``) adds nothing, so polling exchangeInfo does
not grow the table. ``funding`` is upserted on ``funding_time`` (newer row wins). Both are written
atomically under a lock, like the klines.
"""

from __future__ import annotations

import datetime as dt
import os

import polars as pl

from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import DataError
from lake.store.fs import LakeFS
from lake.store.klines import encode_parquet, to_lakefs

__all__ = [
    "EXCHANGE_INFO_SCHEMA",
    "FUNDING_SCHEMA",
    "exchange_info_path",
    "funding_path",
    "read_funding",
    "scan_exchange_info",
    "write_exchange_info",
    "write_funding",
]

_TIME = pl.Datetime("ms", "UTC")

EXCHANGE_INFO_SCHEMA: dict[str, pl.DataType] = {
    "snapshot_time": _TIME,
    "symbol": pl.String(),
    "status": pl.String(),
    "base_asset": pl.String(),
    "quote_asset": pl.String(),
    "margin_asset": pl.String(),
    "contract_type": pl.String(),
    "pair": pl.String(),
    "onboard_date": _TIME,
    "delivery_date": _TIME,
    "tick_size": pl.Float64(),
    "lot_size": pl.Float64(),
    "min_notional": pl.Float64(),
    "contract_size": pl.Float64(),
}

FUNDING_SCHEMA: dict[str, pl.DataType] = {
    "funding_time": _TIME,
    "funding_rate": pl.Float64(),
    "mark_price": pl.Float64(),
}


def _conform(df: pl.DataFrame, schema: dict[str, pl.DataType], what: str) -> pl.DataFrame:
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise DataError(f"{what} rows lack columns: {', '.join(missing)}")
    try:
        return df.select([pl.col(c).cast(t) for c, t in schema.items()])
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{what} rows do not fit the schema: {exc}") from exc


# -- exchange_info -------------------------------------------------------------------------------


def exchange_info_path(trade_type: str, day: dt.date) -> str:
    tt = get_trade_type(trade_type).name
    return f"exchange_info/trade_type={tt}/date={day.isoformat()}/data.parquet"


def write_exchange_info(root: str | os.PathLike[str] | LakeFS, trade_type: str, df: pl.DataFrame) -> bool:
    """Append one snapshot (rows sharing one ``snapshot_time``) to its day's file.

    Returns False (and writes nothing) when the day's latest stored snapshot has the same rows.
    """
    lfs = to_lakefs(root)
    rows = _conform(df, EXCHANGE_INFO_SCHEMA, "exchange_info")
    if rows.height == 0:
        return False
    times = rows["snapshot_time"].unique()
    if times.len() != 1 or times.null_count():
        raise DataError("an exchange_info snapshot must have exactly one non-null snapshot_time")
    snap = times[0]
    assert isinstance(snap, dt.datetime)
    rel = exchange_info_path(trade_type, snap.date())
    rows = rows.sort("symbol")
    with lfs.lock(f"exchange_info/trade_type={get_trade_type(trade_type).name}"):
        data = lfs.read_bytes_or_none(rel)
        if data is not None:
            old = pl.read_parquet(data).select(list(EXCHANGE_INFO_SCHEMA))
            latest = old.filter(pl.col("snapshot_time") == old["snapshot_time"].max()).sort("symbol")
            if latest.drop("snapshot_time").equals(rows.drop("snapshot_time")):
                return False
            if old.filter(pl.col("snapshot_time") == snap).height:
                old = old.filter(pl.col("snapshot_time") != snap)
            rows = pl.concat([old, rows]).sort("snapshot_time", "symbol")
        lfs.write_atomic(rel, encode_parquet(rows))
    return True


def scan_exchange_info(root: str | os.PathLike[str] | LakeFS, trade_type: str | None = None) -> pl.DataFrame:
    """Every stored snapshot row (with ``trade_type``), optionally for one trade type."""
    lfs = to_lakefs(root)
    frames: list[pl.DataFrame] = []
    for tt_dir in lfs.listdir("exchange_info"):
        if not tt_dir.startswith("trade_type="):
            continue
        tt = tt_dir.split("=", 1)[1]
        if trade_type is not None and tt != trade_type:
            continue
        for day_dir in lfs.listdir(f"exchange_info/{tt_dir}"):
            data = lfs.read_bytes_or_none(f"exchange_info/{tt_dir}/{day_dir}/data.parquet")
            if data is not None:
                frames.append(pl.read_parquet(data).with_columns(pl.lit(tt).alias("trade_type")))
    if not frames:
        return pl.DataFrame(schema={**EXCHANGE_INFO_SCHEMA, "trade_type": pl.String()})
    return pl.concat(frames, how="vertical_relaxed")


# -- funding -------------------------------------------------------------------------------------


def funding_path(trade_type: str, symbol: str) -> str:
    tt = get_trade_type(trade_type).name
    return f"funding/trade_type={tt}/symbol={validate_symbol(symbol)}/data.parquet"


def read_funding(root: str | os.PathLike[str] | LakeFS, trade_type: str, symbol: str) -> pl.DataFrame:
    """Stored funding rows of one symbol, sorted by ``funding_time`` (empty frame if none)."""
    data = to_lakefs(root).read_bytes_or_none(funding_path(trade_type, symbol))
    if data is None:
        return pl.DataFrame(schema=FUNDING_SCHEMA)
    return pl.read_parquet(data).select(list(FUNDING_SCHEMA))


def write_funding(
    root: str | os.PathLike[str] | LakeFS, trade_type: str, symbol: str, df: pl.DataFrame
) -> int:
    """Upsert funding rows of one symbol on ``funding_time``; returns the number of new times."""
    lfs = to_lakefs(root)
    rel = funding_path(trade_type, symbol)
    rows = _conform(df, FUNDING_SCHEMA, "funding")
    if rows.height == 0:
        return 0
    if rows["funding_time"].null_count():
        raise DataError("funding rows with a null funding_time")
    with lfs.lock(f"funding/trade_type={get_trade_type(trade_type).name}/symbol={symbol}"):
        old = read_funding(lfs, trade_type, symbol)
        merged = (
            pl.concat([old, rows])
            .unique("funding_time", keep="last", maintain_order=True)
            .sort("funding_time")
        )
        if merged.equals(old):
            return 0
        lfs.write_atomic(rel, encode_parquet(merged))
    return merged.height - old.height
