"""Deleting a benchmark's scratch files without slowing the next measurement's file creation.

This VM's ext4 has no journal, so a new inode skips every inode freed in the last 60 s (5 min while
its inode-table block is dirty; ext4's ``recently_deleted()``). Right after a bench deleted the ~11k
files and directories of an offsets build, creating a build's directories and files cost ~0.3 ms
each instead of ~0.02 ms, and perf put a quarter of the build's samples in that search: a harness
artifact, not the code measured. So benches delete only after their measurements (``delete``
notes when in a stamp file) and start a minute after the last deletion (``settle``), across runs.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SETTLE_S", "delete", "settle"]

SETTLE_S = 60.0


def delete(paths: Iterable[Path], stamp: Path) -> None:
    """Delete ``paths`` (directories) and, if any existed, note the time in ``stamp``."""
    gone = [p for p in paths if p.exists()]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    if gone:
        os.sync()  # a clean inode-table block is "recent" for 60 s, a dirty one for 300
        stamp.write_text(str(time.time()))


def settle(stamp: Path) -> None:
    """Wait until the deletion noted in ``stamp`` is ``SETTLE_S`` old."""
    try:
        left = SETTLE_S - (time.time() - float(stamp.read_text()))
    except (OSError, ValueError):
        return
    if left > 0:
        print(f"waiting {left:.0f} s after the last deletion (bench/_settle.py)", file=sys.stderr)
        time.sleep(left)
