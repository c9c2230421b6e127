"""The klines *tail*: immutable files of freshly closed candles, many symbols per file.

``lake live`` must make a closed candle readable within milliseconds for a thousand symbols that
all close at the same instant. Rewriting a thousand partition files cannot do that (~2 ms each), so
the live writer stores each batch of closed candles, every symbol at once, as one new file:

    klines_tail/trade_type=<tt>/interval=<iv>/<ns>-<pid>-<rand>.parquet    (symbol + kline columns)

Later, off the hot path, ``compact_tail`` upserts a tail file's rows into the partitions
(``lake.store.klines.write_klines``) and records it as compacted. Readers (``scan_klines`` and the
DuckDB ``klines`` view) take every partition row whose key is **not** in the tail, plus the tail: a
candle is in the tail, in a partition, or both, and the result has it exactly once.

A file compacted more than ``SETTLED_S`` seconds ago is no longer read: its rows are in the
partitions, and a later write there (a repair, a re-uploaded archive day, a backfill after
``lake live`` stopped) must not be hidden by the tail's older copy. The seconds of margin cover a
query that listed the partitions before that compaction created one.

**Files are retired, not deleted.** A query lists the tail files when it starts and opens them
later; a file deleted in between fails the query (``No such file``). So ``grace_s`` after its
compaction a file is *retired*: rewritten as a zero-row file under the same name (a *stub*),
relocated over it (``lake.store.relocate``: the old pages stay at their offsets and the file keeps
its size; where relocation is off, the old bytes with a zero-row footer appended). DuckDB opens a
parquet file twice (footer, then pages, ``lake.store.swap``); a reader that read the old footer
finds the same pages at the same offsets in the stub, so retiring never tears a read. A later tail
write reuses a stub that was retired at least ``WAIT_S`` seconds ago (a reader of a stub reads no pages, so replacing
it cannot tear a read either; the wait covers a reader still between its two opens of the file
before it was retired). Names are therefore reused, and the order of tail files is the
``tail_seq`` column (nanoseconds at encoding), not the name; the compaction record names a file's
contents as ``<name>#<tail_seq>``. On an object store retired files are deleted, as are stubs
beyond ``MAX_STUBS`` (a burst of catch-up files would otherwise leave hundreds for every query to
open).

``_empty.parquet`` (zero rows) keeps the directory non-empty once a live feed has started, so a
DuckDB connection opened before the first candle already includes the tail in its view.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lake.binance.intervals import parse_interval
from lake.binance.klines import REST_FLOAT_FIELDS, klines_from_rest
from lake.binance.markets import get_trade_type
from lake.binance.symbols import validate_symbol
from lake.errors import DataError, LockTimeoutError
from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA
from lake.store import relocate
from lake.store.fs import LakeFS
from lake.store.swap import WAIT_S

__all__ = [
    "EMPTY_FILE",
    "MAX_STUBS",
    "SEQ",
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
    "upgrade_tail",
    "write_tail",
    "write_tail_bytes",
]

TAIL_TABLE = "klines_tail"
EMPTY_FILE = "_empty.parquet"
TAIL_SCHEMA: dict[str, pl.DataType] = {"symbol": pl.String(), **KLINE_SCHEMA}
SEQ = "tail_seq"  # in every tail file: when it was encoded (ns); the later file wins a candle
FILE_SCHEMA: dict[str, pl.DataType] = {**TAIL_SCHEMA, SEQ: pl.Int64()}
_STATE = "_compacted.json"  # {"<file name>#<tail_seq>": unix time it was compacted}
SETTLED_S = 10.0  # compacted this long ago: readers skip the file (bound for sql/klines_tail.sql)
MAX_STUBS = 64  # retired files kept for reuse per tail directory; more are deleted
_KEY = ["symbol", "candle_begin_time"]
_VALUE_COLUMNS = [c for c in KLINE_SCHEMA if c != "candle_begin_time"]  # (checked apart, with symbol)


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
    # A REST answer's "NaN", "Infinity" or null (a hostile or buggy upstream) must not reach the
    # tail: the klines view would show it at once, and write_klines refuses it at every compaction,
    # so the symbol's good tail rows would never reach its partitions either.
    bad = out.select(
        pl.any_horizontal([pl.col(c).is_null() for c in _VALUE_COLUMNS])
        | pl.any_horizontal([~pl.col(c).is_finite() for c in REST_FLOAT_FIELDS])
    ).to_series()
    if bad.any():
        first = out.filter(bad).row(0)
        raise DataError(f"{bad.sum()} tail rows with null or non-finite values, e.g. {first!r:.300}")
    for s in out["symbol"].unique().to_list():
        validate_symbol(s)
    return out.sort(_KEY).with_columns(pl.lit(time.time_ns(), pl.Int64()).alias(SEQ))


_STUB: bytes | None = None


def _stub() -> bytes:
    """A parquet file without rows (the directory's ``_empty.parquet``); its bytes after the leading
    magic number are the footer appended to a retired file."""
    global _STUB
    if _STUB is None:
        _STUB = _encode(pl.DataFrame(schema=FILE_SCHEMA))
    return _STUB


def _stub_footer() -> bytes:
    return _stub()[4:]


def ensure_tail(root: Root, trade_type: str, interval: str) -> None:
    """Create the tail directory with its zero-row marker file, and bring files written by an older
    version of lake up to date (``upgrade_tail``); idempotent."""
    lfs = _lfs(root)
    rel = f"{tail_dir(trade_type, interval)}/{EMPTY_FILE}"
    if not lfs.exists(rel):
        lfs.write_atomic(rel, _stub())
    upgrade_tail(lfs, trade_type, interval)


def write_tail(root: Root, trade_type: str, interval: str, df: pl.DataFrame) -> str | None:
    """Store closed candles of any number of symbols as one tail file; returns its path.

    ``df`` has a ``symbol`` column and the kline columns. The file gets the ``tail_seq`` of this
    moment, so when two tail files hold the same candle the later one wins.
    """
    if df.height == 0:
        return None
    return write_tail_bytes(root, trade_type, interval, _encode(_conform(df)))


def write_tail_bytes(root: Root, trade_type: str, interval: str, data: bytes) -> str:
    """Store an encoded tail file (from ``encode_tail_rows``) atomically; its path.

    The name of a file retired a while ago (a stub) is reused when there is one, else the file gets
    a new name."""
    lfs = _lfs(root)
    base = tail_dir(trade_type, interval)
    if lfs.is_local:
        try:
            # One writer at a time takes a stub; the compactor holds this lock while it deletes
            # surplus stubs. Busy: a new name, rather than waiting on the hot path.
            with lfs.lock(f"{base}/stubs", timeout=0):
                cutoff = time.time() - WAIT_S
                stub = next((n for n, is_stub, t in _entries(lfs, base) if is_stub and t < cutoff), None)
                if stub is not None:
                    rel = f"{base}/{stub}"
                    # relocated (keeps the stub's size for readers that listed it); a stub's readers
                    # read no pages, so without relocation no lease either
                    lfs.write_atomic(rel, data, guard=relocate.enabled())
                    return rel
        except LockTimeoutError:
            pass
    name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet"
    rel = f"{base}/{name}"
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
    table = table.append_column(SEQ, pa.array([time.time_ns()] * table.num_rows, pa.int64()))
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
    if not all(np.isfinite(arrays[c].to_numpy()).all() for c in REST_FLOAT_FIELDS):
        return None  # "NaN", "Infinity", "1e400": the general path reports it too
    return table.sort_by([("symbol", "ascending"), ("candle_begin_time", "ascending")])


def rows_frame(rows_by_symbol: Mapping[str, Sequence[Sequence[Any]]], source: str) -> pl.DataFrame:
    """REST-shaped rows of many symbols as one frame with a ``symbol`` column (``DataError`` if bad)."""
    symbols: list[str] = []
    rows: list[Sequence[Any]] = []
    for sym, rs in rows_by_symbol.items():
        symbols.extend([sym] * len(rs))
        rows.extend(rs)
    return klines_from_rest(rows, source=source).with_columns(pl.Series("symbol", symbols, dtype=pl.String))


def _is_stub(path: str, size: int) -> bool:
    footer = _stub_footer()
    if size < len(footer) + 4:
        return False
    with open(path, "rb") as f:
        f.seek(size - len(footer))
        return f.read() == footer


def _entries(lfs: LakeFS, base: str) -> Iterator[tuple[str, bool, float]]:
    """(name, is a stub, mtime) of the tail files in ``base``, in name order (the marker excluded),
    read lazily so a caller after one stub stops early. On an object store: no stubs, no mtime."""
    if not lfs.is_local:
        for n in lfs.listdir(base):
            if n.endswith(".parquet") and n[:1].isdigit():
                yield n, False, 0.0
        return
    try:
        entries = sorted(os.scandir(lfs.full(base)), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if not (e.name.endswith(".parquet") and e.name[:1].isdigit()):
            continue
        try:
            st = e.stat()
            yield e.name, _is_stub(e.path, st.st_size), st.st_mtime
        except FileNotFoundError:
            continue


def tail_files(root: Root, trade_type: str, interval: str) -> list[str]:
    """Names of the tail's files holding candles, in name order (marker and stubs excluded)."""
    lfs = _lfs(root)
    return [n for n, is_stub, _ in _entries(lfs, tail_dir(trade_type, interval)) if not is_stub]


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


def _name_seq(name: str) -> int:
    """The ``tail_seq`` of a file written before tail files had one: its name's nanoseconds."""
    try:
        return int(name.split("-", 1)[0])
    except ValueError:
        return 0


def _frame(data: bytes, name: str) -> pl.DataFrame:
    df = pl.read_parquet(data)
    if SEQ not in df.columns:
        df = df.with_columns(pl.lit(_name_seq(name), pl.Int64()).alias(SEQ))
    return df.select(list(FILE_SCHEMA))


def _read_files(lfs: LakeFS, base: str, names: Iterable[str]) -> dict[str, pl.DataFrame]:
    """Each file's rows with its ``tail_seq`` column, by name (files gone since the listing skipped)."""
    frames = {}
    for n in names:
        data = lfs.read_bytes_or_none(f"{base}/{n}")
        if data is None:
            # Deleted since the listing (only where files cannot be retired): it was compacted at
            # least grace_s ago, so its rows are in the partitions the caller reads.
            continue
        try:
            frames[n] = _frame(data, n)
        except pl.exceptions.PolarsError as exc:
            raise DataError(
                f"unreadable tail file {base}/{n} ({exc}); nothing was changed: move the file away "
                "and run lake live or lake backfill again to refetch its candles"
            ) from exc
    return frames


def _seq_of(df: pl.DataFrame) -> int:
    return int(df[SEQ][0]) if df.height else -1


def _newest_last(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """The rows of several tail files, one per (symbol, candle_begin_time): the highest
    ``tail_seq`` wins (then the later name, as the files were given in name order)."""
    frames = list(frames)
    if not frames:
        return pl.DataFrame(schema=TAIL_SCHEMA)
    df = pl.concat(frames, how="vertical").sort(SEQ, maintain_order=True)
    return df.unique(_KEY, keep="last", maintain_order=True).sort(_KEY).select(list(TAIL_SCHEMA))


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
    settled: set[str] = set()
    if names is None:
        # the record before the listing: a file compacted in between is read, which is harmless
        cutoff = time.time() - SETTLED_S
        settled = {k for k, t in _load_state(lfs, base).items() if t <= cutoff}
        names = tail_files(lfs, trade_type, interval)
    frames = [
        df for n, df in _read_files(lfs, base, names).items() if _state_key(n, _seq_of(df)) not in settled
    ]
    df = _newest_last(frames)
    if symbols is not None:
        df = df.filter(pl.col("symbol").is_in(list(symbols)))
    return df


@dataclass
class CompactResult:
    """What one ``compact_tail`` did."""

    files_compacted: int = 0
    rows: int = 0
    symbols: list[str] = field(default_factory=list)
    files_retired: int = 0  # compacted files emptied for reuse (or deleted where that is not possible)
    failed: dict[str, str] = field(default_factory=dict)  # symbol → error (its files are kept)


def _state_key(name: str, seq: int) -> str:
    return f"{name}#{seq}"


def _load_state(lfs: LakeFS, base: str) -> dict[str, float]:
    """{"<name>#<tail_seq>": unix time compacted}; an older record's bare names get their seq."""
    data = lfs.read_bytes_or_none(f"{base}/{_STATE}")
    if data is None:
        return {}
    try:
        state = json.loads(data)
    except ValueError:
        return {}  # a lost state only means compacting some files again (an upsert, a no-op)
    if not isinstance(state, dict):
        return {}
    return {(k if "#" in k else _state_key(k, _name_seq(k))): float(v) for k, v in state.items()}


def upgrade_tail(root: Root, trade_type: str, interval: str) -> int:
    """Give tail files written before tail files had a ``tail_seq`` column that column (from their
    name), so the ``klines_tail`` view can read them; how many were rewritten. Local lakes only:
    on an object store such files are left as they are."""
    lfs = _lfs(root)
    if not lfs.is_local:
        return 0
    base = tail_dir(trade_type, interval)
    try:
        if SEQ in pq.read_schema(lfs.full(f"{base}/{EMPTY_FILE}")).names:
            return 0  # written or upgraded by this version (the marker is upgraded last)
    except (OSError, pa.ArrowException):
        return 0  # no marker: written by this version (older ones made it first); damaged: readers say
    done = 0
    for n in tail_files(lfs, trade_type, interval):
        try:
            names = pq.read_schema(lfs.full(f"{base}/{n}")).names
        except (OSError, pa.ArrowException):
            continue  # gone, or damaged (reported by the readers)
        if SEQ in names:
            continue
        with lfs.lock(f"{base}/compact"):
            data = lfs.read_bytes_or_none(f"{base}/{n}")
            if data is None or SEQ in pq.read_schema(io.BytesIO(data)).names:
                continue
            lfs.write_atomic(f"{base}/{n}", _encode(_frame(data, n)))
            done += 1
    lfs.write_atomic(f"{base}/{EMPTY_FILE}", _stub())  # zero rows: nothing to tear
    return done + 1


def _retire(lfs: LakeFS, base: str, name: str, seq: int) -> bool:
    """Turn the compacted file ``name`` into a stub (module doc) if it still holds the contents
    ``seq``, or delete it on an object store; whether it was retired."""
    rel = f"{base}/{name}"
    if not lfs.is_local:
        lfs.remove(rel)
        return True
    data = lfs.read_bytes_or_none(rel)
    if data is None or data.endswith(_stub_footer()):
        return False
    try:
        current = _seq_of(_frame(data, name))
    except pl.exceptions.PolarsError:
        return False  # damaged since: readers report it; keep it for the user to inspect
    if current != seq:
        return False  # refilled already (a crash between retiring and recording it): new candles
    lfs.retire_parquet(rel, data, _stub())
    return True


def compact_tail(
    root: Root,
    trade_type: str,
    interval: str,
    *,
    grace_s: float = 120.0,
    write: Callable[[str, pl.DataFrame], None] | None = None,
    now: Callable[[], float] = time.time,
) -> CompactResult:
    """Upsert every not-yet-compacted tail file into the partitions; retire files compacted long ago.

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
        frames = _read_files(lfs, base, tail_files(lfs, tt, iv))
        current = {_state_key(n, _seq_of(df)): df for n, df in frames.items()}
        state = {k: t for k, t in state.items() if k in current}  # forget retired contents
        todo = [k for k in current if k not in state]
        if todo:
            df = _newest_last(current[k] for k in todo)
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
                for k in todo:
                    state[k] = stamp
                out.files_compacted = len(todo)
        cutoff = now() - grace_s
        for k in [k for k, t in state.items() if t <= cutoff]:
            name, seq = k.rsplit("#", 1)
            if _retire(lfs, base, name, int(seq)):
                out.files_retired += 1
            del state[k]
        lfs.write_atomic(f"{base}/{_STATE}", json.dumps(state, sort_keys=True).encode())
        if lfs.is_local:
            _trim_stubs(lfs, base)
    return out


def _trim_stubs(lfs: LakeFS, base: str) -> None:
    """Delete stubs beyond ``MAX_STUBS`` (a burst of catch-up files would otherwise leave hundreds
    of empty files for every query to open); the newest names go first."""
    try:
        with lfs.lock(f"{base}/stubs", timeout=5.0):
            stubs = [n for n, is_stub, _ in _entries(lfs, base) if is_stub]
            for n in stubs[MAX_STUBS:]:
                lfs.remove(f"{base}/{n}")
    except LockTimeoutError:
        pass  # writers busy with stubs: the next compaction trims
