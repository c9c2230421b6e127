"""A small parquet writer for one kline partition: plain pages, written from NumPy.

Why: a 1m day file holds 1,440 rows, and the archive ingest writes one per day (6,776 files for 20
symbols × a year). pyarrow's writer costs ~0.5 ms per such file, ~0.2 ms of it fixed (column writers,
encoders, metadata objects built per file); that was as much CPU as parsing the archive's CSV. This
writer emits the same logical file (the kline schema, optional columns, INT64 timestamps in ms with
the UTC-adjusted timestamp type, DOUBLE, BYTE_ARRAY strings, min/max statistics for every column,
LZ4_RAW pages) directly: every column is PLAIN data pages (the bytes of its NumPy array), the
``source`` column one dictionary page plus RLE indices, and the footer is serialized with the Thrift
compact protocol by the few functions below. It costs a small fraction of pyarrow's time per file.

Only what it supports is encoded here (``encode_plain`` returns ``None`` otherwise and the caller uses
pyarrow): exactly the kline columns with their dtypes, no nulls, at least one row. The format follows
the Apache Parquet specification (parquet.thrift); the tests read its files back with pyarrow, Polars
and DuckDB and compare data and statistics with pyarrow's own files.

Layout of a file::

    PAR1 | per column: [dictionary page] data page(s) | FileMetaData (Thrift compact) | u32 length | PAR1

A file can carry the fingerprints of its rows' UTC days in its key-value metadata
(``lake.store.dayprints``; the klines store asks for them in partitions longer than a day, and by
default a file spanning several days gets them). It stays one row group: a second one holding a
month file's last two days made full scans of the lake 12–18% slower in Polars and DuckDB (2026-11-23,
BENCHMARKS.md). Instead, in a file spanning more than two days each numeric column is two data
pages, the second from the first candle of the day before the last day (``tail_cut``): an offsets
build following an appended day inflates only those (``lake.store.plain_read``). Full scans pay a few
percent for such files (``bench/page_split.py``, all files split: best of rounds Polars +1–4%, DuckDB
+2–8%), so a partition written whole with its period's last day (history from the archive or a
backfill, most of a lake) stays one page: the split is for the partitions days are appended to.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from lake.binance.intervals import MS_PER_DAY
from lake.schema import KLINE_SCHEMA
from lake.store.dayprints import META_KEY, checked, partition_prints, row_hashes
from lake.store.thrift_bytes import footer_bytes as _footer_bytes
from lake.store.thrift_bytes import varint as _varint
from lake.store.thrift_bytes import zigzag as _zz

__all__ = [
    "CREATED_BY",
    "PlainKlines",
    "chunk_head",
    "def_levels",
    "encode_plain",
    "footer_prints",
    "tail_cut",
]

_MAGIC = b"PAR1"
CREATED_BY = "lake plain kline writer (parquet format 2.6)"

# parquet.thrift enums
_INT64, _DOUBLE, _BYTE_ARRAY = 2, 5, 6
_OPTIONAL, _REQUIRED = 1, 0
_PLAIN, _RLE, _RLE_DICTIONARY = 0, 3, 8
_DATA_PAGE, _DICTIONARY_PAGE = 0, 2
_UNCOMPRESSED, _LZ4_RAW = 0, 7
_UTF8, _TIMESTAMP_MILLIS = 0, 9

# Thrift compact protocol field types
_T_TRUE, _T_FALSE, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 1, 2, 5, 6, 8, 9, 12

_LZ4 = pa.Codec("lz4_raw")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")


class _Struct:
    """Serializes one Thrift struct in the compact protocol: fields must be added in id order."""

    __slots__ = ("buf", "last")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.last = 0

    def _head(self, fid: int, ttype: int) -> None:
        delta = fid - self.last
        if 0 < delta <= 15:
            self.buf.append((delta << 4) | ttype)
        else:
            self.buf.append(ttype)
            self.buf += _zz(fid)
        self.last = fid

    def i32(self, fid: int, v: int) -> _Struct:
        self._head(fid, _T_I32)
        self.buf += _zz(v)
        return self

    def i64(self, fid: int, v: int) -> _Struct:
        self._head(fid, _T_I64)
        self.buf += _zz(v)
        return self

    def boolean(self, fid: int, v: bool) -> _Struct:
        self._head(fid, _T_TRUE if v else _T_FALSE)
        return self

    def binary(self, fid: int, v: bytes) -> _Struct:
        self._head(fid, _T_BINARY)
        self.buf += _varint(len(v))
        self.buf += v
        return self

    def struct(self, fid: int, v: _Struct) -> _Struct:
        self._head(fid, _T_STRUCT)
        self.buf += v.end()
        return self

    def _list(self, fid: int, etype: int, n: int) -> None:
        self._head(fid, _T_LIST)
        if n < 15:
            self.buf.append((n << 4) | etype)
        else:
            self.buf.append(0xF0 | etype)
            self.buf += _varint(n)

    def list_i32(self, fid: int, vs: list[int]) -> _Struct:
        self._list(fid, _T_I32, len(vs))
        for v in vs:
            self.buf += _zz(v)
        return self

    def list_binary(self, fid: int, vs: list[bytes]) -> _Struct:
        self._list(fid, _T_BINARY, len(vs))
        for v in vs:
            self.buf += _varint(len(v))
            self.buf += v
        return self

    def list_struct(self, fid: int, vs: list[bytes]) -> _Struct:
        """A list of already serialized structs."""
        self._list(fid, _T_STRUCT, len(vs))
        for v in vs:
            self.buf += v
        return self

    def end(self) -> bytes:
        return bytes(self.buf) + b"\x00"


# -- the schema (constant) ----------------------------------------------------------------------


def _schema_elements() -> list[bytes]:
    root = _Struct().binary(4, b"schema").i32(5, len(KLINE_SCHEMA)).end()
    out = [root]
    for name, dtype in KLINE_SCHEMA.items():
        el = _Struct()
        if dtype == pl.Float64:
            el.i32(1, _DOUBLE).i32(3, _OPTIONAL).binary(4, name.encode())
        elif dtype == pl.Int64:
            el.i32(1, _INT64).i32(3, _OPTIONAL).binary(4, name.encode())
        elif dtype == pl.Datetime("ms", "UTC"):
            # logicalType TIMESTAMP (field 8 of the union) {isAdjustedToUTC: true, unit: MILLIS {}}
            unit = _Struct().struct(1, _Struct())
            ts = _Struct().boolean(1, True).struct(2, unit)
            el.i32(1, _INT64).i32(3, _OPTIONAL).binary(4, name.encode()).i32(6, _TIMESTAMP_MILLIS)
            el.struct(10, _Struct().struct(8, ts))
        elif dtype == pl.String:
            # logicalType STRING (field 1 of the union)
            el.i32(1, _BYTE_ARRAY).i32(3, _OPTIONAL).binary(4, name.encode()).i32(6, _UTF8)
            el.struct(10, _Struct().struct(1, _Struct()))
        else:  # pragma: no cover - the kline schema has only these types
            raise TypeError(f"unsupported kline column type {dtype}")
        out.append(el.end())
    return out


_SCHEMA = _schema_elements()
_COLUMNS = list(KLINE_SCHEMA.items())
_NAMES = [c for c, _ in _COLUMNS]
_DTYPES = [t for _, t in _COLUMNS]
_STRING, _FLOAT, _INT = 0, 1, 2
# (name, kind) per column: compared as ints in the per-file loop (a Polars dtype comparison is ~1 µs)
_KINDS = [(c, _STRING if t == pl.String else _FLOAT if t == pl.Float64 else _INT) for c, t in _COLUMNS]
# ColumnOrder is a union whose field 1 is TypeDefinedOrder {}: min/max follow the type's order.
_COLUMN_ORDER = _Struct().struct(1, _Struct()).end()


# -- pages --------------------------------------------------------------------------------------


def def_levels(n: int) -> bytes:
    """Definition levels of ``n`` present values of an optional column: one RLE run of 1s, with the
    4-byte length prefix of a V1 data page."""
    run = _varint(n << 1) + b"\x01"
    return _U32.pack(len(run)) + run


def _rle_runs(idx: np.ndarray, bit_width: int) -> bytes:
    """Dictionary indices as RLE runs (the hybrid encoding with RLE runs only)."""
    width = (bit_width + 7) // 8
    cuts = np.flatnonzero(np.diff(idx)) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), len(idx)]
    out = bytearray()
    for a, b in zip(starts, ends, strict=True):
        out += _varint((b - a) << 1)
        out += int(idx[a]).to_bytes(width, "little")
    return bytes(out)


def _page_header(kind: int, raw: int, comp: int, n: int, encoding: int) -> bytes:
    """A PageHeader, assembled from compact-protocol bytes (it is written for every column of every
    file; ``_Struct`` builds the same bytes, which the tests check)::

        {1: type, 2: uncompressed_page_size, 3: compressed_page_size,
         5: DataPageHeader {1: num_values, 2: encoding, 3: RLE, 4: RLE}        (a data page)
         7: DictionaryPageHeader {1: num_values, 2: PLAIN}}                    (a dictionary page)

    A field header byte is (id delta << 4) | type: 0x15 an i32 one id on, 0x2C / 0x4C a struct two /
    four ids on; i32 values are zigzag varints (RLE = 3 is 0x06); 0x00 ends a struct."""
    head = b"".join((b"\x15", _zz(kind), b"\x15", _zz(raw), b"\x15", _zz(comp)))
    if kind == _DATA_PAGE:
        return b"".join((head, b"\x2c\x15", _zz(n), b"\x15", _zz(encoding), b"\x15\x06\x15\x06\x00\x00"))
    return b"".join((head, b"\x4c\x15", _zz(n), b"\x15\x00\x00\x00"))


def _page(kind: int, body: bytes, n: int, encoding: int) -> tuple[bytes, int]:
    """An uncompressed page: header and body; returns (bytes, the uncompressed size with the header)."""
    h = _page_header(kind, len(body), len(body), n, encoding)
    return h + body, len(h) + len(body)


def _value_pages(arr: np.ndarray, cuts: list[int], levels: bytes) -> tuple[bytes, int, int]:
    """The PLAIN data pages of one numeric column chunk, one per slice of ``arr`` between ``cuts``
    (``levels``: the definition levels of all of ``arr``, for a single page); returns (bytes, the
    uncompressed size with the headers, codec).

    The pages are LZ4_RAW-compressed when that saves at least 1/16 of them: prices and volumes
    shrink, random-looking doubles barely do, and a chunk stored plain reads without inflating (the
    codec is chosen per column chunk, so for all of its pages at once)."""
    if not cuts:  # one page: most files (a day of 1m), so without the loops below (~15% of a file)
        body = levels + arr.tobytes()
        packed = _LZ4.compress(body, asbytes=True)
        lz4 = len(packed) < len(body) - (len(body) >> 4)
        stored = packed if lz4 else body
        h = _page_header(_DATA_PAGE, len(body), len(stored), len(arr), _PLAIN)
        return h + stored, len(h) + len(body), _LZ4_RAW if lz4 else _UNCOMPRESSED
    bounds = [0, *cuts, len(arr)]
    bodies = [def_levels(b - a) + arr[a:b].tobytes() for a, b in itertools.pairwise(bounds)]
    raw = sum(len(b) for b in bodies)
    packed = [_LZ4.compress(b, asbytes=True) for b in bodies]
    lz4 = sum(len(p) for p in packed) < raw - (raw >> 4)
    out = bytearray()
    raw_total = 0
    for (a, b), body, data in zip(itertools.pairwise(bounds), bodies, packed, strict=True):
        stored = data if lz4 else body
        h = _page_header(_DATA_PAGE, len(body), len(stored), b - a, _PLAIN)
        out += h
        out += stored
        raw_total += len(h) + len(body)
    return bytes(out), raw_total, _LZ4_RAW if lz4 else _UNCOMPRESSED


def _chunk_tail(
    codec: int, n: int, raw: int, size: int, data_offset: int, dict_offset: int | None, lo: bytes, hi: bytes
) -> bytes:
    """The ColumnChunk bytes that follow its constant head (see ``_CHUNK_HEAD``): the rest of its
    ColumnMetaData, then the ends of both structs::

        4: codec (i32), 5: num_values, 6: total_uncompressed_size, 7: total_compressed_size,
        9: data_page_offset, [11: dictionary_page_offset] (i64),
        12: Statistics {3: null_count 0, 5: max_value, 6: min_value, 7: true, 8: true}
    """
    parts = [b"\x15", _zz(codec), b"\x16", _zz(n), b"\x16", _zz(raw), b"\x16", _zz(size)]
    parts += [b"\x26", _zz(data_offset)]
    if dict_offset is not None:
        parts += [b"\x26", _zz(dict_offset), b"\x1c"]
    else:
        parts.append(b"\x3c")
    parts += [b"\x36\x00\x28", _varint(len(hi)), hi, b"\x18", _varint(len(lo)), lo, b"\x11\x11\x00"]
    parts.append(b"\x00\x00")  # end of ColumnMetaData, end of ColumnChunk
    return b"".join(parts)


# -- the file -----------------------------------------------------------------------------------

_PHYSICAL = {
    name: _BYTE_ARRAY if dtype == pl.String else _DOUBLE if dtype == pl.Float64 else _INT64
    for name, dtype in _COLUMNS
}
# The constant head of each ColumnChunk: file_offset 0 (as pyarrow writes it: the field is
# deprecated, readers use the page offsets), then the start of its ColumnMetaData (field 3) with
# type, encodings and path (fields 1-3); ``_chunk_tail`` completes it.
_CHUNK_HEAD = {
    name: bytes(
        _Struct().i64(2, 0).buf
        + b"\x1c"
        + _Struct()
        .i32(1, _PHYSICAL[name])
        .list_i32(2, [_PLAIN, _RLE, _RLE_DICTIONARY] if dtype == pl.String else [_RLE, _PLAIN])
        .list_binary(3, [name.encode()])
        .buf
    )
    for name, dtype in _COLUMNS
}


def tail_cut(times: np.ndarray) -> list[int]:
    """Where a partition's numeric columns start their second data page: at the first row of the
    day before its last day, when the rows span more than two UTC days (else one page each).

    An offsets build that follows appended days reads a changed month from a few hours before its
    first changed day on (``lake.store.plain_read``); that second page is all it has to inflate
    instead of the month. Readers that scan everything decode one more page per column chunk."""
    if len(times) == 0:
        return []
    last_day = int(times[-1]) // MS_PER_DAY
    if int(times[0]) // MS_PER_DAY >= last_day - 1:
        return []
    if np.any(times[1:] <= times[:-1]):
        return []  # not as the store writes partitions: one page, which a reader checks whole
    return [int(np.searchsorted(times, (last_day - 1) * MS_PER_DAY, side="left"))]


def chunk_head(name: str) -> bytes:
    """The constant first bytes of column ``name``'s ColumnChunk in this writer's footers (what
    ``lake.store.plain_read`` finds its chunks by)."""
    return _CHUNK_HEAD[name]


class PlainKlines:
    """Kline rows prepared once (NumPy views of their columns, the ``source`` dictionary) so that
    slices of them are encoded cheaply: ``PlainKlines.of(df).encode(lo, n)``."""

    def __init__(
        self, frame: pl.DataFrame, arrays: dict[str, np.ndarray], words: list[bytes], codes: np.ndarray
    ) -> None:
        self._frame = frame
        self._hashes: np.ndarray | None = None
        self.arrays = arrays
        self.words = words  # the sorted distinct sources
        self.codes = codes  # per row, its source's index in ``words``

    @classmethod
    def of(cls, df: pl.DataFrame) -> PlainKlines | None:
        """``None`` when this writer does not support the rows (other columns or dtypes, nulls)."""
        if df.height == 0 or df.columns != _NAMES or df.dtypes != _DTYPES or any(df.null_count().row(0)):
            return None
        arrays = {}
        for name, kind in _KINDS:
            if kind != _STRING:
                arr = df.get_column(name).to_numpy()
                arrays[name] = arr.view(np.int64) if arr.dtype.kind == "M" else arr
        src = df.get_column("source")
        first, last = src.min(), src.max()
        if first == last:  # the common case (one source per write), without hashing every row
            return cls(df, arrays, [str(first).encode()], np.zeros(df.height, dtype=np.int64))
        values = src.unique().sort()
        codes = values.search_sorted(src).to_numpy().astype(np.int64)
        return cls(df, arrays, [v.encode() for v in values.to_list()], codes)

    def encode(
        self, lo: int = 0, n: int | None = None, *, prints: bool | None = None, split: bool = True
    ) -> bytes:
        """The parquet bytes of rows ``[lo, lo + n)`` (all rows from ``lo`` by default).

        ``prints``: whether the footer gets the rows' day fingerprints (``lake.store.dayprints``);
        by default when they span several UTC days. The klines store asks for them in every file of
        a partition longer than a day, its first day's included. ``split``: whether the numeric
        columns may get a second page for their last days (``tail_cut``); the store turns it off for
        a new partition that already holds its period's last day (no day will be appended to it)."""
        n = len(self.codes) - lo if n is None else n
        if n <= 0:
            raise ValueError("no rows to encode")
        times = self.arrays["candle_begin_time"][lo : lo + n]
        first_day, last_day = int(times[0]) // MS_PER_DAY, int(times[-1]) // MS_PER_DAY
        meta: list[bytes] = []
        if prints if prints is not None else last_day > first_day:
            packed = partition_prints(times, self.hashes()[lo : lo + n])
            meta.append(_Struct().binary(1, META_KEY.encode()).binary(2, packed.encode()).end())
        out = bytearray(_MAGIC)
        group = self._row_group(out, lo, n, split)
        footer = _Struct()
        footer.buf += _FOOTER_HEAD
        footer.last = 2
        footer.i64(3, n).list_struct(4, [group])
        if meta:
            footer.list_struct(5, meta)
        footer.binary(6, CREATED_BY.encode())
        footer.list_struct(7, [_COLUMN_ORDER] * len(_COLUMNS))
        data = footer.end()
        out += data
        out += _U32.pack(len(data))
        out += _MAGIC
        return bytes(out)

    def hashes(self) -> np.ndarray:
        """The rows' hashes for their day fingerprints, computed once for every slice."""
        if self._hashes is None:
            self._hashes = row_hashes(self._frame)
        return self._hashes

    def _row_group(self, out: bytearray, lo: int, n: int, split: bool) -> bytes:
        """Appends the column chunks of rows ``[lo, lo + n)`` to ``out``; returns the RowGroup."""
        start = len(out)
        chunks: list[bytes] = []
        total = 0
        levels = def_levels(n)
        cuts = tail_cut(self.arrays["candle_begin_time"][lo : lo + n]) if split else []
        for name, kind in _KINDS:
            offset = len(out)
            dict_offset: int | None = None
            if kind == _STRING:
                codes = self.codes[lo : lo + n]
                used = np.unique(codes) if len(self.words) > 1 else codes[:1]
                words = [self.words[i] for i in used.tolist()]
                if len(words) < len(self.words):  # this slice's own dictionary
                    codes = np.searchsorted(used, codes)
                plain = b"".join(_U32.pack(len(w)) + w for w in words)
                bit_width = max(1, (len(words) - 1).bit_length())
                body = levels + bytes([bit_width]) + _rle_runs(codes, bit_width)
                # A few bytes once dictionary-encoded: stored plain (both pages share the codec).
                dict_page, dict_raw = _page(_DICTIONARY_PAGE, plain, len(words), _PLAIN)
                data_page, data_raw = _page(_DATA_PAGE, body, n, _RLE_DICTIONARY)
                codec = _UNCOMPRESSED
                dict_offset = offset
                out += dict_page
                data_offset = len(out)
                out += data_page
                raw_size = dict_raw + data_raw
                lo_b, hi_b = words[0], words[-1]
            else:
                arr = self.arrays[name][lo : lo + n]
                data_page, raw_size, codec = _value_pages(arr, cuts, levels)
                data_offset = offset
                out += data_page
                amin, amax = arr.min(), arr.max()
                if kind == _FLOAT:
                    # parquet: a zero min is written as -0.0 and a zero max as +0.0
                    lo_b = _F64.pack(-0.0 if amin == 0 else float(amin))
                    hi_b = _F64.pack(0.0 if amax == 0 else float(amax))
                else:
                    lo_b, hi_b = _I64.pack(int(amin)), _I64.pack(int(amax))
            total += raw_size
            tail = _chunk_tail(codec, n, raw_size, len(out) - offset, data_offset, dict_offset, lo_b, hi_b)
            chunks.append(_CHUNK_HEAD[name] + tail)
        # RowGroup {1: columns, 2: total_byte_size, 3: num_rows, 5: file_offset, 6: total_compressed_size}
        return (
            _Struct()
            .list_struct(1, chunks)
            .i64(2, total)
            .i64(3, n)
            .i64(5, start)
            .i64(6, len(out) - start)
            .end()
        )


# FileMetaData fields 1-2: version 2 (format 2.x) and the schema.
_FOOTER_HEAD = _Struct().i32(1, 2).list_struct(2, _SCHEMA).buf


def encode_plain(df: pl.DataFrame, *, prints: bool | None = None, split: bool = True) -> bytes | None:
    """The parquet bytes of kline rows ``df``, or ``None`` when this writer does not support them
    (other columns or dtypes, nulls, no rows): then encode with pyarrow. ``prints``, ``split``: see
    ``PlainKlines.encode``."""
    prepared = PlainKlines.of(df)
    return None if prepared is None else prepared.encode(prints=prints, split=split)


# -- reading back the day fingerprints ----------------------------------------------------------


def footer_prints(source: Any) -> str | None:
    """The packed day fingerprints the klines writer stored in a parquet file's footer, or ``None``
    (a file of one day, or one written by something else). ``source``: a path or a binary file
    object; only the footer is read.

    Only this writer stores them, always as the single key-value pair of the footer, followed by
    its ``created_by``. So the footer is searched for exactly those bytes of the Thrift compact
    encoding (field 5, a list of one KeyValue struct whose key is ``META_KEY``; then field 6): no
    generic parse of the row groups before them, which costs more than the rest of an offsets run's
    planning for an appended day (~0.1 ms a file)."""
    if isinstance(source, (str, os.PathLike)):
        fd = os.open(source, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            footer = _footer_bytes(size, lambda n, at: os.pread(fd, n, at))
        finally:
            os.close(fd)
    else:
        size = source.seek(0, os.SEEK_END)
        footer = _footer_bytes(size, lambda n, at: (source.seek(at), source.read(n))[1])
    if footer is None:
        return None
    at = footer.rfind(_KV_HEAD)
    if at < 0:
        return None
    value, end = _binary(footer, at + len(_KV_HEAD))
    if value is None or footer[end : end + len(_KV_END)] != _KV_END:
        return None
    try:
        return checked(value.decode("ascii"))
    except ValueError:
        return None


def _binary(buf: bytes, at: int) -> tuple[bytes | None, int]:
    """A Thrift compact binary at ``buf[at:]`` (varint length, bytes) and the offset after it."""
    n = shift = 0
    while at < len(buf):
        b = buf[at]
        at += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return (buf[at : at + n], at + n) if at + n <= len(buf) else (None, at)
        shift += 7
    return None, at


# FileMetaData field 5 (delta 1 from field 4, a list: 0x19) of one struct (0x1c); KeyValue field 1
# (binary: 0x18) = META_KEY; field 2 (0x18) = the value, read by ``_binary``; then the end of the
# struct (0x00) and FileMetaData field 6 (0x18), created_by, as ``PlainKlines.encode`` writes it.
_KV_HEAD = b"\x19\x1c\x18" + _varint(len(META_KEY)) + META_KEY.encode() + b"\x18"
_KV_END = b"\x00\x18" + _varint(len(CREATED_BY)) + CREATED_BY.encode()
