"""Live offsets: keep #6's all-offset tables current as base candles land.

After the writer stores candles, the feed calls ``note(symbols)``; a background task coalesces the
symbols noted meanwhile and runs #6's incremental ``build_offsets`` for them (base = the feed's
interval, every offset of each target), in a thread. That build recomputes exactly the bins that can
see a changed base partition and rewrites only files whose content changes, so the table is always
what ``lake offsets`` would produce from the same klines. A closed period only adds candles, so each
build is a tail run: the new bins of all the noted symbols and offsets go into one new file of the
offsets tail (lake/transform/tail.py), not a file per (offset, symbol) — 12k of them for 1,015
symbols and 1h — and a build folds a series' tail into its period files once it spans about a
month (8 days for targets under 1h, whose files are monthly). A new base candle at ``t`` completes one
bin per target (the offset whose bins end at ``t + base``); bins still missing their last candle
are not kept by #6 and appear when it lands.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lake.errors import LakeError
from lake.store.fs import LakeFS
from lake.transform.build import build_offsets
from lake.transform.offsets import offset_plan

__all__ = ["LiveOffsets", "OffsetStats"]

log = logging.getLogger("lake.live.offsets")


@dataclass
class OffsetStats:
    builds: int = 0
    bins: int = 0
    written: int = 0
    errors: int = 0
    seconds: float = 0.0
    last_error: str = ""
    by_target: dict[str, int] = field(default_factory=dict)


class LiveOffsets:
    """Offsets of ``targets`` (e.g. ``["1h"]``) built from one feed's ``base`` interval."""

    def __init__(
        self,
        lfs: LakeFS,
        trade_type: str,
        base: str,
        targets: Iterable[str],
        *,
        method: str | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.lfs = lfs
        self.trade_type = trade_type
        self.base = base
        # (method None: the one each table was built with, else seed; see build_offsets)
        self.targets = [offset_plan(t, base, "all", method or "seed").target.name for t in targets]
        self.method = method
        self.on_error = on_error
        self.stats = OffsetStats()
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._lock = threading.Lock()

    def _build(self, *args: Any, **kwargs: Any) -> Any:
        # One build at a time, also across a cancelled caller whose thread still runs: the final
        # build at shutdown must not be overwritten by an older one finishing after it.
        with self._lock:
            return build_offsets(*args, **kwargs)

    def note(self, symbols: Iterable[str]) -> None:
        """Symbols whose base candles changed: their bins are rebuilt soon."""
        before = len(self._dirty)
        self._dirty.update(symbols)
        if len(self._dirty) != before:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def run(self) -> None:
        """Build whenever symbols were noted (until cancelled)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.build_pending()

    async def build_pending(self) -> None:
        """Build the offsets of every symbol noted so far (also the final flush at shutdown)."""
        if not self._dirty:
            return
        symbols, self._dirty = sorted(self._dirty), set()
        for target in self.targets:
            t0 = time.perf_counter()
            try:
                res = await asyncio.to_thread(
                    self._build,
                    self.lfs,
                    self.trade_type,
                    target,
                    base=self.base,
                    offsets="all",
                    method=self.method,
                    symbols=symbols,
                    missing_ok=True,  # a symbol noted before its candles reach the partitions
                    workers=2,
                )
            except asyncio.CancelledError:
                # Cancelled at shutdown while the build runs on in its thread: the final
                # build_pending must build these symbols again (after that thread, under the lock),
                # or the run could end with that build still writing.
                self._dirty.update(symbols)
                raise
            except (LakeError, OSError, pl.exceptions.PolarsError) as exc:
                # PolarsError: a base partition replaced while being scanned (a torn read): retried
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self._dirty.update(symbols)  # try again with the next batch
                log.error("%s %s offsets from %s failed: %s", self.trade_type, target, self.base, exc)
                if self.on_error is not None:
                    self.on_error(f"{self.trade_type} {target} offsets failed", self.stats.last_error)
                continue
            self.stats.builds += 1
            self.stats.bins += res.bins
            self.stats.written += res.written
            self.stats.seconds += time.perf_counter() - t0
            self.stats.by_target[target] = self.stats.by_target.get(target, 0) + res.written
