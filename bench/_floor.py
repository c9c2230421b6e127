"""The write floor of a benchmark: a job's output files written bare, nothing computed.

Both ``bench.offsets`` and ``bench.archive_ingest`` compare what lake does with what merely writing
its output costs on the machine: the same relative paths and byte counts, from one buffer, by a few
threads, each file to a temp name, then one file-system sync, the renames and one more sync. lake
syncs twice per batch (or per ``write_klines`` call), so the floor pays less than it does.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lake.store.fs import _syncfs

__all__ = ["FLOOR_THREADS", "write_bare"]

FLOOR_THREADS = 2  # the machine's cores: two writers were 20–35% faster than one (a review measured)


def write_bare(out: Path, sizes: list[tuple[str, int]], threads: int = FLOOR_THREADS) -> float:
    """Write ``sizes`` ((path under ``out``, bytes)) bare into ``out``; the seconds it took."""
    data = memoryview(os.urandom(max((n for _, n in sizes), default=0)))

    def write(part: list[tuple[int, str, int]]) -> list[tuple[Path, Path]]:
        staged = []
        for i, rel, n in part:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.tmp-{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data[:n])
            finally:
                os.close(fd)
            staged.append((tmp, target))
        return staged

    items = [(i, rel, n) for i, (rel, n) in enumerate(sizes)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        staged = [x for part in pool.map(write, [items[k::threads] for k in range(threads)]) for x in part]
    _syncfs(str(out))
    for tmp, target in staged:
        os.replace(tmp, target)
    _syncfs(str(out))
    return time.perf_counter() - t0
