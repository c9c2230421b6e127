"""Temp files a killed writer left in the lake, and their removal (``lake compact --sweep``).

Every local write goes through a hidden temp file next to its target (``LakeFS.write_atomic``:
``.<name>.tmp-<pid>-<hex>``, ``-<i>`` appended in a batch; ``lake.store.swap`` briefly keeps the
replaced file as ``.<name>.tmp-old-<pid>-<hex>``). A process killed between creating one and
renaming it leaves it behind. Readers never see these files (hidden, and not ``*.parquet``), so
they only take disk space, but a writer killed often (a live feed under a supervisor that restarts
it) piles them up. Removing one is always safe once its writer is gone: the target is complete on
its own (the old or the new content, see ``write_atomic``), and a ``.tmp-old-`` file is a second
link to a file that either is the target or has been replaced by it.

Which ones go: those of a process that no longer runs on this machine, made at least ``min_age_s``
ago (a writer on another machine sharing the directory has its own process ids; no write takes that
long), and any older than a day whatever their process id says (it may have been reused). Age is
taken from the inode change time too: a ``.tmp-old-`` link carries its target's old modification
time, but linking it changed its ctime, so a running swap's link is never taken for an old one.
A file that cannot be removed (another user's directory) is counted as kept.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from lake.store.fs import LakeFS

__all__ = ["MIN_AGE_S", "TEMP_RE", "Sweep", "pid_alive", "sweep_temps"]

TEMP_RE = re.compile(r"^\..+\.tmp-(?:old-)?(?P<pid>\d+)-[0-9a-f]{8}(?:-\d+)?$")
MIN_AGE_S = 600.0
_ANY_PID_AGE_S = 86_400.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one of another user counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True)
class Sweep:
    """What ``sweep_temps`` found: temp files removed, kept (a writer may still own them, or they
    could not be removed), and the bytes their removal freed."""

    removed: int = 0
    kept: int = 0
    bytes_freed: int = 0


def sweep_temps(lfs: LakeFS, *, min_age_s: float = MIN_AGE_S, now: float | None = None) -> Sweep:
    """Remove the temp files killed writers left anywhere under the lake root (module doc).

    Walks the whole lake: seconds for a lake of many day partitions. On an object store a write is
    one request and leaves no temp file, so there is nothing to do."""
    if not lfs.is_local:
        return Sweep()
    now = time.time() if now is None else now
    removed = kept = freed = 0
    for dirpath, _dirs, files in os.walk(lfs.full("")):
        for name in files:
            m = TEMP_RE.match(name)
            if m is None:
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
            except OSError:
                kept += 1
                continue
            age = now - max(st.st_mtime, st.st_ctime)
            if age >= _ANY_PID_AGE_S or (age >= min_age_s and not pid_alive(int(m["pid"]))):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError:
                    kept += 1
                    continue
                removed += 1
                if st.st_nlink == 1:  # a second link to a partition frees nothing
                    freed += st.st_size
            else:
                kept += 1
    return Sweep(removed, kept, freed)
