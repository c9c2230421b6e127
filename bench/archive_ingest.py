"""Archive ingest benchmark; prints ONE JSON line.

    python -m bench.archive_ingest                      # both parts
    python -m bench.archive_ingest --part parse         # 1: parse+write throughput from local zips
    python -m bench.archive_ingest --part e2e           # 2: auto vs REST-only from the simulator

1. **Parse+write throughput.** Monthly 1m zips (synthetic, Binance's CSV layout, some with a header,
   some in µs) are built once; then (a) a bare ``polars.read_csv`` of the same *unzipped* bytes and
   (b) the ingest path (unzip, ``parse_kline_zip``, ``write_klines`` into an empty lake, one file at a
   time) are timed in the same process, in ``--rounds`` interleaved rounds (best time of each kept).
   Reported: rows/s of each and their ratio (goal ≥ 0.5); also unzip+parse alone (on one and on two
   threads), the ingest into a lake in memory (``/dev/shm``), which shows what the durable writes to
   disk cost, and a *write floor*: the ingest's files written bare (same paths and byte counts, two
   threads, two syncs in all where the ingest pays two per call; nothing computed).
   ``floor_vs_bare`` puts unzip+parse on two threads and that write one after the other: an estimate
   of an ingest that did no encoding and no store work (overlapping the two could do better).
2. **End to end from the simulator** (a separate ``lake sim`` process): ``--days`` of 1m for
   ``--symbols`` symbols with ``--source auto`` versus REST only. Binance serves the archive as static
   files from a CDN, while the simulator builds a zip on its first request; so the simulator is put
   in static mode (it keeps every zip it builds), a first ``auto`` run builds them (``auto_cold_*``,
   reported but not the figure), and the timed ``auto`` run, into a new lake, is served the same
   zips like static files. The REST-only time is measured on a ``--rest-days`` slice and scaled to
   the full span unless ``--rest-full`` is given; the output field names say which
   (``rest_only_s_estimated`` vs ``rest_only_s_measured``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench._floor import write_bare
from bench._settle import delete, settle
from lake.ingest.archive.parse import parse_kline_zip
from lake.store.fs import LakeFS
from lake.store.klines import write_klines

MIN_MS = 60_000


def _month_csv(symbol_idx: int, start: dt.date, *, header: bool, us: bool) -> bytes:
    """One month of 1m rows in the archive's CSV layout."""
    nxt = dt.date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    t0 = int(dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
    t1 = int(dt.datetime(nxt.year, nxt.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
    n = (t1 - t0) // MIN_MS
    rng = np.random.default_rng(symbol_idx * 1000 + start.month)
    opens = np.arange(t0, t1, MIN_MS, dtype=np.int64)
    price = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    o = np.round(price, 2)
    c = np.round(price * (1 + rng.normal(0, 0.0005, n)), 2)
    h = np.maximum(o, c) + 0.01
    low = np.minimum(o, c) - 0.01
    v = np.round(rng.lognormal(1, 1, n), 5)
    mult = 1000 if us else 1
    df = pl.DataFrame(
        {
            "open_time": opens * mult,
            "open": o,
            "high": h,
            "low": low,
            "close": c,
            "volume": v,
            "close_time": (opens + MIN_MS) * mult - 1,
            "quote_volume": np.round(v * price, 4),
            "count": rng.integers(0, 500, n),
            "taker_buy_volume": np.round(v / 2, 5),
            "taker_buy_quote_volume": np.round(v * price / 2, 4),
            "ignore": np.zeros(n, dtype=np.int64),
        }
    )
    buf = io.BytesIO()
    df.write_csv(buf, include_header=header)
    return buf.getvalue()


def build_zips(work: Path, symbols: int, months: int) -> list[tuple[Path, str, int, int]]:
    """``(zip path, symbol, start_ms, end_ms)`` for ``symbols`` × ``months`` monthly 1m files."""
    out = []
    for s in range(symbols):
        sym = f"SYM{s:03d}USDT"
        for m in range(months):
            start = dt.date(2024, m + 1, 1)
            nxt = dt.date(2024 + (m == 11), (m + 1) % 12 + 1, 1)
            path = work / f"{sym}-1m-{start:%Y-%m}.zip"
            if not path.exists():
                raw = _month_csv(s, start, header=s % 2 == 1, us=m >= months // 2)
                tmp = path.with_suffix(".tmp")
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr(path.with_suffix(".csv").name, raw)
                os.replace(tmp, path)
            t0 = int(dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
            t1 = int(dt.datetime(nxt.year, nxt.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
            out.append((path, sym, t0, t1))
    return out


def bench_parse(symbols: int, months: int, work: Path, rounds: int = 3) -> dict[str, Any]:
    (work / "zips").mkdir(parents=True, exist_ok=True)
    zips = build_zips(work / "zips", symbols, months)
    raws = []
    for path, *_ in zips:
        with zipfile.ZipFile(path) as zf:
            raws.append(zf.read(zf.infolist()[0]))

    def bare() -> tuple[float, int]:
        rows = 0
        t = time.perf_counter()
        for raw in raws:
            has_header = not raw[:1].isdigit()
            rows += pl.read_csv(io.BytesIO(raw), has_header=has_header).height
        return time.perf_counter() - t, rows

    lakes: list[Path] = []

    def ingest(threads: int, root: Path) -> tuple[float, int, int]:
        # A new lake each time, all deleted at the end: deleting 732 files between measurements made
        # the next write of the same files take up to twice as long (bench/_settle.py). Dirty pages left
        # by earlier work (ours or other jobs') are flushed first, so the syncs of this ingest pay for
        # its own writes.
        lake_root = root / f"lake-{len(lakes)}"
        shutil.rmtree(lake_root, ignore_errors=True)
        lakes.append(lake_root)
        lfs = LakeFS(lake_root)
        os.sync()

        def one(item: tuple[Path, str, int, int]) -> tuple[int, int]:
            path, sym, t0, t1 = item
            df = parse_kline_zip(path, start_ms=t0, end_ms=t1)
            res = write_klines(lfs, "usdt_spot", "1m", sym, df)
            return df.height, res.partitions_written

        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(one, zips))
        elapsed = time.perf_counter() - t
        return elapsed, sum(d[0] for d in done), sum(d[1] for d in done)

    def parse_only(threads: int = 1) -> float:
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda z: parse_kline_zip(z[0], start_ms=z[2], end_ms=z[3]), zips))
        return time.perf_counter() - t

    def write_floor(sizes: list[tuple[str, int]], root: Path) -> float:
        """The ingest's files written bare (``bench._floor``): the same paths and byte counts, no
        parsing, no encoding (the ingest syncs twice per ``write_klines`` call: the floor pays less)."""
        out = root / f"lake-{len(lakes)}"
        lakes.append(out)
        os.sync()
        return write_bare(out, sizes)

    # Memory-backed lake: the same code without the disk, to show the disk's share.
    shm = Path("/dev/shm")
    mem_root = Path(tempfile.mkdtemp(prefix="lake-bench-", dir=shm)) if shm.is_dir() else None
    times: dict[str, list[float]] = {
        "bare": [],
        "ingest": [],
        "ingest_1thread": [],
        "parse_only": [],
        "parse_only_2threads": [],
        "write_floor": [],
        "ingest_mem": [],
    }
    sizes: list[tuple[str, int]] = []
    rows = ingested = parts = 0
    try:
        # Rounds interleave every measurement, so a burst of load from other jobs on the shared machine
        # hits all of them alike; the best time of each is reported.
        for _ in range(rounds):
            bare_s, rows = bare()
            times["bare"].append(bare_s)
            # As the runner does it: parse+write of different files on 2 threads (the machine has 2
            # cores; Polars' read_csv in the bare measurement uses both cores too).
            ingest_s, ingested, parts = ingest(2, work)
            times["ingest"].append(ingest_s)
            times["ingest_1thread"].append(ingest(1, work)[0])
            times["parse_only"].append(parse_only())
            times["parse_only_2threads"].append(parse_only(2))
            if not sizes:  # the files of the first ingest, as written
                first = lakes[0]
                sizes = [
                    (str(f.relative_to(first)), f.stat().st_size) for f in sorted(first.rglob("*.parquet"))
                ]
            times["write_floor"].append(write_floor(sizes, work))
            if mem_root is not None:
                times["ingest_mem"].append(ingest(2, mem_root)[0])
    finally:
        _LATER.extend(lakes)  # deleted at the end: see _LATER
        if mem_root is not None:
            shutil.rmtree(mem_root, ignore_errors=True)
    if ingested != rows:
        raise SystemExit(f"row mismatch: bare {rows}, ingested {ingested}")
    best = {k: min(v) for k, v in times.items() if v}
    out: dict[str, Any] = {
        "parse_files": len(zips),
        "parse_rows": rows,
        "parse_partitions_written": parts,
        "parse_rounds": rounds,
        "bare_read_csv_rows_per_s": round(rows / best["bare"]),
        "ingest_rows_per_s": round(rows / best["ingest"]),
        "ingest_vs_bare": round(best["bare"] / best["ingest"], 3),
        "ingest_1thread_rows_per_s": round(rows / best["ingest_1thread"]),
        "ingest_1thread_vs_bare": round(best["bare"] / best["ingest_1thread"], 3),
        "unzip_parse_only_rows_per_s": round(rows / best["parse_only"]),
        "unzip_parse_only_vs_bare": round(best["bare"] / best["parse_only"], 3),
        "unzip_parse_2threads_vs_bare": round(best["bare"] / best["parse_only_2threads"], 3),
        # unzip+parse on both cores, then the output written bare, one after the other: an estimate
        # of an ingest with no encoding and no store work (overlapping the two could do better)
        "floor_vs_bare": round(best["bare"] / (best["parse_only_2threads"] + best["write_floor"]), 3),
        "write_floor_files": len(sizes),
        "write_floor_mb": round(sum(n for _, n in sizes) / 1e6, 1),
    }
    if "ingest_mem" in best:
        out["ingest_memory_lake_vs_bare"] = round(best["bare"] / best["ingest_mem"], 3)
    out.update({f"{k}_s": round(v, 3) for k, v in best.items()})
    out["all_s"] = {k: [round(x, 3) for x in v] for k, v in times.items()}
    return out


def _start_sim(n_symbols: int, start: str, history_days: int) -> tuple[Any, str]:
    """``lake sim`` in a separate process; returns (process, base URL)."""
    import subprocess

    code = "from lake.sim.cli import sim_app; sim_app(prog_name='lake sim')"
    args = [sys.executable, "-c", code, "serve", "--port", "0", "--symbols", str(n_symbols), "--speed", "1",
            "--start", start, "--history-days", str(history_days), "--json"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the simulator did not start")
    return proc, json.loads(line)["rest"]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sim_control(base: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the simulator's archive control (``{}`` just reads its counters)."""
    import urllib.request

    req = urllib.request.Request(
        f"{base.rstrip('/')}/_sim/archive",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:  # the local simulator
        return dict(json.loads(resp.read()))


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs on the machine make wall times noisy)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _statuses(markets: Any) -> dict[str, int]:
    """HTTP status counts summed over the markets of a backfill report."""
    out: dict[str, int] = {}
    for m in markets:
        for code, n in m.status.items():
            out[str(code)] = out.get(str(code), 0) + int(n)
    return out


def bench_e2e(symbols: int, days: int, rest_days: int, rest_full: bool, work: Path) -> dict[str, Any]:
    """``--source auto`` vs REST only, ``days`` of 1m for ``symbols`` usdt_perp symbols from a sim process."""
    import asyncio

    from lake.ingest.archive.hybrid import archive_backfill
    from lake.ingest.backfill import backfill
    from lake.settings import Settings

    # USDⓈ-M with N symbols per market has N - N//8 - round(0.3 N) USDT perpetuals.
    n = symbols
    while n - max(1, n // 8) - max(1, round(n * 0.3)) < symbols:
        n += 1
    start_iso = "2025-06-01T12:00:00"
    proc, base = _start_sim(n, start_iso, days + 40)
    try:
        now = dt.datetime.fromisoformat(start_iso).replace(tzinfo=dt.UTC)
        t_start = now - dt.timedelta(days=days)

        def settings(name: str) -> Settings:
            root = work / name
            _LATER.append(root)
            return Settings(root=str(root), sim_url=base)

        async def auto(label: str) -> tuple[float, dict[str, Any]]:
            s = settings(f"lake-{label}")
            t, cpu, sim_cpu = time.perf_counter(), time.process_time(), _cpu_s(proc.pid)
            res = await archive_backfill(LakeFS(s.root), ["usdt_perp"], "1m", settings=s, start=t_start)
            elapsed = time.perf_counter() - t
            rest = res.rest
            return elapsed, {
                # CPU seconds of this process (download, verify, parse, write; all threads) and of the
                # simulator (building or serving the zips), to show what binds on a 2-core machine.
                f"{label}_client_cpu_s": round(time.process_time() - cpu, 1),
                f"{label}_sim_cpu_s": round(_cpu_s(proc.pid) - sim_cpu, 1),
                f"{label}_symbols": len(res.archive[0].symbols),
                f"{label}_archive_files": res.archive[0].files_downloaded,
                f"{label}_archive_rows": res.archive[0].rows,
                f"{label}_archive_partitions": res.archive[0].partitions_written,
                f"{label}_archive_s": round(res.archive[0].seconds, 2),
                f"{label}_rest_candles": rest.candles if rest else 0,
                f"{label}_rest_weight": sum(m.weight for m in rest.markets.values()) if rest else 0,
                f"{label}_rest_status": _statuses(rest.markets.values()) if rest else {},
                f"{label}_load": _load(),
            }

        async def rest_only(span_days: float) -> tuple[float, int, int, dict[str, int]]:
            s = settings("lake-rest")
            t = time.perf_counter()
            rep = await backfill(LakeFS(s.root), ["usdt_perp"], "1m", start=now - dt.timedelta(days=span_days),
                                 settings=s)  # fmt: skip
            weight = sum(m.weight for m in rep.markets.values())
            limit = max(m.weight_limit for m in rep.markets.values())
            return time.perf_counter() - t, weight, limit, _statuses(rep.markets.values())

        # Real Binance serves the archive as static files from a CDN; the simulator builds each zip on
        # its first request (CSV formatting and deflate: most of its CPU). So the simulator keeps every
        # zip it builds, a first ("cold") run builds them, and the timed run ("auto") is the second,
        # into a new lake, served like static files. The cold run is reported too.
        _sim_control(base, {"static": True})
        cold_s, cold = asyncio.run(auto("auto_cold"))
        built = _sim_control(base, {})
        auto_s, info = asyncio.run(auto("auto"))  # (a lake of its own: the cold one is kept for now)
        served = _sim_control(base, {})
        out: dict[str, Any] = {"e2e_days": days, "e2e_interval": "1m", "auto_s": round(auto_s, 2), **info}
        out.update(auto_cold_s=round(cold_s, 2), **cold)
        out.update(
            sim_zips_built_cold=built["zips_built"],
            sim_zip_build_cpu_s_cold=built["zip_build_cpu_s"],
            sim_zips_built_in_timed_run=served["zips_built"] - built["zips_built"],
            sim_static_mb=round(built["static_bytes"] / 1e6, 1),
        )
        if rest_full:
            rest_s, weight, _, status = asyncio.run(rest_only(days))
            out.update(rest_only_s_measured=round(rest_s, 2), rest_only_weight=weight, rest_only_status=status,
                       rest_only_vs_auto=round(rest_s / auto_s, 1))  # fmt: skip
        else:
            slice_s, weight, limit, status = asyncio.run(rest_only(rest_days))
            out["rest_only_slice_status"] = status
            scaled = slice_s * days / rest_days
            # The slice fits in one weight window, so it ran unthrottled; the full span cannot.
            weight_bound = weight * days / rest_days / limit * 60.0
            est = max(scaled, weight_bound)
            out.update(
                rest_only_slice_days=rest_days,
                rest_only_slice_s_measured=round(slice_s, 2),
                rest_only_slice_weight_measured=weight,
                rest_only_s_estimated_linear=round(scaled, 1),
                rest_only_s_estimated_weight_bound=round(weight_bound, 1),
                rest_only_s_estimated=round(est, 1),
                rest_only_vs_auto_estimated=round(est / auto_s, 1),
            )
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# Lakes this bench writes are deleted when it ends, not between measurements, and a run starts a
# minute after the last deletion, also across runs (bench/_settle.py): the timed ``auto`` run used
# to start by deleting the cold run's lake (~13.5k files and directories) and paid for it.
_LATER: list[Path] = []
_STAMP = Path(tempfile.gettempdir()) / "lake-bench-archive-deleted-at"
_OURS = re.compile(r"lake-(\d+|auto_cold|auto|rest)")  # the lakes this bench names in its --work


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.archive_ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "parse", "e2e"], default="all")
    ap.add_argument("--parse-symbols", type=int, default=2)
    ap.add_argument("--parse-months", type=int, default=12)
    ap.add_argument(
        "--rounds", type=int, default=3, help="part 1: interleaved rounds, best time of each kept"
    )
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--rest-days", type=int, default=3, help="REST-only slice measured (days per symbol)")
    ap.add_argument("--rest-full", action="store_true", help="measure REST-only over the full span")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"bench": "archive_ingest"}
    work = args.work or Path(tempfile.mkdtemp(prefix="lake-bench-archive-"))
    _LATER.clear()
    # lakes an earlier run left in --work (only the names this bench gives)
    delete([p for p in work.iterdir() if _OURS.fullmatch(p.name)] if work.exists() else [], _STAMP)
    settle(_STAMP)
    try:
        if args.part in ("all", "parse"):
            out.update(bench_parse(args.parse_symbols, args.parse_months, work, args.rounds))
        if args.part in ("all", "e2e"):
            out.update(bench_e2e(args.symbols, args.days, args.rest_days, args.rest_full, work))
    finally:
        delete(_LATER, _STAMP)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
