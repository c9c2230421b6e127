"""Reading the last rows of a kline partition written by lake's own writer, page by page.

An offsets build that follows an appended day needs each changed month from a few hours before the
new day on (``lake.transform.planning``). A parquet reader decodes whole pages, and until now a month
file held one page per column: every appended day inflated 300 months of 5m to keep ~1% of them
(0.15–0.19 s of a 0.33–0.40 s incremental run). The writer (``lake.store.parquet_plain``) now starts
a second page per numeric column at the day before the last one (``tail_cut``), and this module
reads exactly the pages holding the rows asked for: it finds the column chunks by their constant
bytes in the footer (as ``footer_prints`` finds the fingerprints), walks their page headers and
inflates the pages from the requested time on.

It reads only files whose footer says this writer made them, and only the layout the writer
produces (one row group, PLAIN pages with one run of definition levels, LZ4_RAW or no codec).
Anything else, including a file changed or truncated under it, returns ``None``: the caller then
reads the file with Polars, which reports a real problem as an error; damage Polars would not see is
an error here (``read_since``). Local files only.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from lake.errors import DataError
from lake.schema import KLINE_SCHEMA
from lake.store.parquet_plain import CREATED_BY, chunk_head, def_levels
from lake.store.thrift_bytes import footer_bytes, varint

__all__ = ["read_since"]

_LZ4 = pa.Codec("lz4_raw")
_UNCOMPRESSED, _LZ4_RAW = 0, 7
_CREATED = varint(len(CREATED_BY)) + CREATED_BY.encode()  # the footer's created_by
# A file whose inflated pages hold more rows before ``since`` than this many plus twice those from
# ``since`` on is left to Polars, which inflates a whole month faster than this module's Python.
_SLACK = 2048
_HEADER_MAX = 32  # a data page header of the writer takes at most 29 bytes


class _Skip(Exception):
    """The file is not one this reader reads (the caller falls back to a generic reader)."""


class _Corrupt(Exception):
    """The file is this writer's and damaged in a way other readers would not notice."""


_levels = functools.lru_cache(maxsize=1024)(def_levels)
_DTYPES = {
    c: "<f8" if t == pl.Float64 else "<i8" for c, t in KLINE_SCHEMA.items() if t != pl.String
}  # the time column as int64 ms


_V = rb"([\x80-\xff]{0,9}[\x00-\x7f])"  # one varint
# The writer's data page header: type DATA_PAGE (0), uncompressed and compressed sizes, then a
# DataPageHeader of num_values, encoding PLAIN (0) and definition/repetition levels RLE (3).
_PAGE = re.compile(
    rb"\x15\x00\x15" + _V + rb"\x15" + _V + rb"\x2c\x15" + _V + rb"\x15\x00\x15\x06\x15\x06\x00\x00"
)


def _chunks_pattern() -> re.Pattern[bytes]:
    # A numeric column's ColumnChunk head (with its name), then codec (i32), num_values,
    # total_uncompressed_size, total_compressed_size, data_page_offset (i64s) and the statistics'
    # field header (no dictionary page offset before it): every chunk of a footer in one search.
    heads = b"|".join(re.escape(chunk_head(c)) for c in _DTYPES)
    v = _V.decode("latin-1")
    tail = rf"\x15{v}\x16{v}\x16{v}\x16{v}\x26{v}\x3c".encode("latin-1")
    return re.compile(b"(" + heads + b")" + tail)


_CHUNKS = _chunks_pattern()
_NAMES = {chunk_head(c): c for c in _DTYPES}
_TAIL_READ = 1 << 15  # the rest of a chunk is read at once when it is this small (its last pages)


def _zz(raw: bytes) -> int:
    """A zigzag varint's value from its bytes."""
    n = len(raw)
    if n == 1:  # the sizes of the writer's pages take one to three bytes
        v = raw[0]
    elif n == 2:
        v = (raw[0] & 0x7F) | (raw[1] << 7)
    elif n == 3:
        v = (raw[0] & 0x7F) | ((raw[1] & 0x7F) << 7) | (raw[2] << 14)
    else:
        v = raw[-1]
        for b in reversed(raw[:-1]):
            v = (v << 7) | (b & 0x7F)
    return (v >> 1) ^ -(v & 1)


class _Page(NamedTuple):
    body: int  # offset of the (compressed) body
    raw: int
    comp: int
    first: int  # the chunk's row at which the page starts
    n: int


class _File:
    """One open partition file of the writer: its column chunks, read page by page."""

    def __init__(self, fd: int, footer: bytes, body_end: int) -> None:
        self.fd = fd
        self.chunks: dict[str, tuple[int, int, int, int]] = {}
        for m in _CHUNKS.finditer(footer):
            name = _NAMES[m.group(1)]
            codec, rows, _, size, offset = map(_zz, m.groups()[1:])
            if name in self.chunks:  # more than one row group
                raise _Skip
            if codec not in (_UNCOMPRESSED, _LZ4_RAW) or rows <= 0 or size <= 0 or offset < 4:
                raise _Skip
            if offset + size > body_end:  # not between the magic bytes and the footer
                raise _Skip
            self.chunks[name] = (codec, rows, offset, size)
        self.held = b""  # the bytes of the chunk read last from ``held_at`` on (its last pages)
        self.held_at = 0

    def _read(self, n: int, at: int) -> bytes:
        if self.held_at <= at and at + n <= self.held_at + len(self.held):
            return self.held[at - self.held_at : at - self.held_at + n]
        data = os.pread(self.fd, n, at)
        if len(data) != n:
            raise _Skip  # shorter than its footer says: changed under the reader
        return data

    def pages(self, name: str) -> tuple[int, list[_Page]]:
        """The codec and pages of column ``name``'s chunk."""
        chunk = self.chunks.get(name)
        if chunk is None:
            raise _Skip
        codec, rows, offset, size = chunk
        out = []
        at, end, first = offset, offset + size, 0
        while at < end:
            if end - at <= _TAIL_READ:  # the chunk's last pages: read at once, headers matched in place
                if not self.held_at <= at < self.held_at + len(self.held):
                    self.held, self.held_at = self._read(end - at, at), at
                pos = at - self.held_at
                m = _PAGE.match(self.held, pos)
            else:
                pos = 0
                m = _PAGE.match(self._read(min(_HEADER_MAX, end - at), at))
            if m is None:
                raise _Skip
            g = m.groups()
            raw, comp, n = _zz(g[0]), _zz(g[1]), _zz(g[2])
            hlen = m.end() - pos
            if n <= 0 or comp < 0 or at + hlen + comp > end or raw != 8 * n + len(_levels(n)):
                raise _Skip  # sizes no page of the writer has
            if codec == _UNCOMPRESSED and comp != raw:
                raise _Skip
            out.append(_Page(at + hlen, raw, comp, first, n))
            at += hlen + comp
            first += n
        if first != rows:
            raise _Skip
        return codec, out

    def values(self, page: _Page, codec: int, dtype: str) -> np.ndarray:
        body = self._read(page.comp, page.body)
        data = body
        if codec == _LZ4_RAW:
            data = _LZ4.decompress(body, decompressed_size=page.raw, asbytes=True)
            # pyarrow does not say how many bytes came out, and the rest of its buffer is
            # uninitialised (Polars reads such a page as values too): a body that inflates to fewer
            # bytes than its header says must not fit in one byte less
            try:
                _LZ4.decompress(body, decompressed_size=page.raw - 1)
            except OSError:  # "Corrupt Lz4 compressed data": it did not fit, as it should not
                pass
            else:
                raise _Corrupt("a page inflates to fewer bytes than its header says")
        levels = _levels(page.n)
        if len(data) != page.raw or data[: len(levels)] != levels:
            raise _Skip  # nulls, or not this writer's page
        return np.frombuffer(data, dtype=dtype, offset=len(levels))

    def times_since(self, since_ms: int) -> tuple[np.ndarray, int]:
        """The open times at or after ``since_ms`` and the row of the first: pages are inflated from
        the last one back until one starts before ``since_ms``."""
        codec, pages = self.pages("candle_begin_time")
        k = len(pages) - 1
        parts = [self.values(pages[k], codec, "<i8")]
        while k > 0 and parts[0][0] > since_ms:  # a page opening at since_ms holds the first row
            k -= 1
            parts.insert(0, self.values(pages[k], codec, "<i8"))
        times = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if np.any(times[1:] <= times[:-1]):
            raise _Skip  # not ascending: not a partition as the store writes it
        cut = int(np.searchsorted(times, since_ms, side="left"))
        if cut > _SLACK + 2 * (len(times) - cut):
            raise _Skip  # mostly rows before ``since_ms`` (say a file of one page): Polars is faster
        return times[cut:], pages[k].first + cut

    def column_from(self, name: str, row: int) -> np.ndarray:
        """Column ``name`` from row ``row`` on, inflating only the pages that hold those rows."""
        codec, pages = self.pages(name)
        dtype = _DTYPES[name]
        wanted = [p for p in pages if p.first + p.n > row]
        if not wanted:
            return np.empty(0, dtype=dtype)
        parts = [self.values(p, codec, dtype) for p in wanted]
        values = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return values[row - wanted[0].first :]


def read_since(
    path: str | os.PathLike[str], since_ms: int, columns: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """The rows of a local kline partition file opening at or after ``since_ms``, as NumPy arrays by
    column (``candle_begin_time`` as int64 ms since the epoch, then ``columns``: numeric kline
    columns). ``None`` when the file is not one lake's plain writer made (or not any more): read it
    some other way. Raises ``DataError`` for a file of that writer that is damaged in a way other
    readers would not notice (an LZ4 page that inflates short: Polars reads the missing bytes as
    values)."""
    unknown = [c for c in columns if c not in _DTYPES or c == "candle_begin_time"]
    if unknown:
        raise ValueError(f"not a numeric kline value column: {unknown}")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        footer = footer_bytes(size, lambda n, at: os.pread(fd, n, at))
        if footer is None or _CREATED not in footer:
            return None
        file = _File(fd, footer, size - 8 - len(footer))
        times, row = file.times_since(since_ms)
        out = {"candle_begin_time": times}
        for name in columns:
            values = file.column_from(name, row)
            if len(values) != len(times):
                return None
            out[name] = values
        return out
    except _Corrupt as exc:
        raise DataError(
            f"corrupt kline partition {os.fspath(path)}: {exc}; delete it and backfill its period again"
        ) from exc
    except (_Skip, OSError, pa.ArrowException, ValueError, MemoryError, OverflowError):
        return None
    finally:
        os.close(fd)
