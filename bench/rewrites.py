"""What relocated rewrites cost the writer: partition rewrites per second, relocated vs lease swaps vs plain renames.

    python -m bench.rewrites                   # 40 series, 3 rounds of 8 s per mode, interleaved
    python -m bench.rewrites --rounds 5 --seconds 10

A writer process (no reader) rewrites every partition of a small lake, ``write_klines`` of one more
5m candle per series round after round (a month partition of ~4,000 candles, ~200 KB), the way
``bench.torn_reads`` does, in each of three modes: relocated (the default, ``lake.store.relocate``:
the old pages are copied into the new file), lease swaps only (``LAKE_NO_RELOCATE=1``) and plain
renames (both off). Modes alternate round by round so that drift of a shared machine hits all of
them. Printed: median rewrites per second per mode, ratios relocated ÷ leases and relocated ÷ plain,
and each file's apparent size and disk use after the last round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._lake import WORK

_WRITER = """
import os, sys, tempfile, time, json
from lake.store.klines import write_klines
from bench._lake import synthetic_klines
root, series, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = [synthetic_klines(i, 1_704_067_200_000, 8000, holes=False) for i in range(series)]
for i, df in enumerate(rows):
    write_klines(root, "usdt_perp", "5m", f"S{i:03d}USDT", df.head(4000))
n, writes = 4001, 0
t0 = time.perf_counter()
while time.perf_counter() - t0 < seconds:
    for i, df in enumerate(rows):
        write_klines(root, "usdt_perp", "5m", f"S{i:03d}USDT", df.head(n))
        writes += 1
    n += 1
rate = writes / (time.perf_counter() - t0)
files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "klines")) for f in fs if f == "data.parquet"]
apparent = sum(os.path.getsize(f) for f in files)
disk = sum(os.stat(f).st_blocks * 512 for f in files)
print(json.dumps({"rate": rate, "apparent": apparent, "disk": disk, "files": len(files)}))
"""

_MODES = {
    "relocated": {},
    "leases": {"LAKE_NO_RELOCATE": "1"},
    "plain": {"LAKE_NO_LEASES": "1", "LAKE_NO_RELOCATE": "1"},
}


def _round(mode: str, series: int, seconds: float) -> dict[str, float]:
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("LAKE_NO_LEASES", "LAKE_NO_RELOCATE")}
    env.update(_MODES[mode])
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rewrites-", dir=WORK) as root:
        run = subprocess.run(
            [sys.executable, "-c", _WRITER, root, str(series), str(seconds)],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    t0 = time.time()
    got: dict[str, list[dict[str, float]]] = {mode: [] for mode in _MODES}
    for _ in range(args.rounds):
        for mode in _MODES:
            got[mode].append(_round(mode, args.series, args.seconds))
    rate = {mode: statistics.median(r["rate"] for r in rounds) for mode, rounds in got.items()}
    last = {mode: rounds[-1] for mode, rounds in got.items()}
    print(
        json.dumps(
            {
                "bench": "rewrites",
                "series": args.series,
                "rounds": args.rounds,
                "seconds_per_round": args.seconds,
                "rewrites_per_s": {m: round(v, 1) for m, v in rate.items()},
                "rewrites_per_s_all": {m: [round(r["rate"], 1) for r in rs] for m, rs in got.items()},
                "relocated_vs_leases": round(rate["relocated"] / rate["leases"], 3),
                "relocated_vs_plain": round(rate["relocated"] / rate["plain"], 3),
                "apparent_mb": {m: round(v["apparent"] / 1e6, 1) for m, v in last.items()},
                "disk_mb_unpunched": {m: round(v["disk"] / 1e6, 1) for m, v in last.items()},
                "wall_s": round(time.time() - t0, 1),
                "load_avg": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
