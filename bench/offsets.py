"""Benchmark: all-offset resampling of a lake of 5m klines (``python -m bench.offsets``).

Measures, on one synthetic lake (``bench/_lake.py``; cached under ``bench/_work/``):

(a) ``build_offsets(interval=1h)``: all 12 offsets from 5m, reading and writing included;
(b) the seed's pandas loop on the same data (``bench/_seed_baseline.py``), reading included;
(c) a bare scan of the same parquet files (every column read once): the physical floor of reading;
(d) the build's output written bare (as many files, directories and bytes, by two threads, with two
    syncs in all; no encoding): the floor of writing this output on this machine, reported as
    ``write_floor_over_scan`` and as ``ours_over_scan_plus_write_floor`` (the build against reading
    its input plus writing its output, one after the other);
then appends one day to every symbol and times the incremental rerun (three times from the same
state, its tail files, manifest and pending punches put back in between: the median is ``incremental_s``, every run is
in ``incremental_runs_s``; one run of ~0.25 s varied by ±30% on this VM), a rerun with nothing to do, a
second appended day (its tail file is merged with the first one), and an explicit fold of the tail
into the yearly files (what a run does about once a month).

Every measurement runs in its own subprocess, so its peak memory (max RSS) is its own; the import
of lake.transform.build is outside the timed call and reported apart (``import_s``). ``*_cpu_s``
are the CPU seconds of the timed call (all threads, user + system), which the machine's load
disturbs much less than the wall clock. The base files are read once before the measurements (their
bytes, in the parent), so that the scan, which runs first, and the build find the same warm page
cache: this VM empties it when idle, and a cold scan made the build look 3.3× the scan instead of
4.6–11.8×. The measurements start a minute after the bench last deleted files, and what it deletes
meanwhile waits in a trash until the end (``bench/_settle.py``). Prints ONE JSON line. ``--symbols``/``--days`` make a
smaller lake for quick runs; ``--skip-seed`` skips (b). The machine is shared: the JSON carries the
load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import polars as pl

from bench._floor import FLOOR_THREADS, write_bare
from bench._lake import PER_DAY, WORK, append_day, ensure_lake, remove_days
from bench._settle import delete, settle

TRADE_TYPE, BASE, TARGET = "usdt_perp", "5m", "1h"
INCREMENTAL_RUNS = 3


def _files(root: Path) -> list[str]:
    series = root / f"klines/trade_type={TRADE_TYPE}/interval={BASE}"
    return [str(d / "data.parquet") for s in sorted(series.iterdir()) for d in sorted(s.iterdir())]


def _warm(root: Path) -> float:
    """Read every base file once (into the page cache); the seconds it took."""
    t0 = time.perf_counter()
    for f in _files(root):
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    return time.perf_counter() - t0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _phase(name: str, root: Path, workers: int) -> dict[str, object]:
    """One measurement, in this process (called in a child)."""
    t_import = time.perf_counter()
    from lake.transform.build import build_offsets

    import_s = time.perf_counter() - t_import
    t0, c0 = time.perf_counter(), _cpu()
    if name == "scan":
        files = _files(root)
        lf = pl.scan_parquet(files, glob=False)
        out = lf.select(pl.all().max()).collect(engine="streaming")
        extra: dict[str, object] = {"files": len(files), "columns": out.width}
    elif name in ("ours", "fold"):
        r = build_offsets(root, TRADE_TYPE, TARGET, base=BASE, workers=workers, fold=name == "fold")
        keep = (
            "bins",
            "written",
            "unchanged",
            "removed",
            "base_partitions_changed",
            "tail_bins",
            "folded",
            "base_rows_read",
        )
        extra = {k: v for k, v in r.to_dict().items() if k in keep}
    elif name == "write_floor":
        extra = _write_floor(root)
    elif name == "seed":
        from bench._seed_baseline import seed_resample_lake

        out_dir = Path(tempfile.mkdtemp(prefix="seed-out-", dir=root.parent))
        try:
            extra = dict(seed_resample_lake(root, out_dir, TRADE_TYPE, BASE, TARGET))
        finally:
            _discard(out_dir)  # deleted after the measurements that follow
    else:
        raise SystemExit(f"unknown phase {name}")
    return {"seconds": time.perf_counter() - t0, "call_cpu_s": _cpu() - c0, "import_s": import_s, **extra}


def _floor_sizes(root: Path) -> Path:
    return WORK / f"floor-sizes-{root.name}.json"


def _output_sizes(root: Path) -> list[tuple[str, int]]:
    """(path under the offsets table, bytes) of every file the build wrote."""
    table = root / "offsets"
    return [(str(p.relative_to(table)), p.stat().st_size) for p in sorted(table.rglob("*.parquet"))]


def _write_floor(root: Path) -> dict[str, object]:
    """(d) The build's output written bare (``bench._floor``): as many files, directories and bytes
    as the build wrote (``_floor_sizes``); no encoding, no reading. What writing this output costs on
    this machine, whatever computes it; a build writing fewer bytes (another encoding) would have a
    lower floor."""
    sizes = [(rel, int(n)) for rel, n in json.loads(_floor_sizes(root).read_text())]
    inner = write_bare(root / "offsets-floor", sizes)
    return {"floor_files": len(sizes), "floor_bytes": sum(n for _, n in sizes), "inner_s": inner}


# What an incremental run changes (its tail files, its manifest, punches of dead pages it leaves to
# a later process): restored between its repetitions.
_RUN_STATE = ("offsets_tail", "_meta/offsets", "_meta/punch")


def _snapshot(root: Path) -> Path:
    """A copy of what an offsets run over an appended day changes."""
    snap = Path(tempfile.mkdtemp(prefix="incremental-state-", dir=root.parent))
    for rel in _RUN_STATE:
        if (root / rel).exists():
            shutil.copytree(root / rel, snap / rel)
    return snap


def _restore(root: Path, snap: Path) -> None:
    """Put the state ``_snapshot`` copied back, so that the incremental run can be timed again."""
    for rel in _RUN_STATE:
        if (root / rel).exists():
            _discard(root / rel)
        if (snap / rel).exists():
            shutil.copytree(snap / rel, root / rel)


def _run_child(name: str, root: Path, workers: int) -> dict[str, object]:
    cmd = [
        sys.executable,
        "-m",
        "bench.offsets",
        "--phase",
        name,
        "--root",
        str(root),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed with exit code {proc.returncode}")
    doc = json.loads(out.decode().strip().splitlines()[-1])
    doc["peak_gib"] = usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB on Linux
    doc["cpu_s"] = usage.ru_utime + usage.ru_stime
    return doc


# What this bench deletes (earlier runs' tables, the seed baseline's output) waits here until the
# measurements are done, and a run starts a minute after the last deletion (bench/_settle.py).
TRASH = WORK / "trash"
_STAMP = WORK / ".deleted-at"


def _discard(path: Path) -> None:
    """Move ``path`` to the trash (deleted after the measurements)."""
    TRASH.mkdir(parents=True, exist_ok=True)
    os.rename(path, TRASH / uuid.uuid4().hex)


def _clean(root: Path, symbols: int, days: int) -> None:
    for table in ("offsets", "offsets_tail", "_meta/offsets", "offsets-floor"):
        if (root / table).exists():
            _discard(root / table)
    remove_days(root, symbols, days)


def _empty_trash() -> None:
    delete(TRASH.iterdir() if TRASH.exists() else [], _STAMP)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, default=300)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--workers", type=int, default=4, help="writer threads of build_offsets")
    p.add_argument("--skip-seed", action="store_true", help="skip the (slow) pandas baseline")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(_phase(args.phase, Path(args.root), args.workers)))
        return

    load_before = os.getloadavg()[0]
    started = time.time()
    root = ensure_lake(args.symbols, args.days, log=False)
    if (root / ".complete.json").stat().st_mtime >= started:  # rebuilt: an outdated lake deleted
        _STAMP.write_text(str(time.time()))
    _clean(root, args.symbols, args.days)
    _empty_trash()
    settle(_STAMP)
    warm_s = _warm(root)
    try:
        scan = _run_child("scan", root, args.workers)
        ours = _run_child("ours", root, args.workers)
        _floor_sizes(root).write_text(json.dumps(_output_sizes(root)))
        floor = _run_child("write_floor", root, args.workers)
        _floor_sizes(root).unlink()
        seed = _run_child("seed", root, args.workers) if not args.skip_seed else None
        append_day(root, args.symbols, args.days)
        before = _snapshot(root)
        runs = []
        try:
            for k in range(INCREMENTAL_RUNS):
                if k:
                    _restore(root, before)
                runs.append(_run_child("ours", root, args.workers))
        finally:
            _discard(before)
        incremental = sorted(runs, key=lambda r: float(r["seconds"]))[len(runs) // 2]  # type: ignore[arg-type]
        noop = _run_child("ours", root, args.workers)
        append_day(root, args.symbols, args.days + 1)
        second = _run_child("ours", root, args.workers)
        fold = _run_child("fold", root, args.workers)
    finally:
        _clean(root, args.symbols, args.days)
        _empty_trash()
    result = {
        "bench": "offsets",
        "command": f"python -m bench.offsets --symbols {args.symbols} --days {args.days}"
        + (" --skip-seed" if args.skip_seed else ""),
        "symbols": args.symbols,
        "days": args.days,
        "base_rows": args.symbols * args.days * PER_DAY,
        "base_files": scan["files"],
        "scan_s": round(float(scan["seconds"]), 2),  # type: ignore[arg-type]
        "ours_s": round(float(ours["seconds"]), 2),  # type: ignore[arg-type]
        "seed_s": round(float(seed["seconds"]), 2) if seed else None,  # type: ignore[arg-type]
        "ours_over_scan": round(float(ours["seconds"]) / float(scan["seconds"]), 2),  # type: ignore[arg-type]
        "seed_over_ours": round(float(seed["seconds"]) / float(ours["seconds"]), 2) if seed else None,  # type: ignore[arg-type]
        "ours_cpu_s": round(float(ours["call_cpu_s"]), 1),  # type: ignore[arg-type]
        "scan_cpu_s": round(float(scan["call_cpu_s"]), 1),  # type: ignore[arg-type]
        "seed_cpu_s": round(float(seed["call_cpu_s"]), 1) if seed else None,  # type: ignore[arg-type]
        "ours_peak_gib": round(float(ours["peak_gib"]), 2),  # type: ignore[arg-type]
        "seed_peak_gib": round(float(seed["peak_gib"]), 2) if seed else None,  # type: ignore[arg-type]
        "write_floor_s": round(float(floor["seconds"]), 2),  # type: ignore[arg-type]
        "write_floor_over_scan": round(float(floor["seconds"]) / float(scan["seconds"]), 2),  # type: ignore[arg-type]
        "ours_over_scan_plus_write_floor": round(
            float(ours["seconds"]) / (float(scan["seconds"]) + float(floor["seconds"])),  # type: ignore[arg-type]
            2,
        ),
        "write_floor_cpu_s": round(float(floor["call_cpu_s"]), 1),  # type: ignore[arg-type]
        "write_floor_threads": FLOOR_THREADS,
        "write_floor_gb": round(int(floor["floor_bytes"]) / 1e9, 2),  # type: ignore[call-overload]
        "files_written": ours["written"],
        "incremental_s": round(float(incremental["seconds"]), 2),  # type: ignore[arg-type]
        "incremental_pct_of_full": round(100 * float(incremental["seconds"]) / float(ours["seconds"]), 1),  # type: ignore[arg-type]
        "incremental_runs_s": [round(float(r["seconds"]), 3) for r in runs],  # type: ignore[arg-type]
        "incremental_runs_pct_of_full": [
            round(100 * float(r["seconds"]) / float(ours["seconds"]), 1)  # type: ignore[arg-type]
            for r in runs
        ],
        "incremental_cpu_s": round(float(incremental["call_cpu_s"]), 2),  # type: ignore[arg-type]
        "incremental_cpu_pct_of_full": round(
            100 * float(incremental["call_cpu_s"]) / float(ours["call_cpu_s"]),  # type: ignore[arg-type]
            1,
        ),
        "incremental_files_written": incremental["written"],
        "incremental_base_rows_read": incremental["base_rows_read"],
        "incremental_peak_gib": round(float(incremental["peak_gib"]), 2),  # type: ignore[arg-type]
        "noop_rerun_s": round(float(noop["seconds"]), 2),  # type: ignore[arg-type]
        "noop_files_written": noop["written"],
        "second_day_s": round(float(second["seconds"]), 2),  # type: ignore[arg-type]
        "second_day_pct_of_full": round(100 * float(second["seconds"]) / float(ours["seconds"]), 1),  # type: ignore[arg-type]
        "second_day_tail_bins": second["tail_bins"],
        "fold_s": round(float(fold["seconds"]), 2),  # type: ignore[arg-type]
        "fold_files_written": fold["written"],
        "fold_series": fold["folded"],
        "import_s": round(float(ours["import_s"]), 3),  # type: ignore[arg-type]
        "warm_read_s": round(warm_s, 2),
        "load_avg_before": round(load_before, 2),
        "load_avg_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "self_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
