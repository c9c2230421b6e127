"""Benchmark: the offsets tail's visibility rule at 100 and 1000 tail files (``python -m bench.tail_resolve``).

``lake.transform.tail.resolve`` decides, from the coverage and marker rows of every tail file,
which layers are live and when each file became hidden; every offsets build and live offsets run
calls it (``load_state``), and ``cleanup`` again after each removal. It looked, for each row, at
every newer file of its symbol: O(n²) in the files, 69–76 ms at 100 files of 300 symbols. It now
finds the nearest newer file that hides a row with a binary search: O(n log n). This bench times
both, the old algorithm being the reference kept in the tests
(``tests/live/test_live_persisted_cap_and_tail.py``), on the same synthetic files (each run's layer
covers ~90% of the symbols from a start at or a little before the previous one, a fold marking every
symbol every 40 files), checks they agree, and prints ONE JSON line: the best time of each at each
size and the ratio new ÷ old (below 1: faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable

from lake.transform.tail import resolve
from tests.live.test_live_persisted_cap_and_tail import resolve_reference, tail_files


def _best(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=300)
    ap.add_argument("--files", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    out: dict[str, object] = {
        "bench": "tail_resolve",
        "command": "python -m bench.tail_resolve "
        f"--symbols {args.symbols} --files {' '.join(map(str, args.files))} --rounds {args.rounds}",
        "symbols": args.symbols,
    }
    for n in args.files:
        names, metas, counts = tail_files(n, args.symbols)
        new = resolve("d", names, metas, counts)
        old = resolve_reference("d", names, metas, counts)
        if dataclasses.asdict(new) != dataclasses.asdict(old):
            raise SystemExit(f"resolve differs from the reference at {n} files")
        t_new = _best(lambda: resolve("d", names, metas, counts), args.rounds)  # noqa: B023
        t_old = _best(lambda: resolve_reference("d", names, metas, counts), args.rounds)  # noqa: B023
        out |= {
            f"rows_{n}": sum(map(len, metas)),
            f"new_{n}_s": round(t_new, 4),
            f"old_{n}_s": round(t_old, 4),
            f"new_over_old_{n}": round(t_new / t_old, 4),
        }
    out |= {
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
