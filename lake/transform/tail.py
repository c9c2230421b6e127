"""The offsets *tail*: the recent bins of many series in a few immutable files.

Appending a day to 300 symbols changes the last bins of 3,600 (offset, symbol) series. Rewriting a
yearly file per series, or even one small file per series, costs per file (an encode, a file
creation: 3,600 of them). So an incremental run writes its recomputed bins, of every symbol and
offset at once, as **one** new file, and only about once a month are they folded into the period
files (docs/offsets.md, "Incremental"):

    offsets_tail/trade_type=<tt>/interval=<T>/<version>.parquet     version: <ns:020d>-<pid>-<rand>

A tail file is never rewritten; a later version wins. For every symbol it mentions it holds

* a **layer**: a *coverage* row (``offset`` null, ``tail_from`` = the layer's start t0) and every bin
  of that symbol, of every offset of its series, opening at or after t0: "from t0 on, these are all
  the bins" (a bin missing from a layer does not exist, which is how a deleted bin disappears); and/or
* a **fold marker** (``offset`` and ``tail_from`` null): "the rows of this symbol in every *older*
  tail file are in the period files now".

Visibility, per (trade type, interval, symbol) — the same rule in ``TailState`` and in
``sql/offsets_tail.sql``: the *live* layers are those in files not older than the symbol's newest
marker; a live layer's bins count before its *cut*, the earliest start of any newer live layer. The
period files hold the bins before the earliest live layer start (writers keep it so: a run either
adds a layer that starts after every stored bin, or folds the symbol's tail into its period files
and then writes a marker). So every bin is in exactly one place, and the newest version wins.

Row group 0 of a file holds its coverage and marker rows, the bins follow, so a writer learns a
file's coverage from its footer and a few kilobytes. Layers are merged as they accumulate (the
newest files while no larger than what is being written, as a binary counter: at most about
log2(runs) files), and a file whose rows are all hidden by newer ones is taken out ``grace_s`` after
it became hidden, so a query that listed it a moment before can still read it: on a local disk it is
retired in place (zero rows; ``cleanup``), on an object store deleted.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_trade_type
from lake.errors import DataError
from lake.schema import OFFSET_SCHEMA
from lake.store.fs import LakeFS
from lake.store.schema_files import empty_table

__all__ = [
    "BIN_SCHEMA",
    "EMPTY_FILE",
    "GRACE_S",
    "KEEP_STUBS",
    "MAX_STUBS",
    "TAIL_TABLE",
    "Layer",
    "TailState",
    "arrow_column",
    "cleanup",
    "ensure_tail",
    "load_state",
    "new_name",
    "numpy_frame",
    "read_layer",
    "resolve",
    "tail_dir",
    "write_layer",
    "write_markers",
]

TAIL_TABLE = "offsets_tail"
EMPTY_FILE = "_empty.parquet"
GRACE_S = 120.0
MAX_STUBS = 64  # retired (zero-row) tail files kept per directory before a batch is deleted
KEEP_STUBS = 16  # ... down to this many
_TIME = pl.Datetime("ms", "UTC")
# the bins of a layer: series keys and the offsets columns
BIN_SCHEMA: dict[str, pl.DataType] = {"symbol": pl.String(), "offset": pl.String(), **OFFSET_SCHEMA}
_ARROW_TIME = pa.timestamp("ms", "UTC")
_ARROW_SCHEMA = pa.schema(
    [
        # large_string: the type Polars exports, so tables need no cast (whose pyarrow.compute import
        # took ~50 ms of a 0.45 s incremental run); the file's column type is the same as string's
        pa.field("symbol", pa.large_string(), nullable=False),
        pa.field("offset", pa.large_string()),
        *(
            pa.field(
                c,
                _ARROW_TIME if c == "candle_begin_time" else pa.int64() if t == pl.Int64() else pa.float64(),
            )
            for c, t in OFFSET_SCHEMA.items()
        ),
        pa.field("tail_from", _ARROW_TIME),
    ]
)
# Times and counts delta-packed, floats plain, nothing compressed, statistics on the symbol, time
# and tail_from columns only (a file of more than one row group is ordered by symbol; a filter on
# offset reads them all, as it would anyway): a day of bins of 300 symbols (86,400 rows) is 6.0 MB encoded in
# 6–10 ms (15–25 ms the first time in a process). LZ4 on the floats saved 15% of the bytes for twice the time, and statistics on every
# column cost 4–5 ms more (bench lake, 2026-11-23); the period files' byte-stream-split took ~34 ms.
_INTS = ("candle_begin_time", "trade_num", "n_base", "tail_from")
_ENCODINGS = {
    f.name: "DELTA_BINARY_PACKED" if f.name in _INTS else "PLAIN"
    for f in _ARROW_SCHEMA
    if f.name not in ("symbol", "offset")
}
_STATISTICS = ["symbol", "candle_begin_time", "tail_from"]
_ROW_GROUP = 1 << 17  # bins per row group: a reader of a few symbols skips the others


def tail_dir(trade_type: str, interval: str) -> str:
    """``offsets_tail/trade_type=<tt>/interval=<T>``, validated."""
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    return f"{TAIL_TABLE}/trade_type={tt.name}/interval={iv.name}"


def arrow_column(values: np.ndarray, kind: pa.DataType | None = None) -> pa.Array:
    """A numpy column without nulls as Arrow without a copy (``pa.array`` would import pandas,
    ~0.3 s): as int64/float64, or as ``kind``, a fixed-width type of the array's item size."""
    values = np.ascontiguousarray(values)
    if kind is None:
        kind = pa.int64() if values.dtype.kind in "iu" else pa.float64()
        values = values.astype(np.int64 if kind == pa.int64() else np.float64, copy=False)
    elif kind.bit_width != 8 * values.dtype.itemsize:
        raise ValueError(f"{values.dtype} values are not {kind}")
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def numpy_frame(columns: dict[str, np.ndarray], kinds: dict[str, pa.DataType] | None = None) -> pl.DataFrame:
    """NumPy columns without nulls as a Polars frame (``arrow_column``: int64 and float64 columns
    are not copied; ``kinds``: the Arrow type of some of them). Through an Arrow *table*: a Series from NumPy imports
    ``numpy.ma`` and one from an Arrow array ``pyarrow.compute`` (7–12 and ~40 ms, once per process:
    an appended day's offsets run takes ~0.25 s)."""
    kinds = kinds or {}
    arrays = [arrow_column(v, kinds.get(c)) for c, v in columns.items()]
    return pl.DataFrame(pl.from_arrow(pa.Table.from_arrays(arrays, list(columns))))


@dataclass
class Layer:
    """Tail content in memory: coverage starts (ms) and fold markers by symbol, and the bins."""

    cover: dict[str, int] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)
    bins: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=BIN_SCHEMA))

    def __bool__(self) -> bool:
        return bool(self.cover or self.marked)


def merge(older: Layer, newer: Layer) -> Layer:
    """One layer with the visible content of ``older`` under ``newer`` (the newer one wins)."""
    cover: dict[str, int] = {}
    cut: dict[str, int | None] = {}  # older bins of a symbol count before this (None: all of them)
    for s, f in older.cover.items():
        if s in newer.marked:
            continue  # folded since: the period files hold them
        g = newer.cover.get(s)
        cover[s] = f if g is None else min(f, g)
        cut[s] = g
    for s, g in newer.cover.items():
        cover.setdefault(s, g)
    kept = older.bins
    if cut:
        cuts = pl.DataFrame(
            {"symbol": list(cut), "_cut": list(cut.values())},
            schema={"symbol": pl.String(), "_cut": pl.Int64()},
        )
        t = pl.col("candle_begin_time").dt.epoch("ms")
        kept = (
            kept.join(cuts, on="symbol", how="inner")
            .filter(pl.col("_cut").is_null() | (t < pl.col("_cut")))
            .drop("_cut")
        )
    else:
        kept = kept.clear()
    bins = pl.concat([kept, newer.bins]) if kept.height else newer.bins
    return Layer(cover, older.marked | newer.marked, bins)


def _meta_table(layer: Layer) -> pa.Table:
    symbols: list[str] = []
    starts: list[int | None] = []
    for s in sorted(layer.cover.keys() | layer.marked):
        if s in layer.marked:  # the marker first: it concerns older files only
            symbols.append(s)
            starts.append(None)
        if s in layer.cover:
            symbols.append(s)
            starts.append(layer.cover[s])
    df = pl.DataFrame(
        {"symbol": symbols, "tail_from": starts}, schema={"symbol": pl.String(), "tail_from": pl.Int64()}
    ).select(
        "symbol",
        *(pl.lit(None, t).alias(c) for c, t in BIN_SCHEMA.items() if c != "symbol"),
        pl.col("tail_from").cast(_TIME),
    )
    return _file_table(df.to_arrow())


def _bins_table(bins: pl.DataFrame) -> pa.Table:
    t = bins.select(list(BIN_SCHEMA)).to_arrow()
    return _file_table(t.append_column("tail_from", pa.nulls(t.num_rows, _ARROW_TIME)))


def _file_table(t: pa.Table) -> pa.Table:
    """``t`` (columns of ``_ARROW_SCHEMA``'s types, in its order) under ``_ARROW_SCHEMA``."""
    if t.column_names != _ARROW_SCHEMA.names:  # from_arrays matches by position, not by name
        raise AssertionError(f"tail columns out of order: {t.column_names}")
    return pa.Table.from_arrays(t.columns, schema=_ARROW_SCHEMA)


def encode(layer: Layer) -> memoryview:
    """A tail file: coverage and marker rows in row group 0, then the bins (ordered by symbol when
    they fill more than one row group). A view of the encoder's buffer (a day's file is ~6 MB: no
    copy into a ``bytes``)."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(
        sink,
        _ARROW_SCHEMA,
        compression="none",
        use_dictionary=["symbol", "offset"],
        column_encoding=_ENCODINGS,
        write_statistics=_STATISTICS,
        store_schema=False,
    ) as writer:
        writer.write_table(_meta_table(layer))
        if layer.bins.height:
            bins = layer.bins
            if bins.height > _ROW_GROUP:  # ordered by symbol, a reader of some symbols skips row groups
                bins = bins.sort("symbol", "offset", "candle_begin_time")
            writer.write_table(_bins_table(bins), row_group_size=_ROW_GROUP)
    return memoryview(sink.getvalue()).cast("B").toreadonly()


@functools.cache
def _empty_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(empty_table(_ARROW_SCHEMA), sink, store_schema=False)
    return bytes(sink.getvalue().to_pybytes())


def ensure_tail(lfs: LakeFS, trade_type: str, interval: str) -> bool:
    """Create the tail directory with its zero-row file, so that a DuckDB connection opened before
    the first tail file includes the tail in its ``offsets`` view; whether it was created."""
    rel = f"{tail_dir(trade_type, interval)}/{EMPTY_FILE}"
    if lfs.exists(rel):
        return False
    lfs.write_atomic(rel, _empty_bytes())
    return True


# -- the state of a tail ------------------------------------------------------------------------


@dataclass
class TailState:
    """Which rows of which tail files are visible, from the files' coverage and marker rows.

    ``starts``: symbol → start (ms) of its tail, the earliest live layer start; the period files
    hold that symbol's bins before it. ``live``: per file index, symbol → (layer start, cut or
    ``None``) for the layers with visible bins. ``hidden``: per file index, the time (ns) since
    which none of its rows is visible or needed, or ``None``.
    """

    directory: str
    names: list[str]
    metas: list[list[tuple[str, int | None]]]  # coverage (symbol, start) and marker (symbol, None) rows
    bins: list[int]  # bin rows per file
    starts: dict[str, int]
    live: list[dict[str, tuple[int, int | None]]]
    hidden: list[int | None]

    def path(self, i: int) -> str:
        return f"{self.directory}/{self.names[i]}"

    def read_bins(
        self,
        lfs: LakeFS,
        symbols: Iterable[str] | None = None,
        offsets: Iterable[str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> pl.DataFrame:
        """The visible tail bins (``BIN_SCHEMA``), optionally of some symbols, offsets and opening
        in ``[start_ms, end_ms)``; ordered by symbol, offset, time."""
        want = None if symbols is None else set(symbols)
        frames = []
        for i, live in enumerate(self.live):
            cuts = {s: c for s, (_, c) in live.items() if want is None or s in want}
            if not cuts:
                continue
            cond = pl.col("offset").is_not_null() & pl.col("symbol").is_in(list(cuts))
            if offsets is not None:
                cond &= pl.col("offset").is_in(list(offsets))
            t = pl.col("candle_begin_time").dt.epoch("ms")
            if start_ms is not None:
                cond &= t >= start_ms
            if end_ms is not None:
                cond &= t < end_ms
            df = _read_rows(lfs, self.path(i), cond)
            if df is None:  # deleted since listed: hidden for longer than the grace time
                continue
            bounded = {s: c for s, c in cuts.items() if c is not None}
            if bounded:
                cut = pl.DataFrame(
                    {"symbol": list(bounded), "_cut": list(bounded.values())},
                    schema={"symbol": pl.String(), "_cut": pl.Int64()},
                )
                df = (
                    df.join(cut, on="symbol", how="left")
                    .filter(pl.col("_cut").is_null() | (t < pl.col("_cut")))
                    .drop("_cut")
                )
            frames.append(df)
        if not frames:
            return pl.DataFrame(schema=BIN_SCHEMA)
        out = pl.concat(frames) if len(frames) > 1 else frames[0]
        return out.sort("symbol", "offset", "candle_begin_time")


def _read_rows(lfs: LakeFS, rel: str, cond: pl.Expr) -> pl.DataFrame | None:
    # a lazy scan: row groups of other symbols (the bins are ordered by symbol) are skipped
    try:
        lf = pl.scan_parquet(lfs.url(rel), glob=False, storage_options=lfs.storage_options or None)
        return lf.filter(cond).select([pl.col(c).cast(t) for c, t in BIN_SCHEMA.items()]).collect()
    except FileNotFoundError:
        return None
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(rel, exc) from exc


def _unreadable(rel: str, exc: Exception) -> DataError:
    return DataError(
        f"unreadable offsets tail file {rel} ({exc}); nothing was changed: move it away and run "
        "lake offsets with --rebuild for the table's symbols to recompute their recent bins"
    )


def _read_meta(lfs: LakeFS, rel: str) -> tuple[list[tuple[str, int | None]], int] | None:
    """Coverage and marker rows (symbol, start ms or ``None`` for a marker) and the number of bin
    rows of one tail file, from its footer and row group 0; ``None`` if it is gone."""
    try:
        with lfs.fs.open(lfs.full(rel), "rb") as f:
            # Read on this thread only (no pre_buffer, no use_threads): otherwise Arrow's IO and CPU
            # pools read and decode this Python file, and a pool thread may drop the last reference
            # to a buffer read from it (a PyBuffer, whose release takes the GIL) after the read
            # returned; when that happens late, during interpreter exit, the process aborts
            # ("terminate called without an active exception", exit 134 after a successful
            # `lake offsets`: about 1 run in 100, 1 in 10 on a loaded machine)
            pf = pq.ParquetFile(f, pre_buffer=False)
            total = pf.metadata.num_rows
            if pf.metadata.num_row_groups == 0:
                return [], 0
            t = pf.read_row_group(0, columns=["symbol", "offset", "tail_from"], use_threads=False)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _unreadable(rel, exc) from exc
    syms = t.column("symbol").to_pylist()
    offs = t.column("offset").to_pylist()
    froms = [v for c in t.column("tail_from").chunks for v in c.view(pa.int64()).to_pylist()]
    meta = [(s, f) for s, o, f in zip(syms, offs, froms, strict=True) if o is None]
    return meta, total - len(meta)


def list_files(lfs: LakeFS, trade_type: str, interval: str) -> list[str]:
    """Names of the tail files, oldest first (the zero-row file excluded)."""
    return [
        n for n in lfs.listdir(tail_dir(trade_type, interval)) if n.endswith(".parquet") and n[:1].isdigit()
    ]


def load_state(lfs: LakeFS, trade_type: str, interval: str) -> TailState:
    """The tail of (``trade_type``, ``interval``) as it is now. An unreadable file is a ``DataError``."""
    directory = tail_dir(trade_type, interval)
    names, metas, counts = [], [], []
    for n in list_files(lfs, trade_type, interval):
        got = _read_meta(lfs, f"{directory}/{n}")
        if got is not None:
            names.append(n)
            metas.append(got[0])
            counts.append(got[1])
    return resolve(directory, names, metas, counts)


def version_ns(name: str) -> int:
    return int(name[:20])


def resolve(
    directory: str, names: list[str], metas: Sequence[Sequence[tuple[str, int | None]]], counts: list[int]
) -> TailState:
    """Apply the visibility rule (module docstring) to the coverage and marker rows of each file.

    ``names`` oldest first (``list_files``' order: a name starts with its version time), so the
    *nearest* newer file that hides a row is also the earliest version to: one binary search per
    row, O(r log r) for r rows. Looking at every newer file of the symbol instead (O(r²)) took 70-90
    ms at 100 files of 300 symbols and 7-10 s at 1000, this 20-25 ms and 0.25-0.4 s
    (``bench.tail_resolve``): every offsets build and live offsets run resolves its tail.
    """
    times = [version_ns(n) for n in names]
    if any(a > b for a, b in itertools.pairwise(times)):
        raise ValueError(f"tail files of {directory} out of version order")
    by_symbol: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    for i, meta in enumerate(metas):
        for s, f in meta:
            markers, covers = by_symbol.setdefault(s, ([], []))
            if f is None:
                markers.append(i)  # (ascending: files are visited in order)
            else:
                covers.append((i, f))
    live: list[dict[str, tuple[int, int | None]]] = [{} for _ in names]
    # per file, when each of its rows stopped mattering (None: never yet); a file without rows is moot
    killed: list[list[int | None]] = [[] for _ in names]
    starts: dict[str, int] = {}
    for s, (markers, covers) in by_symbol.items():
        last_marker = markers[-1] if markers else -1
        alive = [(i, f) for i, f in covers if i >= last_marker]
        cut: int | None = None
        for i, f in sorted(alive, reverse=True):  # newest first: cut = earliest newer start
            if cut is None or cut > f:
                live[i][s] = (f, cut)
            cut = f if cut is None else min(cut, f)
        if cut is not None:
            starts[s] = cut
        # a layer is hidden by the next newer marker or newer layer starting no later than it
        for (i, _), j in zip(covers, _covering_layers(covers), strict=True):
            m = bisect.bisect_right(markers, i)
            if m < len(markers):
                j = markers[m] if j is None else min(j, markers[m])
            killed[i].append(None if j is None else times[j])
        # a marker is needed until a newer marker takes over, or from the start if no older layer
        # of its symbol is there to hide
        oldest_layer = covers[0][0] if covers else None
        for i in markers:
            m = bisect.bisect_right(markers, i)
            if m < len(markers):
                killed[i].append(times[markers[m]])
            elif oldest_layer is None or oldest_layer >= i:
                killed[i].append(times[i])
            else:
                killed[i].append(None)
    hidden: list[int | None] = []
    for i, ks in enumerate(killed):
        if not ks:
            hidden.append(times[i])
        elif any(k is None for k in ks):
            hidden.append(None)
        else:
            hidden.append(max(k for k in ks if k is not None))
    return TailState(directory, list(names), [list(m) for m in metas], list(counts), starts, live, hidden)


def _covering_layers(covers: Sequence[tuple[int, int]]) -> list[int | None]:
    """For each layer ``(file, start)`` of one symbol (files ascending), the nearest newer file with
    a layer starting no later (``None``: there is none).

    Newest first, with a stack of the layers a future (older) one may find: nearest on top, starts
    never increasing downwards, since a layer that is farther and starts later than another is never
    the answer. Layers of one file do not hide each other, so each file's layers query the stack
    before any of them is pushed; a query is a binary search, as it must not pop what a sibling of
    the same file may still find."""
    out: list[int | None] = [None] * len(covers)
    files: list[int] = []  # the stack, bottom first: files, and their starts (ascending)
    froms: list[int] = []
    k = len(covers)
    while k:
        i = covers[k - 1][0]
        first = k - 1
        while first and covers[first - 1][0] == i:
            first -= 1
        for q in range(first, k):
            pos = bisect.bisect_right(froms, covers[q][1])
            out[q] = files[pos - 1] if pos else None
        for q in range(first, k):
            f = covers[q][1]
            pos = bisect.bisect_right(froms, f)  # (above it: farther than this one and starting later)
            del files[pos:], froms[pos:]
            files.append(i)
            froms.append(f)
        k = first
    return out


# -- writing ------------------------------------------------------------------------------------


def new_name(after: Iterable[str]) -> str:
    """A new tail file name, later than every name in ``after`` whatever the clock does (names order
    the versions)."""
    ns = max(time.time_ns(), max((version_ns(n) + 1 for n in after), default=0))
    return f"{ns:020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet"


def read_layer(lfs: LakeFS, rel: str) -> Layer | None:
    """Everything in one tail file, or ``None`` if it is gone."""
    try:
        data = lfs.read_bytes(rel)
    except FileNotFoundError:
        return None
    try:
        df = pl.read_parquet(data)
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(rel, exc) from exc
    meta = df.filter(pl.col("offset").is_null())
    cover: dict[str, int] = {}
    marked: set[str] = set()
    for s, f in zip(meta["symbol"].to_list(), meta["tail_from"].dt.epoch("ms").to_list(), strict=True):
        if f is None:
            marked.add(s)
        else:
            cover[s] = f
    bins = df.filter(pl.col("offset").is_not_null()).select(
        [pl.col(c).cast(t) for c, t in BIN_SCHEMA.items()]
    )
    return Layer(cover, marked, bins)


def write_layer(lfs: LakeFS, state: TailState, layer: Layer) -> tuple[str, int]:
    """Write ``layer`` as a new tail file, merged with the newest live files while each is no larger
    than what is being written (so a run's small layer is usually written alone, and the number of
    files stays about log2 of the runs since the last fold); returns the new file and how many
    files it absorbed (hidden from now on)."""
    acc = layer
    absorbed = 0
    for i in range(len(state.names) - 1, -1, -1):
        if state.hidden[i] is not None:
            continue
        if state.bins[i] > acc.bins.height:
            break
        older = read_layer(lfs, state.path(i))
        if older is None:
            continue
        acc = merge(older, acc)
        absorbed += 1
    name = new_name(state.names)
    lfs.write_atomic(f"{state.directory}/{name}", encode(acc))
    return name, absorbed


def write_markers(lfs: LakeFS, directory: str, after: Iterable[str], symbols: Iterable[str]) -> str:
    """A file of fold markers, named after ``after``: the older tail rows of ``symbols`` are in the
    period files now."""
    name = new_name(after)
    lfs.write_atomic(f"{directory}/{name}", encode(Layer(marked=set(symbols))))
    return name


def cleanup(lfs: LakeFS, state: TailState, grace_s: float = GRACE_S, now_ns: int | None = None) -> int:
    """Take out the tail files hidden for at least ``grace_s``; how many were taken out. (A marker
    is needed while an older layer of its symbol exists, so taking out layers can free markers too.)

    On a local disk a file is *retired*, not deleted: it becomes a zero-row file of the same name
    that keeps the old pages at their offsets (``LakeFS.retire_parquet``). A query lists the tail
    files when it starts and opens them later; a file deleted in between fails it ("No such file"),
    while a retired one gives it the old pages at their offsets or no rows. Retired files are deleted in one batch once more than
    ``MAX_STUBS`` are there (down to ``KEEP_STUBS``): one such race per batch instead of one per
    file. On an object store hidden files are deleted.
    """
    now = time.time_ns() if now_ns is None else now_ns
    stubs = [n for n, m, b in zip(state.names, state.metas, state.bins, strict=True) if not m and not b]
    if stubs:  # (already without rows: out of the rule, kept only for readers)
        retired = set(stubs)
        state = _subset(state, [i for i, n in enumerate(state.names) if n not in retired])
    removed = 0
    while True:
        gone = [i for i, t in enumerate(state.hidden) if t is not None and now - t >= grace_s * 1e9]
        if not gone:
            break
        for i in gone:
            if lfs.is_local and _retire(lfs, state.path(i)):
                stubs.append(state.names[i])
            else:
                lfs.remove(state.path(i))
        removed += len(gone)
        out = set(gone)
        state = _subset(state, [i for i in range(len(state.names)) if i not in out])
    if len(stubs) > MAX_STUBS:
        for n in sorted(stubs)[: len(stubs) - KEEP_STUBS]:
            lfs.remove(f"{state.directory}/{n}")
    return removed


def _subset(state: TailState, keep: list[int]) -> TailState:
    return resolve(
        state.directory,
        [state.names[i] for i in keep],
        [state.metas[i] for i in keep],
        [state.bins[i] for i in keep],
    )


def _retire(lfs: LakeFS, rel: str) -> bool:
    """Retire a tail file in place (see ``cleanup``); False if it is gone."""
    data = lfs.read_bytes_or_none(rel)
    if data is None:
        return False
    lfs.retire_parquet(rel, data, _empty_bytes())
    return True
