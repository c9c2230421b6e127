"""Findings of a soak of `lake live` (hours of simulated time against a separate `lake sim`,
bench/_work/scratch/soak_live.py): what only shows after days of running, checked on counts."""

from __future__ import annotations

import asyncio
import gc
import platform
from pathlib import Path
from typing import Any

import pytest

from lake.binance.klines import klines_from_rest
from lake.live import runner as runner_mod
from lake.live.appender import KlineWriter
from lake.live.runner import LiveConfig, LiveRunner
from lake.settings import Settings
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines

M = 60_000
D = 86_400_000
DAY0 = 1_751_068_800_000  # 2025-06-28T00:00Z


def _rows(t0: int, n: int) -> list[list[Any]]:
    return [
        [t, str(1 + k), str(2 + k), "0.5", "1.5", "10", t + M - 1, "15", k, "5", "7", "0"]
        for k, t in enumerate(range(t0, t0 + n * M, M))
    ]


def test_compaction_cache_keeps_only_the_partition_each_symbol_appends_to(tmp_path: Path) -> None:
    """The compactor's partition cache (``KlineWriter.cache``) is there to append to the partition a
    symbol's next candles go to. Yesterday's day partition (1m) or last month's (5m) never gets
    live candles again, yet it stayed cached until the row cap (4M rows, ~320 MB a feed) pushed it
    out: a 1m feed's memory grew day after day up to that cap (~12 days for 235 symbols, ~3 for
    1,000). One partition per symbol is kept now: after four days of compactions the cache holds
    today's partitions only."""
    lfs = LakeFS(tmp_path)
    writer = KlineWriter(lfs, "usdt_perp", "1m", threads=1)
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    try:
        for day in range(4):
            for step in range(3):  # three compactions a day of 20 new candles each
                for sym in symbols:
                    t0 = DAY0 + day * D + step * 20 * M
                    writer.write_partition(sym, klines_from_rest(_rows(t0, 20), "ws"))
        assert writer.cache.hits > 0  # the cache did serve the appends
        assert len(writer.cache) == len(symbols)
        assert writer.cache.rows == len(symbols) * 60  # today's 60 candles per symbol, nothing older
        for sym in symbols:  # and the partitions hold every candle
            assert scan_klines(lfs, "usdt_perp", "1m", [sym]).collect().height == 4 * 60
    finally:
        writer.close()


async def test_the_scheduled_full_collection_gives_the_free_heap_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live runner's full garbage collection (at most every 30 s, between closing bursts) is
    followed by a trim of the C heap: without it the free pages the writer threads left in glibc's
    arenas stayed resident, and a soak's RSS grew by 160 MB in 7.5 simulated hours (the Python
    heap flat). Counted here, once per scheduled collection."""
    if platform.libc_ver()[0] == "glibc":
        assert runner_mod.trim_heap()  # the real call is found (and runs) here
    trims: list[int] = []

    def counted() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(runner_mod, "trim_heap", counted)
    monkeypatch.setattr(LiveRunner, "_real_s", staticmethod(lambda feed, ms: 0.0))
    runner = LiveRunner(
        Settings(root=str(tmp_path)), LiveConfig(trade_types=("usdt_perp",), intervals=("1m",))
    )
    runner._gc_thresholds = gc.get_threshold()  # (set once the catch-up is done)
    feed = runner.feeds[0]
    runner._collect_soon(feed)
    runner._collect_soon(feed)  # within 30 s of the last one: not scheduled again
    await asyncio.sleep(0.05)
    assert trims == [1]
