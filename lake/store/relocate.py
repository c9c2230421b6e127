"""Replace a parquet file so that a reader holding the old file's footer still reads the old pages.

DuckDB opens a parquet file twice per query (footer, then pages) and Polars reads the footer and
the pages through separate opens. A rename that lands in between makes the second read take the
*new* file's bytes at the *old* footer's offsets: the query fails or, in principle, decodes wrong
bytes (``lake.store.swap`` has the measurements). File leases narrow that window for DuckDB only.

This closes it for every reader on a local disk: the replacement carries the old file's pages at
the offsets they had, and puts its own pages where they do not overlap them, at the front when they
fit before the old pages and after them otherwise. Its footer's offsets are shifted to match: the
Thrift compact encoding of the footer is copied byte for byte, and only the offset fields are
re-encoded (``_Footer``). Whichever footer a reader holds and whichever inode it opens next, the
bytes at that footer's offsets are the pages that footer describes.

* **Size.** The file keeps its size while the pieces fit, so that a reader that took the size from
  a listing (Polars does) finds the new footer where it looks. When they do not fit the file grows
  by half again, a few times in its life, and the old footer also stays at the old end, with the
  old pages it points at, for such readers. A growing file's apparent size is 2–3.5× its data; a
  file never shrinks. Gaps are holes: never written, they take no disk space.
* **Disk.** The old pages (and a grown file's old footer) are dead once no reader can still hold
  the old footer or size. They are punched out (``FALLOC_FL_PUNCH_HOLE``) ``PUNCH_DELAY_S`` after
  the rename by a thread of the writing process, if the file is still that inode (same mtime and
  size) and its current footer needs none of those bytes; the file's mtime is restored (a punch
  changes no content, and mtime is part of the change token ``LakeFS.mtime_key``). A process that
  exits earlier records what it has not punched under ``_meta/punch/``, and the next process that
  writes a parquet file to the lake punches it when it is due. Where holes cannot be punched, or a
  process was killed, the dead pages stay until the file is rewritten: a rewritten file then takes
  up to twice its size on disk.
* **Not relocated** (the caller falls back to the lease swap): a payload with a page index (its
  page locations are absolute offsets stored in the body, not in the footer; Polars writes one) or
  an encrypted one, unless its pages can stay where they are (the old file has none in the way),
  and an old file that is not a parquet file whose footer this module can read. ``LAKE_NO_RELOCATE=1``
  turns relocation off (for the ``torn_reads`` benchmark).

What is left: a reader holding a footer (or a listed size) across two rewrites of the file, or
for longer than ``PUNCH_DELAY_S`` of wall-clock time (it then reads zeros and fails), and two
writers of one file at once (lake's writers of a file hold its series lock). Files of another user
and files behind a symlinked directory are not punched.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import errno
import heapq
import itertools
import json
import logging
import math
import os
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lake.store.thrift_bytes import footer_bytes, zigzag

__all__ = ["PUNCH_DELAY_S", "Layout", "enabled", "load_pending", "plan", "punch_now", "schedule", "write"]

log = logging.getLogger(__name__)

PUNCH_DELAY_S = 60.0  # a reader holding a footer longer than this between its two reads may fail
_ALIGN = 4096  # file sizes are whole blocks
_MAGIC = b"PAR1"
_LEN = struct.Struct("<I")
PENDING_DIR = "_meta/punch"

# Thrift compact type ids.
_T_TRUE, _T_FALSE, _T_BYTE, _T_I16, _T_I32, _T_I64, _T_DOUBLE = 1, 2, 3, 4, 5, 6, 7
_T_BINARY, _T_LIST, _T_SET, _T_MAP, _T_STRUCT = 8, 9, 10, 11, 12


# What the walk does with a field, per struct of parquet.thrift: ``_Field``s are recorded under their
# name (``shift``: an absolute offset in the file, moved with the pages; ``refuse``: the payload
# cannot be relocated); a dict is a struct, or a list of structs, to descend into.
@dataclass(frozen=True)
class _Field:
    name: str
    shift: bool = False
    refuse: bool = False


_REFUSE = _Field("", refuse=True)
_COLUMN_META: dict[int, object] = {
    7: _Field("size"),  # total_compressed_size: the chunk's pages with their headers
    9: _Field("data", shift=True),
    10: _Field("index", shift=True),
    11: _Field("dict", shift=True),
    14: _Field("bloom", shift=True),
    15: _Field("bloom_len"),
}
_COLUMN_CHUNK: dict[int, object] = {
    2: _Field("file_offset", shift=True),
    3: _COLUMN_META,
    4: _Field("oi", shift=True, refuse=True),  # the page index: absolute page offsets in the body
    5: _Field("oi_len"),
    6: _Field("ci", shift=True, refuse=True),
    7: _Field("ci_len"),
    8: _REFUSE,  # encryption
    9: _REFUSE,
}
_ROW_GROUP: dict[int, object] = {1: _COLUMN_CHUNK, 5: _Field("file_offset", shift=True)}
_FILE_META: dict[int, object] = {4: _ROW_GROUP, 8: _REFUSE, 9: _REFUSE}


def enabled() -> bool:
    return not os.environ.get("LAKE_NO_RELOCATE")


class _Footer:
    """A parquet FileMetaData in the Thrift compact protocol, walked once: where its offset fields
    are (to shift them) and whether it has fields this module cannot relocate."""

    __slots__ = ("buf", "chunks", "offsets", "refused")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.offsets: list[tuple[int, int, int]] = []  # (start, end, value) of each offset's varint
        self.chunks: list[dict[str, int]] = []  # the recorded fields of each column chunk
        self.refused = False
        try:
            end = self._struct(0, _FILE_META, {})
        except (IndexError, RecursionError) as exc:
            raise ValueError("truncated parquet footer") from exc
        if end > len(buf):
            raise ValueError("truncated parquet footer")

    def extent(self) -> tuple[int, int] | None:
        """The range of the file the footer's pages (and blooms and page index) lie in: (0, 0)
        when it has none, None when a length is missing (the caller then keeps everything up to
        the footer)."""
        ranges = []
        for c in self.chunks:
            if "data" not in c or "size" not in c:
                return None
            starts = [v for v in (c["data"], c.get("dict", 0)) if v > 0]  # 0: no such page
            if starts:
                ranges.append((min(starts), min(starts) + c["size"]))
            elif c["size"]:
                return None
            for off, length in (("bloom", "bloom_len"), ("oi", "oi_len"), ("ci", "ci_len")):
                if c.get(off, 0) > 0:
                    if length not in c:
                        return None
                    ranges.append((c[off], c[off] + c[length]))
            if c.get("index", 0) > 0:  # an index page of unknown length (no writer makes one)
                return None
        if not ranges:
            return (0, 0)
        return min(r[0] for r in ranges), max(r[1] for r in ranges)

    def shifted(self, delta: int) -> bytes:
        """The footer with every offset moved by ``delta`` (offsets of 0 mean unset and stay 0)."""
        if not delta:
            return self.buf
        out = bytearray()
        last = 0
        for start, end, value in self.offsets:
            out += self.buf[last:start]
            out += zigzag(value + delta if value > 0 else value)
            last = end
        out += self.buf[last:]
        return bytes(out)

    def _check_count(self, n: int, at: int) -> None:
        """Every element takes a byte at least: a larger count is a corrupt footer (and looping
        over elements that read nothing, bools or bytes, would never run into its end)."""
        if n > len(self.buf) - at:
            raise ValueError("a collection larger than the parquet footer")

    def _varint(self, at: int) -> tuple[int, int]:
        n = shift = 0
        while True:
            b = self.buf[at]
            at += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n, at
            shift += 7
            if shift > 63:
                raise ValueError("bad varint in parquet footer")

    def _struct(self, at: int, spec: dict[int, object] | None, rec: dict[str, int]) -> int:
        if spec is _COLUMN_CHUNK:
            rec = {}
            self.chunks.append(rec)
        buf = self.buf
        fid = 0
        while True:
            head = buf[at]
            at += 1
            if head == 0:
                return at
            ttype, delta = head & 0x0F, head >> 4
            if delta:
                fid += delta
            else:
                z, at = self._varint(at)
                fid = (z >> 1) ^ -(z & 1)
            rule = spec.get(fid) if spec is not None else None
            if rule is None:  # most fields: skipped inline, as cheaply as Python allows
                at = self._skip(at, ttype)
                continue
            if isinstance(rule, _Field) and ttype in (_T_I32, _T_I64):
                self.refused |= rule.refuse
                z, end = self._varint(at)
                value = (z >> 1) ^ -(z & 1)
                if rule.shift:
                    if ttype != _T_I64:
                        raise ValueError("an offset in a parquet footer that is not an i64")
                    self.offsets.append((at, end, value))
                rec[rule.name] = value
                at = end
                continue
            if isinstance(rule, _Field):
                self.refused |= rule.refuse
            at = self._value(at, ttype, rule if isinstance(rule, dict) else None, rec)

    def _skip(self, at: int, ttype: int) -> int:
        """Past a value of no interest."""
        buf = self.buf
        if ttype in (_T_I32, _T_I64, _T_I16):
            while buf[at] & 0x80:
                at += 1
            return at + 1
        if ttype == _T_BINARY:
            n = buf[at]
            if n < 0x80:
                return at + 1 + n
            n, at = self._varint(at)
            return at + n
        if ttype in (_T_TRUE, _T_FALSE):  # a bool field's value is its type
            return at
        if ttype in (_T_LIST, _T_SET):
            head = buf[at]
            at += 1
            n, etype = head >> 4, head & 0x0F
            if n == 15:
                n, at = self._varint(at)
            self._check_count(n, at)
            if etype in (_T_TRUE, _T_FALSE, _T_BYTE):  # one byte each in a collection
                return at + n
            for _ in range(n):
                at = self._skip(at, etype)
            return at
        return self._value(at, ttype, None, {})

    def _value(self, at: int, ttype: int, spec: dict[int, object] | None, rec: dict[str, int]) -> int:
        if ttype in (_T_TRUE, _T_FALSE):  # a bool field's value is its type
            return at
        if ttype == _T_BYTE:
            return at + 1
        if ttype in (_T_I16, _T_I32, _T_I64):
            return self._varint(at)[1]
        if ttype == _T_DOUBLE:
            return at + 8
        if ttype == _T_BINARY:
            n, at = self._varint(at)
            return at + n
        if ttype in (_T_LIST, _T_SET):
            head = self.buf[at]
            at += 1
            n, etype = head >> 4, head & 0x0F
            if n == 15:
                n, at = self._varint(at)
            self._check_count(n, at)
            for _ in range(n):
                at = self._element(at, etype, spec, rec)
            return at
        if ttype == _T_MAP:
            n, at = self._varint(at)
            self._check_count(2 * n, at)
            if n:
                kinds = self.buf[at]
                at += 1
                for _ in range(n):
                    at = self._element(at, kinds >> 4, None, rec)
                    at = self._element(at, kinds & 0x0F, None, rec)
            return at
        if ttype == _T_STRUCT:
            return self._struct(at, spec, rec)
        raise ValueError(f"unknown Thrift type {ttype} in parquet footer")

    def _element(self, at: int, etype: int, spec: dict[int, object] | None, rec: dict[str, int]) -> int:
        if etype in (_T_TRUE, _T_FALSE):  # a bool in a collection is one byte
            return at + 1
        return self._value(at, etype, spec, rec)


def _split(data: memoryview) -> tuple[memoryview, bytes] | None:
    """A parquet payload's body (between the leading magic and the footer) and its footer."""
    size = len(data)
    if size < 12 or data[:4] != _MAGIC or data[size - 4 :] != _MAGIC:
        return None
    flen = _LEN.unpack(data[size - 8 : size - 4])[0]
    if flen + 12 > size:
        return None
    return data[4 : size - 8 - flen], bytes(data[size - 8 - flen : size - 8])


@dataclass(frozen=True)
class Layout:
    """Where the pieces of a relocated file go."""

    keep: tuple[tuple[int, int], ...]  # ranges [start, end) of the old file copied to the same offsets
    at: int  # where the payload's body starts
    footer: bytes  # the payload's footer with its offsets shifted to ``at``
    size: int  # the file's size: the old one's unless the pieces do not fit in it

    @property
    def dead(self) -> tuple[tuple[int, int], ...]:
        """The ranges that are dead once no reader can hold the old footer (``keep``)."""
        return self.keep


def plan(old_fd: int, data: memoryview) -> Layout | None:
    """How to write ``data`` (a whole parquet file) over the file open as ``old_fd`` so that both
    footers read their own pages; None when either cannot be relocated (module doc)."""
    parts = _split(data)
    if parts is None:
        return None
    body, footer = parts
    try:
        new = _Footer(footer)
        size = os.fstat(old_fd).st_size
    except (ValueError, OSError):
        return None
    old = _file_footer(old_fd, size)
    if old is None:
        return None
    footer_at, extent = old
    if extent is None:  # keep everything between the magic and the old footer
        start, end = 4, footer_at
    elif extent == (0, 0):
        start = end = 4
    else:
        start, end = extent
        if not 4 <= start <= end <= footer_at:
            return None
    n = len(body)
    # The footer's offsets are varints: shifted further they can only get longer. Place the pieces
    # for the longest it can be, then write it where it ends the file.
    tail_len = len(new.shifted(4 * (max(size, end) + n + len(footer)))) + 8
    keep = [(start, end)] if start < end else []
    at, new_size = _place(size, tail_len, start, end, n)
    if new_size != size:
        # The file grows. A reader that took the old size from a listing looks for the footer at
        # the old end: the old footer stays there, with the old pages it points at.
        at, new_size = _place(size, tail_len, start if keep else footer_at, size, n)
        keep.append((footer_at, size))
    if new.refused and at != 4:  # a page index or encryption: only where nothing moves
        return None
    return Layout(tuple(keep), at, new.shifted(at - 4), new_size)


def _place(size: int, tail_len: int, start: int, end: int, n: int) -> tuple[int, int]:
    """Where ``n`` bytes of pages go, and the file's size, for a file of ``size`` bytes whose old
    pages [start, end) stay and which ends in a footer of at most ``tail_len`` bytes.

    The pages go to the front when they fit before the old ones, else after them and at least a
    quarter more than their own length from the front, so that the next version, slightly larger,
    fits at the front again: versions alternate between two places. The size stays the old one
    while everything fits (a reader that took the size from an earlier listing, as Polars does,
    then finds the new footer where it looks); else it grows by half again, which happens a few
    times in a file's life."""
    at = 4 if start == end or 4 + n <= start else _up(max(end, 4 + n + n // 4))
    used = max(at + n, end) + tail_len
    if used > size:
        size = _up(used + 512 + used // 2)
    return at, size


def _up(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def write(fd: int, old_fd: int, data: memoryview, layout: Layout) -> None:
    """Write the relocated file into the new, empty file ``fd`` (unwritten gaps stay holes)."""
    body, _ = _split(data) or (memoryview(b""), b"")
    _pwrite(fd, memoryview(_MAGIC), 0)
    for start, end in layout.keep:
        _copy(old_fd, fd, start, end - start)
    _pwrite(fd, body, layout.at)
    tail = layout.footer + _LEN.pack(len(layout.footer)) + _MAGIC
    _pwrite(fd, memoryview(tail), layout.size - len(tail))  # the footer ends the file


def _pwrite(fd: int, view: memoryview, at: int) -> None:
    while view:
        n = os.pwrite(fd, view, at)
        view = view[n:]
        at += n


def _copy(src: int, dst: int, at: int, n: int) -> None:
    """Copy ``n`` bytes at offset ``at`` of ``src`` to the same offset of ``dst``."""
    end = at + n
    try:
        while at < end:
            done = os.copy_file_range(src, dst, end - at, at, at)
            if done == 0:
                raise OSError(errno.EIO, "old parquet file shrank while being copied")
            at += done
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while at < end:  # a file system without copy_file_range
        chunk = os.pread(src, min(end - at, 1 << 20), at)
        if not chunk:
            raise OSError(errno.EIO, "old parquet file shrank while being copied")
        _pwrite(dst, memoryview(chunk), at)
        at += len(chunk)


# -- punching out the dead pages ------------------------------------------------------------------


def _load_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name, use_errno=True), "fallocate", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
    return fn


_FALLOCATE = _load_fallocate()
_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE


@dataclass(frozen=True)
class _Punch:
    root: str
    rel: str
    ino: int
    mtime_ns: int
    size: int
    ranges: tuple[tuple[int, int], ...]
    due: float  # wall-clock time.time()


def _file_footer(fd: int, size: int) -> tuple[int, tuple[int, int] | None] | None:
    """Where the footer of the parquet file open as ``fd`` starts, and its pages' extent
    (``_Footer.extent``); None when it cannot be read."""
    try:
        footer = footer_bytes(size, lambda n, at: os.pread(fd, n, at))
        if footer is None:
            return None
        return size - 8 - len(footer), _Footer(footer).extent()
    except (ValueError, OSError):
        return None


def _live_ranges(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The ranges the file's current footer needs: its pages and the footer itself; None when the
    footer cannot be read."""
    found = _file_footer(fd, size)
    if found is None:
        return None
    footer_at, extent = found
    live = [(0, 4), (footer_at, size)]
    if extent is None:
        live.append((4, footer_at))
    elif extent != (0, 0):
        live.append(extent)
    return live


def punch_now(
    root: str, rel: str, ino: int, mtime_ns: int, size: int, ranges: tuple[tuple[int, int], ...]
) -> int:
    """Free the disk blocks of the lake file ``rel``'s byte ranges ``ranges`` if it is still the
    file that was written (same inode, mtime and size) and none of them holds anything its current
    footer points at; how many ranges were punched. The file's size, its mtime (the lake's change
    token, ``LakeFS.mtime_key``) and every other byte stay as they are. A path that leaves the lake
    through a symbolic link is left alone."""
    if _FALLOCATE is None or not ranges or not _safe_rel(rel):
        return 0
    path = os.path.join(root, rel)
    if os.path.realpath(path) != os.path.join(os.path.realpath(root), rel):
        return 0
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0  # replaced by a later write, or gone: nothing to punch
    done = 0
    try:
        st = os.fstat(fd)
        if (st.st_ino, st.st_mtime_ns, st.st_size) != (ino, mtime_ns, size):
            return 0
        if st.st_uid != os.geteuid():
            return 0  # its mtime (the change token) could not be restored after the punch
        # The stat can match a later version (an inode reused within one tick of a coarse clock):
        # the current footer says what must stay.
        live = _live_ranges(fd, size)
        if live is None:
            return 0
        for start, end in ranges:
            if not 4 <= start < end <= size or any(start < e and s < end for s, e in live):
                continue
            if _FALLOCATE(fd, _PUNCH, start, end - start) != 0:
                log.debug("cannot punch holes in %s: %s", path, os.strerror(ctypes.get_errno()))
                break
            done += 1
        if done:
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))  # a punch changes no content
        return done
    finally:
        os.close(fd)


_queue: list[tuple[float, int, _Punch]] = []  # a heap by due time
_seq = itertools.count()
_cond = threading.Condition()
_worker: threading.Thread | None = None
_loaded: set[str] = set()


def schedule(
    root: str,
    rel: str,
    st: os.stat_result | None,
    dead: tuple[tuple[int, int], ...],
    delay: float | None = None,
) -> None:
    """Punch out the ``dead`` ranges of the file just renamed to ``rel`` (``st``: its stat as
    written) ``delay`` seconds from now, in a background thread of this process (or of a later
    one, module doc)."""
    if st is None or not dead:
        return
    due = time.time() + (PUNCH_DELAY_S if delay is None else delay)
    _enqueue([_Punch(root, rel, st.st_ino, st.st_mtime_ns, st.st_size, tuple(dead), due)])


def _enqueue(items: list[_Punch]) -> None:
    global _worker
    with _cond:
        for item in items:
            heapq.heappush(_queue, (item.due, next(_seq), item))
        _cond.notify()
        if _worker is None:
            _worker = threading.Thread(target=_run, name="lake-punch", daemon=True)
            _worker.start()
            atexit.register(_save_pending)


def _run() -> None:
    while True:
        with _cond:
            while not _queue or _queue[0][0] > time.time():
                _cond.wait(None if not _queue else max(0.01, _queue[0][0] - time.time()))
            item = heapq.heappop(_queue)[2]
        try:
            punch_now(item.root, item.rel, item.ino, item.mtime_ns, item.size, item.ranges)
        except Exception as exc:  # the dead pages stay until the file is rewritten; the thread goes on
            log.debug("cannot punch holes in %s: %s", item.rel, exc)


def _save_pending() -> None:
    """At exit: record the punches not yet done, per lake, for a later process."""
    with _cond:
        items = [entry[2] for entry in _queue]
        _queue.clear()
    by_root: dict[str, list[_Punch]] = {}
    for item in items:
        by_root.setdefault(item.root, []).append(item)
    for root, group in by_root.items():
        if not os.path.isdir(root):
            continue  # the lake was removed meanwhile: nothing left to punch
        directory = os.path.join(root, PENDING_DIR)
        rows = [[p.rel, p.ino, p.mtime_ns, p.size, [list(r) for r in p.ranges], p.due] for p in group]
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        try:
            os.makedirs(directory, exist_ok=True)
            # named like every temp file of the lake, so that ``lake compact --sweep`` knows it
            tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            Path(tmp).write_text(json.dumps(rows))
            os.replace(tmp, os.path.join(directory, name))
        except OSError as exc:  # the dead pages stay on disk until the files are rewritten
            log.debug("cannot record pending hole punches in %s: %s", directory, exc)


def load_pending(root: str, *, force: bool = False) -> int:
    """Take over the punches earlier processes left for the lake at ``root`` (once per process
    unless ``force``); returns how many files were queued. Records that do not parse are dropped."""
    if root in _loaded and not force:
        return 0
    _loaded.add(root)
    directory = os.path.join(root, PENDING_DIR)
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return 0
    items: list[_Punch] = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            text = Path(path).read_text()
            os.unlink(path)  # this process owns them now; a crash before punching only costs disk
        except (OSError, ValueError):
            continue  # taken by another process, or unreadable
        try:
            rows = json.loads(text)
        except Exception:  # not JSON, or nested too deep for the parser
            continue
        for row in rows if isinstance(rows, list) else []:
            item = _record(root, row)
            if item is not None:
                items.append(item)
    if items:
        _enqueue(items)
    return len(items)


def _record(root: str, row: object) -> _Punch | None:
    """A punch from a record of ``_save_pending``, or None if it is not one."""
    if not isinstance(row, list) or len(row) != 6 or not all(isinstance(v, int) for v in row[1:4]):
        return None
    rel, ino, mtime_ns, size, ranges, due = row
    if not isinstance(rel, str) or not _safe_rel(rel):
        return None
    try:
        spans = tuple((int(a), int(b)) for a, b in ranges)
        due = float(due)
    except Exception:  # not pairs of integers, not a number
        return None
    if not math.isfinite(due):
        return None
    if not all(4 <= a < b <= size for a, b in spans):
        return None
    # a due time far ahead (a bad record, a clock that jumped) would never come: a delay at most
    return _Punch(root, rel, ino, mtime_ns, size, spans, min(due, time.time() + PUNCH_DELAY_S))


def _safe_rel(rel: str) -> bool:
    """A parquet file's path inside the lake (a record naming anything else is ignored)."""
    try:
        rel.encode()
    except UnicodeEncodeError:  # a lone surrogate: no file of the lake's
        return False
    # string tests, not pathlib: a process taking over a few thousand records checks each one
    # (pathlib took ~30 µs a record, most of an appended day's offsets run's write)
    return (
        rel.endswith(".parquet")
        and "\x00" not in rel
        and not rel.startswith("/")
        and ".." not in rel.split("/")
    )
