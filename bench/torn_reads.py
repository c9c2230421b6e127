"""Queries over partitions being rewritten: failed queries with plain renames, file leases, relocation.

    python -m bench.torn_reads                         # 40 series, 15 s per mode, a DuckDB and a Polars reader
    python -m bench.torn_reads --seconds 30 --readers duckdb,duckdb,duckdb,polars

A writer process rewrites every partition of a small lake (``write_klines`` of one more candle per
series, round after round) while reader processes query it in a loop: DuckDB on the ``klines``
view of ``lake.connect``, Polars on a bare ``scan_parquet`` of the partition files (no retries).
Three phases in the same run: plain ``os.replace`` (``LAKE_NO_LEASES=1 LAKE_NO_RELOCATE=1``, what
lake did first), file leases only (``LAKE_NO_RELOCATE=1``, ``lake.store.swap``) and relocation
(the default, ``lake.store.relocate``). Printed per phase and reader engine: queries, failed
queries and their share, the kinds of failure; per phase the partition files rewritten per second
and the writer's swap counters.
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

_READER = """
import json, sys, time
import duckdb, polars as pl
import lake
root, engine, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
queries = failed = 0
kinds = {}
if engine == "duckdb":
    con = lake.connect(root)
    query = lambda: con.execute("SELECT count(*), sum(volume) FROM klines").fetchall()
    errors = (duckdb.Error,)
else:
    files = f"{root}/klines/trade_type=usdt_perp/interval=5m/*/*/data.parquet"
    query = lambda: pl.scan_parquet(files).select(pl.len(), pl.col("volume").sum()).collect()
    errors = (Exception,)
pyo3_panic = pl.exceptions.PanicException
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        query()
    except BaseException as exc:  # Polars panics (pyo3's PanicException) on some torn reads
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not isinstance(exc, errors + (pyo3_panic,)):
            raise
        failed += 1
        kind = str(exc).split("\\n")[0][:60]
        kinds[kind] = kinds.get(kind, 0) + 1
    queries += 1
print(json.dumps({"queries": queries, "failed": failed, "kinds": kinds}))
"""

_MODES = {
    "plain": {"LAKE_NO_LEASES": "1", "LAKE_NO_RELOCATE": "1"},
    "leases": {"LAKE_NO_RELOCATE": "1"},
    "relocated": {},
}


def _phase(root: str, args: argparse.Namespace, mode: str, start: int) -> tuple[dict[str, object], int]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAKE_NO_LEASES", "LAKE_NO_RELOCATE")}
    env.update(_MODES[mode])
    cwd = Path(__file__).resolve().parents[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, root, str(args.series), str(args.seconds), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    readers = [
        (
            engine,
            subprocess.Popen(
                [sys.executable, "-c", _READER, root, engine, str(args.seconds)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=cwd,
            ),
        )
        for engine in args.readers.split(",")
    ]
    out = writer.communicate()[0].split()
    end, writes, guarded, busy, reverted, forced, plain = (int(x) for x in out)
    by_engine: dict[str, dict[str, object]] = {}
    for engine, proc in readers:
        got = json.loads(proc.communicate()[0])
        into = by_engine.setdefault(engine, {"queries": 0, "failed": 0, "kinds": {}})
        into["queries"] = int(into["queries"]) + got["queries"]  # type: ignore[call-overload]
        into["failed"] = int(into["failed"]) + got["failed"]  # type: ignore[call-overload]
        kinds: dict[str, int] = into["kinds"]  # type: ignore[assignment]
        for k, v in got["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    for figures in by_engine.values():
        figures["failed_share"] = round(int(figures["failed"]) / max(int(figures["queries"]), 1), 5)  # type: ignore[call-overload]
    return {
        "files_rewritten_per_s": round(writes / args.seconds, 1),
        "swaps_guarded": guarded,
        "swaps_busy": busy,
        "swaps_reverted": reverted,
        "swaps_forced": forced,
        "swaps_plain": plain,
        **by_engine,
    }, end


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--readers", default="duckdb,polars", help="reader processes by engine (duckdb, polars)")
    ap.add_argument("--modes", default=",".join(_MODES), help="phases to run, in order")
    args = ap.parse_args()
    phases: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="lake-torn-") as tmp:
        for i in range(args.series):
            df = synthetic_klines(i, START_MS, 8000, holes=False).head(4000)
            write_klines(tmp, "usdt_perp", "5m", f"S{i:03d}USDT", df)
        t0 = time.time()
        end = 4000  # each phase appends candles after the previous one's: every write rewrites a file
        for mode in args.modes.split(","):
            phases[mode], end = _phase(tmp, args, mode, end)
    failed = {
        mode: sum(int(v["failed"]) for v in p.values() if isinstance(v, dict)) for mode, p in phases.items()
    }  # type: ignore[call-overload]
    print(
        json.dumps(
            {
                "bench": "torn_reads",
                "series": args.series,
                "seconds_per_phase": args.seconds,
                "readers": args.readers,
                "failed_queries": failed,
                **phases,
                "wall_s": round(time.time() - t0, 1),
                "load_avg": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
