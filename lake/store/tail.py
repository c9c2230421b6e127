"""The klines *tail*: immutable files of freshly closed candles, many symbols per file.

``lake live`` must make a closed candle readable within milliseconds for a thousand symbols that
all close at the same instant. Rewriting a thousand partition files cannot do that (~2 ms each), so
the live writer stores each batch of closed candles, every symbol at once, as one new file:

    klines_tail/trade_type=<tt>/interval=<iv>/<ns>-<pid>-<rand>.parquet    (symbol + kline columns)

A tail file is never rewritten. Later, off the hot path, ``compact_tail`` upserts its rows into
the partitions (``lake.store.klines.write_klines``) and records it as compacted; only
``grace_s`` seconds after that is the file deleted. Readers (``scan_klines`` and the DuckDB
``klines`` view) take every partition row whose key is **not** in the tail, plus the tail: a
candle is in the tail, in a partition, or both, and the result has it exactly once. A reader can
only miss a candle if it listed the partitions before a compaction and the tail more than
``grace_s`` later, which a query planned in one go never does.

A file compacted more than ``SETTLED_S`` seconds ago is no longer read: its rows are in the
partitions, and a later write there (a repair, a re-uploaded archive day, a backfill after
``lake live`` stopped) must not be hidden by the tail's older copy until the file is deleted. The
seconds of margin cover a query that listed the partitions before that compaction created one.

``_empty.parquet`` (zero rows) keeps the directory non-empty once a live feed has started, so a
DuckDB connection opened before the first candle already includes the tail in its view.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lake.binance.intervals import parse_interval
from lake.binance.klines import REST_FLOAT_FIELDS, klines_from_rest
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import DataError
from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA
from lake.store.fs import LakeFS

__all__ = [
    "EMPTY_FILE",
    "SETTLED_S",
    "TAIL_SCHEMA",
    "TAIL_TABLE",
    "CompactResult",
    "compact_tail",
    "encode_tail_rows",
    "ensure_tail",
    "read_tail",
    "tail_dir",
    "tail_feeds",
    "tail_files",
    "write_tail",
    "write_tail_bytes",
]

TAIL_TABLE = "klines_tail"
EMPTY_FILE = "_empty.parquet"
TAIL_SCHEMA: dict[str, pl.DataType] = {"symbol": pl.String(), **KLINE_SCHEMA}
_STATE = "_compacted.json"  # {file name: unix time it was compacted}
SETTLED_S = 10.0  # compacted this long ago: readers skip the file (bound for sql/klines_tail.sql)
_KEY = ["symbol", "candle_begin_time"]


Root = str | os.PathLike[str] | LakeFS


def _lfs(root: Root) -> LakeFS:
    return root if isinstance(root, LakeFS) else LakeFS(root)


def tail_dir(trade_type: str, interval: str) -> str:
    """The tail directory of one (trade type, interval), relative to the lake root."""
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    return f"{TAIL_TABLE}/trade_type={tt.name}/interval={iv.name}"


def _encode(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    # One row group, no compression: a tail file is small and short-lived; speed is what matters.
    df.write_parquet(buf, compression="uncompressed", statistics=True)
    return buf.getvalue()


def _conform(df: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in TAIL_SCHEMA if c not in df.columns]
    if missing:
        raise DataError(f"tail rows lack columns: {', '.join(missing)}")
    try:
        out = df.select([pl.col(c).cast(t) for c, t in TAIL_SCHEMA.items()])
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"tail rows do not fit the schema: {exc}") from exc
    if out["candle_begin_time"].null_count() or out["symbol"].null_count():
        raise DataError("tail rows with a null symbol or candle_begin_time")
    for s in out["symbol"].unique().to_list():
        validate_symbol(s)
    return out.sort(_KEY)


def ensure_tail(root: Root, trade_type: str, interval: str) -> None:
    """Create the tail directory with its zero-row marker file (idempotent)."""
    lfs = _lfs(root)
    rel = f"{tail_dir(trade_type, interval)}/{EMPTY_FILE}"
    if not lfs.exists(rel):
        lfs.write_atomic(rel, _encode(pl.DataFrame(schema=TAIL_SCHEMA)))


def write_tail(root: Root, trade_type: str, interval: str, df: pl.DataFrame) -> str | None:
    """Store closed candles of any number of symbols as one new tail file; returns its path.

    ``df`` has a ``symbol`` column and the kline columns. The file is written atomically under a
    name that sorts after every earlier one (nanosecond clock, then pid), so when two tail files
    hold the same candle the later one wins.
    """
    if df.height == 0:
        return None
    return write_tail_bytes(root, trade_type, interval, _encode(_conform(df)))


def write_tail_bytes(root: Root, trade_type: str, interval: str, data: bytes) -> str:
    """Store an encoded tail file (from ``encode_tail_rows``) atomically as a new file; its path."""
    lfs = _lfs(root)
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet"
    rel = f"{tail_dir(trade_type, interval)}/{name}"
    lfs.write_atomic(rel, data)
    return rel


_TS = pa.timestamp("ms", tz="UTC")
_STR = pa.large_string()
_valid_symbols: set[str] = set()


def encode_tail_rows(rows_by_symbol: Mapping[str, Sequence[Sequence[Any]]], source: str) -> bytes | None:
    """One tail file's bytes for REST-shaped rows of many symbols (``None`` when there are none).

    The live writer's hot path: a burst of a thousand closed candles goes from the rows the
    websocket parser buffered to parquet bytes in ~1.5 ms, with Arrow's casts instead of a Polars
    frame and a conform step (~4 ms, and more Python holding the GIL while the event loop parses the
    rest of the burst). The file is the same as ``write_tail``'s: same schema, sorted by symbol and
    time. Rows the fast path cannot take as they are (numbers instead of decimal strings, say) go
    through the general conversion, which raises ``DataError`` for rows that do not parse.
    """
    rows_by_symbol = {s: rs for s, rs in rows_by_symbol.items() if rs}
    if not rows_by_symbol:
        return None
    for sym in rows_by_symbol:
        if sym not in _valid_symbols:
            validate_symbol(sym)
            _valid_symbols.add(sym)
    try:
        table = _rows_table(rows_by_symbol, source)
    except (pa.ArrowException, TypeError, ValueError, IndexError, OverflowError):
        table = None
    if table is None:
        return _encode(_conform(rows_frame(rows_by_symbol, source)))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="NONE", use_dictionary=["symbol", "source"], store_schema=False)
    return bytes(sink.getvalue())


def _rows_table(rows_by_symbol: Mapping[str, Sequence[Sequence[Any]]], source: str) -> pa.Table | None:
    symbols: list[str] = []
    rows: list[Sequence[Any]] = []
    for sym, rs in rows_by_symbol.items():
        symbols.extend([sym] * len(rs))
        rows.extend(rs)
    if any(len(r) < 11 for r in rows):
        return None
    cols = list(zip(*(r[:11] for r in rows), strict=True))
    arrays: dict[str, pa.Array] = {
        "symbol": pa.array(symbols, _STR),
        "candle_begin_time": pa.array(cols[0], pa.int64()).cast(_TS),
    }
    for name, i in REST_FLOAT_FIELDS.items():
        arrays[name] = pa.array(cols[i], _STR).cast(pa.float64())
    arrays["trade_num"] = pa.array(cols[8], pa.int64())
    arrays["source"] = pa.array([source] * len(rows), _STR)
    table = pa.table({c: arrays[c] for c in TAIL_SCHEMA})
    if any(table.column(c).null_count for c in TAIL_SCHEMA):
        return None  # let the general path report it
    return table.sort_by([("symbol", "ascending"), ("candle_begin_time", "ascending")])


def rows_frame(rows_by_symbol: Mapping[str, Sequence[Sequence[Any]]], source: str) -> pl.DataFrame:
    """REST-shaped rows of many symbols as one frame with a ``symbol`` column (``DataError`` if bad)."""
    symbols: list[str] = []
    rows: list[Sequence[Any]] = []
    for sym, rs in rows_by_symbol.items():
        symbols.extend([sym] * len(rs))
        rows.extend(rs)
    return klines_from_rest(rows, source=source).with_columns(pl.Series("symbol", symbols, dtype=pl.String))


def tail_files(root: Root, trade_type: str, interval: str) -> list[str]:
    """Names of the tail's data files, oldest first (the zero-row marker excluded)."""
    lfs = _lfs(root)
    return [
        n for n in lfs.listdir(tail_dir(trade_type, interval)) if n.endswith(".parquet") and n[:1].isdigit()
    ]


def tail_feeds(root: Root) -> list[tuple[str, str]]:
    """Every (trade type, interval) with a tail directory."""
    lfs = _lfs(root)
    out = []
    for tt_dir in lfs.listdir(TAIL_TABLE):
        if not tt_dir.startswith("trade_type="):
            continue
        for iv_dir in lfs.listdir(f"{TAIL_TABLE}/{tt_dir}"):
            if iv_dir.startswith("interval="):
                out.append((tt_dir.split("=", 1)[1], iv_dir.split("=", 1)[1]))
    return out


def _read_files(lfs: LakeFS, base: str, names: Iterable[str]) -> list[pl.DataFrame]:
    frames = []
    for n in names:
        data = lfs.read_bytes_or_none(f"{base}/{n}")
        if data is None:
            # Deleted since the listing: it was compacted at least grace_s ago, so its rows are
            # in the partitions the caller reads.
            continue
        try:
            frames.append(pl.read_parquet(io.BytesIO(data)).select(list(TAIL_SCHEMA)))
        except pl.exceptions.PolarsError as exc:
            raise DataError(
                f"unreadable tail file {base}/{n} ({exc}); nothing was changed: move the file away "
                "and run lake live or lake backfill again to refetch its candles"
            ) from exc
    return frames


def read_tail(
    root: Root,
    trade_type: str,
    interval: str,
    symbols: Iterable[str] | None = None,
    *,
    names: list[str] | None = None,
) -> pl.DataFrame:
    """Every candle in the tail, one row per (symbol, candle_begin_time) (the later file wins).

    Files compacted more than ``SETTLED_S`` ago are skipped (their rows are in the partitions);
    ``names`` reads exactly those files.
    """
    lfs = _lfs(root)
    base = tail_dir(trade_type, interval)
    if names is None:
        # the record before the listing: a file compacted in between is read, which is harmless
        settled = time.time() - SETTLED_S
        done = {n for n, t in _load_state(lfs, base).items() if t <= settled}
        names = [n for n in tail_files(lfs, trade_type, interval) if n not in done]
    frames = _read_files(lfs, base, names)
    if not frames:
        return pl.DataFrame(schema=TAIL_SCHEMA)
    df = pl.concat(frames, how="vertical")
    if symbols is not None:
        df = df.filter(pl.col("symbol").is_in(list(symbols)))
    return df.unique(_KEY, keep="last", maintain_order=True).sort(_KEY)


@dataclass
class CompactResult:
    """What one ``compact_tail`` did."""

    files_compacted: int = 0
    rows: int = 0
    symbols: list[str] = field(default_factory=list)
    files_deleted: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # symbol → error (its files are kept)


def _load_state(lfs: LakeFS, base: str) -> dict[str, float]:
    data = lfs.read_bytes_or_none(f"{base}/{_STATE}")
    if data is None:
        return {}
    try:
        state = json.loads(data)
    except ValueError:
        return {}  # a lost state only means compacting some files again (an upsert, a no-op)
    return {str(k): float(v) for k, v in state.items()} if isinstance(state, dict) else {}


def compact_tail(
    root: Root,
    trade_type: str,
    interval: str,
    *,
    grace_s: float = 120.0,
    write: Callable[[str, pl.DataFrame], None] | None = None,
    now: Callable[[], float] = time.time,
) -> CompactResult:
    """Upsert every not-yet-compacted tail file into the partitions; delete files compacted long ago.

    ``write(symbol, rows)`` stores one symbol's rows (kline columns); the default is
    ``write_klines``. A symbol whose write fails keeps its files un-compacted for the next call.
    Safe to repeat and to interrupt: compacting a file twice is an upsert of the same rows.
    """
    lfs = _lfs(root)
    from lake.store.klines import write_klines  # klines imports this module

    tt = get_trade_type(trade_type).name
    iv = parse_interval(interval, spot=get_trade_type(trade_type).is_spot).name
    base = tail_dir(tt, iv)
    if write is None:

        def write(sym: str, rows: pl.DataFrame) -> None:
            write_klines(lfs, tt, iv, sym, rows)

    out = CompactResult()
    with lfs.lock(f"{base}/compact"):
        state = _load_state(lfs, base)
        names = tail_files(lfs, tt, iv)
        state = {n: t for n, t in state.items() if n in names}  # forget files already deleted
        todo = [n for n in names if n not in state]
        if todo:
            frames = _read_files(lfs, base, todo)
            df = (
                pl.concat(frames, how="vertical").unique(_KEY, keep="last", maintain_order=True).sort(_KEY)
                if frames
                else pl.DataFrame(schema=TAIL_SCHEMA)
            )
            for (sym,), part in df.partition_by("symbol", as_dict=True, maintain_order=True).items():
                try:
                    write(str(sym), part.select(KLINE_COLUMNS))
                except Exception as exc:
                    out.failed[str(sym)] = f"{type(exc).__name__}: {exc}"
                    continue
                out.symbols.append(str(sym))
                out.rows += part.height
            if not out.failed:
                stamp = now()
                for n in todo:
                    state[n] = stamp
                out.files_compacted = len(todo)
        cutoff = now() - grace_s
        for n in [n for n, t in state.items() if t <= cutoff]:
            lfs.remove(f"{base}/{n}")
            del state[n]
            out.files_deleted += 1
        lfs.write_atomic(f"{base}/{_STATE}", json.dumps(state, sort_keys=True).encode())
    return out
