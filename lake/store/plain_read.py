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
reads the file with Polars, which reports a real problem as an error. Local files only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from lake.schema import KLINE_SCHEMA
from lake.store.parquet_plain import CREATED_BY, chunk_head, def_levels
from lake.store.thrift_bytes import footer_bytes, varint

__all__ = ["read_since"]

_LZ4 = pa.Codec("lz4_raw")
_UNCOMPRESSED, _LZ4_RAW = 0, 7
_CREATED = varint(len(CREATED_BY)) + CREATED_BY.encode()  # the footer's created_by
# A file whose pages from ``since`` on hold more rows than twice those asked for, plus this many, is
# left to Polars, which inflates a whole month faster than this module's Python per page.
_SLACK = 2048
_HEADER_MAX = 32  # a data page header of the writer takes at most 29 bytes


class _Skip(Exception):
    """The file is not one this reader reads (the caller falls back to a generic reader)."""


_V = rb"([\x80-\xff]{0,9}[\x00-\x7f])"  # one varint
# The writer's data page header: type DATA_PAGE (0), uncompressed and compressed sizes, then a
# DataPageHeader of num_values, encoding PLAIN (0) and definition/repetition levels RLE (3).
_PAGE = re.compile(
    rb"\x15\x00\x15" + _V + rb"\x15" + _V + rb"\x2c\x15" + _V + rb"\x15\x00\x15\x06\x15\x06\x00\x00"
)


def _chunk_pattern(name: str) -> re.Pattern[bytes]:
    # ColumnChunk head, then codec (i32), num_values, total_uncompressed_size, total_compressed_size,
    # data_page_offset (i64s) and the statistics' field header (no dictionary page offset before it)
    v = _V.decode("latin-1")
    tail = rf"\x15{v}\x16{v}\x16{v}\x16{v}\x26{v}\x3c"
    return re.compile(re.escape(chunk_head(name)) + tail.encode("latin-1"), re.DOTALL)


_CHUNKS: dict[str, re.Pattern[bytes]] = {}
_DTYPES = {
    c: "<f8" if t == pl.Float64 else "<i8" for c, t in KLINE_SCHEMA.items() if t != pl.String
}  # the time column as int64 ms


def _zz(raw: bytes) -> int:
    """A zigzag varint's value from its bytes."""
    v = raw[-1]
    for b in reversed(raw[:-1]):
        v = (v << 7) | (b & 0x7F)
    return (v >> 1) ^ -(v & 1)


def _chunk(footer: bytes, name: str, body_end: int) -> tuple[int, int, int, int]:
    """(codec, rows, data page offset, compressed size) of column ``name``'s only chunk, which must
    lie between the magic bytes and the footer (``body_end``)."""
    pattern = _CHUNKS.get(name)
    if pattern is None:
        pattern = _CHUNKS[name] = _chunk_pattern(name)
    found = pattern.findall(footer)
    if len(found) != 1:  # not this writer's chunk, or more than one row group
        raise _Skip
    codec, rows, _, size, offset = map(_zz, found[0])
    if (
        codec not in (_UNCOMPRESSED, _LZ4_RAW)
        or rows <= 0
        or size <= 0
        or offset < 4
        or offset + size > body_end
    ):
        raise _Skip
    return codec, rows, offset, size


def _page_header(buf: bytes) -> tuple[int, int, int, int]:
    """(header length, uncompressed size, compressed size, values) of one of the writer's PLAIN
    data pages at the start of ``buf``."""
    m = _PAGE.match(buf)
    if m is None:
        raise _Skip
    raw, comp, n = map(_zz, m.groups())
    if raw < 0 or comp < 0 or n <= 0:
        raise _Skip
    return m.end(), raw, comp, n


class _Page(NamedTuple):
    body: int  # offset of the (compressed) body
    raw: int
    comp: int
    first: int  # the chunk's row at which the page starts
    n: int


def _pages(fd: int, footer: bytes, name: str, body_end: int) -> tuple[int, list[_Page]]:
    """The codec and pages of column ``name``'s chunk."""
    codec, rows, offset, size = _chunk(footer, name, body_end)
    out = []
    at, end, first = offset, offset + size, 0
    while at < end:
        hlen, raw, comp, n = _page_header(os.pread(fd, min(_HEADER_MAX, end - at), at))
        if (
            at + hlen + comp > end
            or raw != 8 * n + len(def_levels(n))
            or (codec == _UNCOMPRESSED and comp != raw)
        ):
            raise _Skip  # sizes no page of the writer has
        out.append(_Page(at + hlen, raw, comp, first, n))
        at += hlen + comp
        first += n
    if at != end or first != rows:
        raise _Skip
    return codec, out


def _values(fd: int, page: _Page, codec: int, dtype: str) -> np.ndarray:
    body = os.pread(fd, page.comp, page.body)
    if len(body) != page.comp:
        raise _Skip
    data = body
    if codec == _LZ4_RAW:
        data = _LZ4.decompress(body, decompressed_size=page.raw, asbytes=True)
        # pyarrow does not say how many bytes came out, and the rest of its buffer is uninitialised:
        # a body that inflates to fewer bytes than the header says must not fit in one byte less
        try:
            _LZ4.decompress(body, decompressed_size=page.raw - 1)
        except OSError:  # "Corrupt Lz4 compressed data": it did not fit, as it should not
            pass
        else:
            raise _Skip
    levels = def_levels(page.n)
    if len(data) != page.raw or data[: len(levels)] != levels:
        raise _Skip  # nulls, or not this writer's page
    return np.frombuffer(data, dtype=dtype, offset=len(levels))


def _times_since(fd: int, footer: bytes, body_end: int, since_ms: int) -> tuple[np.ndarray, int]:
    """The open times at or after ``since_ms`` and the row of the first: pages are inflated from the
    last one back until one starts before ``since_ms``."""
    codec, pages = _pages(fd, footer, "candle_begin_time", body_end)
    k = len(pages) - 1
    parts = [_values(fd, pages[k], codec, "<i8")]
    while k > 0 and parts[0][0] >= since_ms:
        k -= 1
        parts.insert(0, _values(fd, pages[k], codec, "<i8"))
    times = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if np.any(times[1:] <= times[:-1]):
        raise _Skip  # not ascending: not a partition as the store writes it
    cut = int(np.searchsorted(times, since_ms, side="left"))
    if cut > _SLACK + 2 * (len(times) - cut):
        raise _Skip  # mostly rows before ``since_ms`` (say a file of one page): Polars is faster
    return times[cut:], pages[k].first + cut


def _column_from(fd: int, footer: bytes, body_end: int, name: str, row: int) -> np.ndarray:
    """Column ``name`` from row ``row`` on, inflating only the pages that hold those rows."""
    codec, pages = _pages(fd, footer, name, body_end)
    dtype = _DTYPES[name]
    wanted = [p for p in pages if p.first + p.n > row]
    if not wanted:
        return np.empty(0, dtype=dtype)
    parts = [_values(fd, p, codec, dtype) for p in wanted]
    values = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return values[row - wanted[0].first :]


def read_since(
    path: str | os.PathLike[str], since_ms: int, columns: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """The rows of a local kline partition file opening at or after ``since_ms``, as NumPy arrays by
    column (``candle_begin_time`` as int64 ms since the epoch, then ``columns``: numeric kline
    columns). ``None`` when the file is not one lake's plain writer made (or not any more): read it
    some other way."""
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
        body_end = size - 8 - len(footer)
        times, row = _times_since(fd, footer, body_end, since_ms)
        out = {"candle_begin_time": times}
        for name in columns:
            values = _column_from(fd, footer, body_end, name, row)
            if len(values) != len(times):
                return None
            out[name] = values
        return out
    except (_Skip, OSError, pa.ArrowException, ValueError, MemoryError, OverflowError):
        return None
    finally:
        os.close(fd)
