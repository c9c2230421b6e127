"""Byte-level helpers of the parquet format shared by lake's writer (``lake.store.parquet_plain``)
and the relocation of rewritten files (``lake.store.relocate``): Thrift compact varints and reading a
file's footer. No third-party imports, so ``lake.store.fs`` stays light."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["footer_bytes", "varint", "zigzag"]

_SMALL = [bytes([i]) for i in range(0x80)]


def varint(n: int) -> bytes:
    """An unsigned varint (Thrift compact lengths and sizes)."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(n: int) -> bytes:
    """A zigzag varint (Thrift compact i16/i32/i64)."""
    v = (n << 1) ^ (n >> 63)
    return _SMALL[v] if v < 0x80 else varint(v)


def footer_bytes(size: int, read: Callable[[int, int], bytes]) -> bytes | None:
    """The FileMetaData bytes of a parquet file of ``size`` bytes (they end 8 bytes before the end);
    ``read(n, at)`` reads its bytes. None if it does not end like a parquet file."""
    if size < 12:
        return None
    tail = read(8, size - 8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 12 > size:
        return None
    return read(length, size - 8 - length)
