"""Replace a parquet file that readers may be reading, without tearing their reads.

Since ``lake.store.relocate`` this is the fallback: lake's writes relocate a new parquet file over
the old one, which tears no reader at all, and come here only for files that cannot be relocated
(a page index in the payload, an old file that is not parquet) or with ``LAKE_NO_RELOCATE=1``.

DuckDB opens a parquet file twice in one query: once to read its footer, once to read the pages the
footer points to (both handles stay open until the query ends). A plain ``os.replace`` that lands
between the two opens makes the second one read the new file at the old file's offsets: the query
fails ("TProtocolException", "Could not read enough bytes", "Prefetch registered for bytes outside
file") or, in principle, decodes the wrong bytes. Measured with ``bench/torn_reads``: ~4% of queries
over 40 files rewritten continuously.

On Linux a *write lease* (``fcntl(F_SETLEASE, F_WRLCK)``) narrows that window:

1. The lease is granted only while nobody else has the file open, so a reader between its two opens
   (its first handle still open) makes the writer wait and try again.
2. With leases on the old and the new inode, the target is renamed. A reader whose ``open`` hits
   either inode meanwhile is blocked by the kernel until the leases are released.
3. If a reader opened the *old* inode during the swap (its lease shows a pending break), the old
   file is put back under the target name before the leases are released, so that reader's second
   open finds the same file; the swap is retried later.

A file that stays open longer than ``WAIT_S`` is replaced anyway: a reader that has held it that
long is past its second open (both handles are taken back to back) and keeps reading its inode. A
file system or process where leases are not available (not Linux, NFS, files owned by another
user) falls back to ``os.replace`` for good, once, with a debug log line.

What this does not cover: a reader that looked the name up just before the rename and reaches the
lease check only after the leases are released (a preempted reader); two readers that open the old
and the new file during one swap (the swap stands, the one on the old file can tear); Polars, which
closes the file between its metadata and data reads. DuckDB also keeps the footer it read while
*planning* a query for the first file of a glob and reuses it without holding the file open, so the
views put a never-rewritten schema file first in their file lists (``lake.store.schema_files``).
Deleting a file a query has listed and not yet opened is a different race (the tail's, see
``lake.store.tail``). Measured effect: BENCHMARKS.md, ``torn_reads``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import threading
import time
import uuid

__all__ = ["STATS", "WAIT_S", "replace_many", "replace_parquet"]

log = logging.getLogger(__name__)

WAIT_S = 2.0  # longest wait for readers to close a file before it is replaced anyway
_F_SETSIG = getattr(fcntl, "F_SETSIG", None)
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", None)
_BUSY = (errno.EAGAIN, errno.EBUSY)

# Counters for the benchmark and the tests (per process): swaps done under leases, attempts that
# found the file open, swaps undone for a reader, replacements after WAIT_S, and plain replacements.
STATS = {"guarded": 0, "busy": 0, "reverted": 0, "forced": 0, "plain": 0}
_stats_lock = threading.Lock()
_supported = all(x is not None for x in (_F_SETSIG, _F_SETLEASE, _F_GETLEASE)) and not os.environ.get(
    "LAKE_NO_LEASES"
)


def _count(key: str) -> None:
    with _stats_lock:
        STATS[key] += 1


def _lease(fd: int) -> None:
    # The kernel signals the lease holder when a reader breaks the lease; SIGIO (the default) would
    # terminate the process, SIGURG is ignored by default.
    fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)  # type: ignore[arg-type]
    fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_WRLCK)  # type: ignore[arg-type]


def _broken(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, _F_GETLEASE, 0) != fcntl.F_WRLCK)  # type: ignore[arg-type]


def _release(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)  # type: ignore[arg-type]
    os.close(fd)


def _give_up(tmp: str, target: str, why: OSError) -> bool:
    """Replace plainly, and from now on in this process: the guard cannot work here."""
    global _supported
    _supported = False
    log.debug("no lease-guarded swaps here (%s): parquet files are replaced plainly", why)
    os.replace(tmp, target)
    _count("plain")
    return True


def _try_swap(tmp: str, target: str) -> bool:
    """One attempt: True when ``tmp`` is now ``target``, False when a reader was in the way (``tmp``
    is still there)."""
    try:
        old = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.replace(tmp, target)  # nothing to tear: no reader can have opened it
        return True
    try:
        new = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(old)
        raise
    try:
        try:
            _lease(old)
        except OSError as exc:
            if exc.errno in _BUSY:
                _count("busy")
                return False
            return _give_up(tmp, target, exc)  # EINVAL (no lease support), EACCES (not the owner)
        try:
            _lease(new)  # the temp file is normally open nowhere else
            new_leased = True
        except OSError:
            new_leased = False
        directory, name = os.path.split(target)
        keep = os.path.join(directory, f".{name}.tmp-old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.link(target, keep)
        except OSError as exc:  # a file system without hard links (FAT, some FUSE mounts)
            return _give_up(tmp, target, exc)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.unlink(keep)
            raise
        if _broken(old) and not (new_leased and _broken(new)):
            # A reader opened the old file during the swap: give it back the old file under the
            # target name before it is unblocked, and keep the new bytes under tmp for a retry.
            os.link(target, tmp)
            os.rename(keep, target)
            _count("reverted")
            return False
        os.unlink(keep)
        _count("guarded")
        return True
    finally:
        _release(new)
        _release(old)


def replace_many(pairs: list[tuple[str, str]], wait_s: float = WAIT_S) -> None:
    """``os.replace(tmp, target)`` for every pair, each guarded against torn reads (module doc).

    Files a reader holds open are retried with a short backoff while the others proceed; after
    ``wait_s`` they are replaced plainly."""
    pending = list(pairs)
    deadline = time.monotonic() + wait_s
    pause = 0.0005
    while pending:
        if not _supported:
            for tmp, target in pending:
                os.replace(tmp, target)
                _count("plain")
            return
        pending = [(tmp, target) for tmp, target in pending if not _try_swap(tmp, target)]
        if not pending:
            return
        if time.monotonic() >= deadline:
            for tmp, target in pending:
                os.replace(tmp, target)
                _count("forced")
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def replace_parquet(tmp: str, target: str, wait_s: float = WAIT_S) -> None:
    """``os.replace(tmp, target)``, guarded against torn reads (module doc)."""
    replace_many([(tmp, target)], wait_s)
