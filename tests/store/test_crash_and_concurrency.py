"""Real processes: SIGKILL mid-write and concurrent writers to one partition."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import polars as pl

from lake.store.klines import scan_klines
from tests.store.conftest import parquet_files

WRITER = textwrap.dedent(
    """
    import sys
    from lake.store.klines import write_klines
    from tests.store.helpers import frame, opens, t0_ms
    root = sys.argv[1]
    rows = opens(t0_ms(), 86_400, 1000)
    frames = [frame(rows, base=100.0), frame(rows, base=200.0)]
    i = 0
    while True:
        write_klines(root, "usdt_spot", "1s", "BTCUSDT", frames[i % 2])
        i += 1
        print(i, flush=True)
    """
)

BATCHES = textwrap.dedent(
    """
    import sys
    from lake.store.klines import write_klines
    from tests.store.helpers import frame, t0_ms
    root, parity, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for b in range(n):
        idx = [i for i in range(b * 6, b * 6 + 6) if i % 2 == parity]
        write_klines(root, "usdt_perp", "5m", "BTCUSDT", frame([t0_ms() + i * 300_000 for i in idx]))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_mid_write_leaves_previous_partition_intact(lake_root: str) -> None:
    tmp_path = lake_root
    from tests.store.helpers import frame, opens, t0_ms

    rows = opens(t0_ms(), 86_400, 1000)
    versions = [frame(rows, base=100.0), frame(rows, base=200.0)]
    rng = random.Random(7)
    kills_after_first_write = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=_env(), text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one complete write exists
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills_after_first_write += 1
        df = scan_klines(tmp_path, "usdt_spot", "1s").collect().drop("symbol").sort("candle_begin_time")
        assert df.height == 86_400
        assert any(df.equals(v) for v in versions), "partition is neither the old nor the new version"
    assert kills_after_first_write == 5
    assert len(parquet_files(lake_root)) == 1


def test_two_concurrent_writer_processes_lose_no_rows(lake_root: str) -> None:
    tmp_path = lake_root
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", BATCHES, str(tmp_path), str(p), str(n)], env=_env())
        for p in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    df = scan_klines(tmp_path, "usdt_perp", "5m").collect()
    assert df.height == n * 6
    assert df["candle_begin_time"].is_unique().all()
    assert df.select(pl.col("candle_begin_time").dt.epoch("ms").min()).item() > 0
