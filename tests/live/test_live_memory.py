"""Memory a long ``lake live`` run must not accumulate (bench/live_soak.py measures the process).

Polars 2.1 keeps one small object alive for every file-like object ``read_parquet`` reads
(``pl.read_parquet(io.BytesIO(data))``; bytes and paths do not): a live process that reads a few
files per period would hold more of them every day, for as long as it runs. The assertion is on the
number of Python allocations still alive after many reads, not on RSS.
"""

from __future__ import annotations

import gc
import sys

import polars as pl

from lake.binance.klines import klines_from_rest
from lake.live.repair import last_stored
from lake.store.fs import LakeFS
from lake.store.klines import list_partitions, read_partition, write_klines
from lake.store.tables import FUNDING_SCHEMA, read_funding, write_funding

M = 60_000
E = 1_700_000_040_000 - 1_700_000_040_000 % M
READS = 2_000  # a day and a half of 1m periods, one partition read each


def _alive() -> int:
    gc.collect()
    return sys.getallocatedblocks()


def test_reading_a_partition_again_and_again_keeps_nothing_alive(tmp_path) -> None:
    rows = [[t, "1", "2", "0.5", "1.5", "10", t + M - 1, "15", 3, "5", "7", "0"] for t in (E - 2 * M, E - M)]
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", klines_from_rest(rows))
    for _ in range(50):  # (caches and interned names of the first calls)
        assert last_stored(tmp_path, "usdt_perp", "1m", "BTCUSDT") == E - M
    before = _alive()
    for _ in range(READS):
        last_stored(tmp_path, "usdt_perp", "1m", "BTCUSDT")
    grown = _alive() - before
    # one object kept per read would be READS; a handful is noise (gc, the allocator's own blocks)
    assert grown < READS // 10, f"{grown} Python allocations more after {READS} reads"


def test_the_store_readers_keep_nothing_alive_either(tmp_path) -> None:
    """The same for the readers compaction, the offsets tail and funding use (each read a
    ``BytesIO`` of the file's bytes before)."""
    rows = [[t, "1", "2", "0.5", "1.5", "10", t + M - 1, "15", 3, "5", "7", "0"] for t in (E - 2 * M, E - M)]
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", klines_from_rest(rows))
    funding = pl.DataFrame(
        {"funding_time": [E], "funding_rate": [0.0001], "mark_price": [1.5]},
        schema_overrides={"funding_time": pl.Datetime("ms", "UTC")},
    ).cast(FUNDING_SCHEMA)
    write_funding(tmp_path, "usdt_perp", "BTCUSDT", funding)
    lfs = LakeFS(tmp_path)
    (key,) = list_partitions(lfs, "usdt_perp", "1m", "BTCUSDT")
    readers = {
        "read_partition": lambda: read_partition(lfs, key),
        "read_funding": lambda: read_funding(lfs, "usdt_perp", "BTCUSDT"),
    }
    for name, read in readers.items():
        for _ in range(50):
            assert read() is not None
        before = _alive()
        for _ in range(READS):
            read()
        grown = _alive() - before
        assert grown < READS // 10, f"{name}: {grown} Python allocations more after {READS} reads"
