"""The klines table: upsert rows into partitions, scan them back lazily.

Writes merge new rows into each affected partition (upsert on ``candle_begin_time``: the newer
row wins), under the series lock, and replace the partition file atomically. A merge that changes
nothing writes nothing, so re-running any job leaves the lake byte-for-byte as it was.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol, validate_symbols
from lake.errors import DataError, ValidationError
from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA, SOURCES
from lake.store.fs import LakeFS
from lake.store.paths import (
    DATA_FILE,
    PartitionKey,
    partition_end,
    partition_period,
    partition_start,
    series_dir,
)

__all__ = [
    "WriteResult",
    "encode_parquet",
    "list_partitions",
    "list_series",
    "read_partition",
    "scan_klines",
    "to_lakefs",
    "write_klines",
]

_HIVE_SCHEMA = {"trade_type": pl.String, "interval": pl.String, "symbol": pl.String, "date": pl.String}
_TRUNC = {"day": "1d", "month": "1mo", "year": "1y"}


def to_lakefs(root: str | os.PathLike[str] | LakeFS) -> LakeFS:
    return root if isinstance(root, LakeFS) else LakeFS(root)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one ``write_klines`` call did."""

    partitions_written: int = 0
    partitions_unchanged: int = 0
    rows_in: int = 0
    rows_added: int = 0  # rows whose candle_begin_time was not stored before

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(
            self.partitions_written + other.partitions_written,
            self.partitions_unchanged + other.partitions_unchanged,
            self.rows_in + other.rows_in,
            self.rows_added + other.rows_added,
        )


_FLOATS = [c for c, t in KLINE_SCHEMA.items() if t == pl.Float64()]


def _conform(df: pl.DataFrame) -> pl.DataFrame:
    """Cast to the kline schema and reject bad rows, in one pass over the data."""
    missing = [c for c in KLINE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"kline rows lack columns: {', '.join(missing)}")
    try:
        out = df.select([pl.col(c).cast(t) for c, t in KLINE_SCHEMA.items()])
        bad_value = pl.any_horizontal([pl.col(c).is_null() | ~pl.col(c).is_finite() for c in _FLOATS])
        checks = out.select(
            null_time=pl.col("candle_begin_time").null_count(),
            bad_source=(~pl.col("source").is_in(list(SOURCES)) | pl.col("source").is_null())
            .arg_true()
            .first(),
            bad_value=bad_value.arg_true().first(),
            n_bad_value=bad_value.sum(),
        ).row(0, named=True)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"kline rows do not fit the schema: {exc}") from exc
    if checks["null_time"]:
        raise DataError("kline rows with a null candle_begin_time")
    if checks["bad_source"] is not None:
        raise DataError(
            f"unknown source {out['source'][checks['bad_source']]!r}; valid: {', '.join(SOURCES)}"
        )
    if checks["bad_value"] is not None:
        raise DataError(
            f"{checks['n_bad_value']} kline rows with null or non-finite values, e.g. {out.row(checks['bad_value'])}"
        )
    return out


def encode_parquet(df: pl.DataFrame) -> bytes:
    """The bytes of ``df`` as the lake stores every table file (parquet, zstd, with statistics)."""
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


def read_partition(lfs: LakeFS, key: PartitionKey) -> pl.DataFrame | None:
    """The stored rows of one partition, or ``None`` when it does not exist."""
    data = lfs.read_bytes_or_none(key.path)
    if data is None:
        return None
    return pl.read_parquet(io.BytesIO(data))


def _sorted_unique(df: pl.DataFrame) -> pl.DataFrame:
    """Sort by time and keep the last row per time; free when the rows already are (the common case)."""
    t = df["candle_begin_time"]
    if t.is_sorted() and t.n_unique() == df.height:
        return df
    return df.unique("candle_begin_time", keep="last", maintain_order=True).sort("candle_begin_time")


def _merge(old: pl.DataFrame | None, new: pl.DataFrame) -> tuple[pl.DataFrame | None, int]:
    """The partition after upserting ``new`` into ``old``, or ``None`` if nothing changes; rows added."""
    new = _sorted_unique(new)
    if old is None or old.height == 0:
        return new, new.height
    old = old.select(KLINE_COLUMNS)
    if old["candle_begin_time"][-1] < new["candle_begin_time"][0]:
        return pl.concat([old, new], how="vertical"), new.height  # append: the live and backfill path
    merged = _sorted_unique(pl.concat([old, new], how="vertical"))
    if merged.equals(old):
        return None, 0
    return merged, merged.height - old.height


def write_klines(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    symbol: str,
    df: pl.DataFrame,
) -> WriteResult:
    """Upsert kline rows of one series into the lake.

    ``df`` has the lake's kline columns (extra columns are ignored). Rows are grouped by partition;
    every affected partition is merged under the series lock and all of them are replaced atomically
    file by file (``LakeFS.write_atomic_many``: one disk sync for the batch, not one per file).
    Safe to call from several threads or processes at once. Partitions the rows do not change are
    not rewritten.
    """
    lfs = to_lakefs(root)
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    validate_symbol(symbol)
    if df.height == 0:
        return WriteResult()
    rows = _conform(df)
    period = partition_period(iv)
    parts: list[tuple[dt.date, pl.DataFrame]]
    first = rows["candle_begin_time"].min()
    last = rows["candle_begin_time"].max()
    assert isinstance(first, dt.datetime) and isinstance(last, dt.datetime)
    p_first = partition_start(iv, _dt_ms(first))
    if p_first == partition_start(iv, _dt_ms(last)):
        parts = [(p_first, rows)]
    else:
        keyed = rows.with_columns(
            pl.col("candle_begin_time").dt.truncate(_TRUNC[period]).dt.date().alias("_p")
        )
        parts = [(pdate, part.drop("_p")) for (pdate,), part in keyed.group_by("_p", maintain_order=True)]
    written, unchanged, added = 0, 0, 0
    with lfs.lock(series_dir("klines", tt.name, iv.name, symbol)):
        pending: list[tuple[str, bytes]] = []
        for pdate, part in parts:
            key = PartitionKey("klines", tt.name, iv.name, symbol, pdate)
            merged, n_added = _merge(read_partition(lfs, key), part)
            if merged is None:
                unchanged += 1
                continue
            pending.append((key.path, encode_parquet(merged)))
            written += 1
            added += n_added
        lfs.write_atomic_many(pending)
    return WriteResult(written, unchanged, rows.height, added)


def list_series(root: str | os.PathLike[str] | LakeFS) -> list[tuple[str, str, str]]:
    """Every stored (trade_type, interval, symbol)."""
    lfs = to_lakefs(root)
    out: list[tuple[str, str, str]] = []
    for tt_dir in lfs.listdir("klines"):
        if not tt_dir.startswith("trade_type="):
            continue
        tt = tt_dir.split("=", 1)[1]
        for iv_dir in lfs.listdir(f"klines/{tt_dir}"):
            if not iv_dir.startswith("interval="):
                continue
            iv = iv_dir.split("=", 1)[1]
            for sym_dir in lfs.listdir(f"klines/{tt_dir}/{iv_dir}"):
                if sym_dir.startswith("symbol="):
                    out.append((tt, iv, sym_dir.split("=", 1)[1]))
    return out


def list_partitions(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    symbol: str,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[PartitionKey]:
    """Stored partitions of one series that overlap ``[start, end)``."""
    lfs = to_lakefs(root)
    base = series_dir("klines", trade_type, interval, symbol)
    iv = parse_interval(interval)
    keys: list[PartitionKey] = []
    for name in lfs.listdir(base):
        if not name.startswith("date="):
            continue
        # A writer killed between creating the directory and renaming its file in leaves an empty
        # partition directory locally (object stores have no directories); readers must skip it.
        if lfs.is_local and not os.path.exists(lfs.full(f"{base}/{name}/{DATA_FILE}")):
            continue
        try:
            pdate = dt.date.fromisoformat(name[5:])
        except ValueError:
            continue
        if end is not None and _ms(pdate) >= _dt_ms(end):
            continue
        if start is not None and _ms(partition_end(iv, pdate)) <= _dt_ms(start):
            continue
        keys.append(PartitionKey("klines", trade_type, interval, symbol, pdate))
    return keys


def scan_klines(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    symbols: str | Sequence[str] | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> pl.LazyFrame:
    """Lazily read klines of one (trade type, interval), optionally for some symbols and ``[start, end)``.

    Partitions outside the symbols and time range are never opened. The frame has a ``symbol``
    column followed by the kline columns, sorted per partition (not globally).
    """
    lfs = to_lakefs(root)
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    start, end = _utc(start), _utc(end)
    if symbols is None:
        syms: Iterable[str] = [s for t, i, s in list_series(lfs) if t == tt.name and i == iv.name]
    else:
        syms = validate_symbols([symbols] if isinstance(symbols, str) else list(symbols))
    files = [lfs.url(k.path) for s in syms for k in list_partitions(lfs, tt.name, iv.name, s, start, end)]
    columns = ["symbol", *KLINE_COLUMNS]
    if not files:
        return pl.LazyFrame(schema={"symbol": pl.String, **KLINE_SCHEMA})
    lf = pl.scan_parquet(
        files,
        glob=False,  # the paths are exact: a root containing [ * ? must not be read as a pattern
        hive_partitioning=True,
        hive_schema=_HIVE_SCHEMA,
        # Object-store credentials come from the standard AWS_* environment (read by Polars too).
        storage_options=None,
    )
    if start is not None:
        lf = lf.filter(pl.col("candle_begin_time") >= start)
    if end is not None:
        lf = lf.filter(pl.col("candle_begin_time") < end)
    return lf.select(columns)


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None:
        return None
    if t.tzinfo is None:
        raise ValidationError(f"naive datetime {t!r}: pass a timezone-aware (UTC) datetime")
    return t.astimezone(dt.UTC)


def _ms(d: dt.date) -> int:
    return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)


def _dt_ms(t: dt.datetime) -> int:
    return math.floor(t.timestamp() * 1000)


assert DATA_FILE.endswith(".parquet")
