"""DuckDB queries over partitions being rewritten: failed queries with plain renames vs file leases.

    python -m bench.torn_reads                    # 40 series, 15 s per mode
    python -m bench.torn_reads --series 40 --seconds 30

A writer process rewrites every partition of a small lake (``write_klines`` of one more candle per
series, round after round) while this process queries the ``klines`` view of ``lake.connect`` in a
loop. Two phases in the same run: the writer with ``LAKE_NO_LEASES=1`` (plain ``os.replace``, what
lake did before ``lake.store.swap``) and with file leases (the default). Printed: queries, failed
queries and their share per phase, partition files rewritten per second, the swap counters of the guarded writer, and
``failed_ratio_guarded_vs_plain`` (0 when the guarded phase had no failure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

import lake
from bench._lake import synthetic_klines
from lake.store.klines import write_klines

START_MS = 1_704_067_200_000  # 2024-01-01: one monthly partition per series

_WRITER = """
import sys, time
from lake.store import swap
from lake.store.klines import write_klines
from bench._lake import synthetic_klines
root, series, seconds, n = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rows = [synthetic_klines(i, 1_704_067_200_000, 8000, holes=False) for i in range(series)]
writes, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for i, df in enumerate(rows):
        write_klines(root, "usdt_perp", "5m", f"S{i:03d}USDT", df.head(n))
        writes += 1
    n += 1
print(n, writes, swap.STATS["guarded"], swap.STATS["busy"], swap.STATS["reverted"], swap.STATS["forced"], swap.STATS["plain"])
"""


def _phase(root: str, series: int, seconds: float, leases: bool, start: int) -> tuple[dict[str, object], int]:
    env = {**os.environ}
    if not leases:
        env["LAKE_NO_LEASES"] = "1"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, root, str(series), str(seconds), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    con = lake.connect(root)
    queries = failed = 0
    kinds: dict[str, int] = {}
    while writer.poll() is None:
        try:
            con.execute("SELECT count(*), sum(volume) FROM klines").fetchall()
        except duckdb.Error as exc:
            failed += 1
            kind = str(exc).split("\n")[0][:50]
            kinds[kind] = kinds.get(kind, 0) + 1
        queries += 1
    out = writer.communicate()[0].split()
    end, writes, guarded, busy, reverted, forced, plain = (int(x) for x in out)
    con.close()
    return {
        "queries": queries,
        "files_rewritten_per_s": round(writes / seconds, 1),
        "failed": failed,
        "failed_share": round(failed / max(queries, 1), 5),
        "swaps_guarded": guarded,
        "swaps_busy": busy,
        "swaps_reverted": reverted,
        "swaps_forced": forced,
        "swaps_plain": plain,
        "kinds": kinds,
    }, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lake-torn-") as tmp:
        for i in range(args.series):
            df = synthetic_klines(i, START_MS, 8000, holes=False).head(4000)
            write_klines(tmp, "usdt_perp", "5m", f"S{i:03d}USDT", df)
        t0 = time.time()
        # each phase appends candles after the previous one's, so every write rewrites a file
        plain, end = _phase(tmp, args.series, args.seconds, leases=False, start=4000)
        guarded, _ = _phase(tmp, args.series, args.seconds, leases=True, start=end)
    share_p, share_g = float(plain["failed_share"]), float(guarded["failed_share"])  # type: ignore[arg-type]
    print(
        json.dumps(
            {
                "bench": "torn_reads",
                "series": args.series,
                "seconds_per_phase": args.seconds,
                "failed_ratio_guarded_vs_plain": round(share_g / share_p, 4) if share_p else None,
                "plain": plain,
                "guarded": guarded,
                "wall_s": round(time.time() - t0, 1),
                "load_avg": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
