"""Memory soak of ``lake live``; prints ONE JSON line.

    python -m bench.live_soak                                  # 30 min, 240x, 50 symbols, 1m, --offsets 1h
    python -m bench.live_soak --minutes 10 --speed 120 --symbols 40 --offsets ''
    python -m bench.live_soak --diag --tracemalloc             # also attribute (Python heap, C heap, Arrow)
    python -m bench.live_soak --verify                         # then check the lake (below)

A simulator (``bench._simproc.server_main``, its own process, clock ``--speed`` times faster) and a
real ``lake live`` process (``--type usdt_perp --interval 1m --offsets 1h`` by default). Every
``--every`` real seconds the live process's VmRSS / RssAnon / RssFile, threads and file descriptors,
the simulator's clock and the feed's published watermark go to ``samples.csv`` in ``--out``
(default ``bench/_work/scratch/live_soak-<time>/``).

The figures: RssAnon against *virtual* time, from the first published watermark (start-up
catch-up done) to the end, split in two halves; the least-squares slope of each half in MB per
virtual day, and ``ratio`` = second / first. Memory that leaks grows at the same rate in both halves
(ratio near 1); caches and allocator retention that fill up plateau (ratio near 0). ``lag_min`` is
how many periods the watermark trails the simulator's clock (a live process that cannot keep up
grows its backlog, which would read as a leak).

With ``--diag`` the live process runs with a sampler thread (``_diag_main``) that writes one JSON
line every ``--diag-every`` seconds to ``diag.jsonl``: glibc's ``mallinfo2`` (arena, in use, free),
``pyarrow.total_allocated_bytes()``, gc object counts by type, the sizes of the live runner's own
containers (period book, sources, REST bookkeeping, caches, tasks) and, with ``--tracemalloc``, the
Python allocation sites grown since the first sample (tracemalloc costs CPU and memory of its own:
RSS figures of such a run are not comparable). ``--env KEY=VALUE`` sets diagnostic variables
for the live process only: ``MALLOC_ARENA_MAX=2``, ``POLARS_MAX_THREADS=1``,
``_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0`` (Polars' jemalloc), ``ARROW_DEFAULT_MEMORY_POOL=system``,
and ``LAKE_SOAK_TAIL_MAX_DAYS=1`` (fold the offsets tail after one virtual day instead of 32).

``--verify`` then checks what the soak left (``verify``): the klines up to the watermark against
the simulator's truth, and the offsets ``lake live`` kept against a fresh ``lake offsets`` build of
the same klines: ``missing`` / ``extra`` / ``differ`` counts, all zero when the lake is right
(otherwise, or with duplicates or a trading symbol absent, the bench exits 1). ``--verify-lake DIR``
checks a lake a ``--keep-lake`` run left in ``DIR`` (its ``sim.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._simproc import server_main

REPO = Path(__file__).resolve().parents[1]
M = 60_000
DAY = 86_400_000
FIELDS = [
    "t_real", "virtual_ms", "virtual_days", "watermark_ms", "lag_min", "rss_kb", "rss_anon_kb",
    "rss_file_kb", "threads", "fds", "cpu_s",
]  # fmt: skip


def _start_sim(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(kwargs, child, False), daemon=True)
    proc.start()
    return proc, parent.recv()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _proc(pid: int) -> dict[str, int] | None:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_cs"] = int(stat[11]) + int(stat[12])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return out


def _watermark(root: Path) -> int | None:
    try:
        doc = json.loads((root / "_meta/live/usdt_perp/1m.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    wm = doc.get("watermark_ms")
    return wm if isinstance(wm, int) else None


def _slope(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def summarize(rows: list[dict[str, Any]], key: str = "rss_anon_kb") -> dict[str, Any]:
    """Slopes (MB per virtual day) of ``key`` over the two halves (in virtual time) of the samples
    taken once a watermark was published."""
    steady = [r for r in rows if r["watermark_ms"] is not None]
    if len(steady) < 8:
        return {"error": f"only {len(steady)} samples after the catch-up"}
    d0, d1 = steady[0]["virtual_days"], steady[-1]["virtual_days"]
    mid = (d0 + d1) / 2
    halves = [[r for r in steady if r["virtual_days"] <= mid], [r for r in steady if r["virtual_days"] > mid]]
    slopes = []
    for h in halves:
        s = _slope([r["virtual_days"] for r in h], [r[key] / 1024 for r in h])
        slopes.append(None if s is None else round(s, 2))
    ratio = None
    if slopes[0] is not None and slopes[1] is not None and abs(slopes[0]) > 1e-9:
        ratio = round(slopes[1] / slopes[0], 2)
    mb = lambda r: round(r[key] / 1024, 1)  # noqa: E731
    by_day: dict[int, list[float]] = {}  # (the medians: a build's transient peak is one sample)
    for r in steady:
        by_day.setdefault(int(r["virtual_days"] - d0), []).append(r[key] / 1024)
    medians = [round(sorted(v)[len(v) // 2], 1) for _, v in sorted(by_day.items())]
    return {
        "virtual_days": round(d1 - d0, 2),
        "start_mb": mb(steady[0]),
        "mid_mb": mb(min(steady, key=lambda r: abs(r["virtual_days"] - mid))),
        "end_mb": mb(steady[-1]),
        "max_mb": max(mb(r) for r in steady),
        "slope_first_mb_per_vday": slopes[0],
        "slope_second_mb_per_vday": slopes[1],
        "ratio": ratio,
        "median_mb_by_vday": medians,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="real minutes after start-up")
    ap.add_argument("--speed", type=float, default=240.0, help="virtual seconds per real second")
    ap.add_argument("--symbols", type=int, default=50, help="about this many usdt_perp symbols")
    ap.add_argument("--offsets", default="1h", help="--offsets of lake live ('' for none)")
    ap.add_argument("--every", type=float, default=10.0, help="real seconds between samples")
    ap.add_argument("--start", default="2025-03-10T00:00:30Z", help="virtual start")
    ap.add_argument("--out", default=None, help="directory for samples.csv (and the lake, deleted)")
    ap.add_argument("--keep-lake", action="store_true")
    ap.add_argument("--diag", action="store_true", help="sampler thread in the live process (diag.jsonl)")
    ap.add_argument("--diag-every", type=float, default=60.0)
    ap.add_argument("--tracemalloc", action="store_true", help="with --diag: Python allocation sites grown")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the live process")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument(
        "--verify", action="store_true", help="at the end, check the lake against the truth and a rebuild"
    )
    ap.add_argument(
        "--verify-lake", default=None, metavar="DIR", help="only check DIR/lake (a --keep-lake run's --out)"
    )
    args = ap.parse_args(argv)
    if args.verify_lake:
        out_dir = Path(args.verify_lake)
        kw = json.loads((out_dir / "sim.json").read_text())
        checked = verify(out_dir / "lake", kw, args.offsets or None)
        print(json.dumps(checked, separators=(",", ":")))
        if not verified(checked):
            sys.exit(1)  # (a check that only prints would let a broken lake pass a script)
        return
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out = Path(args.out) if args.out else REPO / "bench/_work/scratch" / f"live_soak-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    root = out / "lake"
    shutil.rmtree(root, ignore_errors=True)

    sim_kwargs = {
        "seed": 1, "speed": args.speed, "start": args.start, "history_days": 2,
        "n_symbols_by_market": {"um": int(args.symbols / 0.57) + 5}, "n_symbols": 3, "awkward": False,
        "weight_limits": {"spot": 10**9, "um": 10**9, "cm": 10**9}, "ws_intermediate": False,
    }  # fmt: skip
    (out / "sim.json").write_text(json.dumps(sim_kwargs))  # (for --verify-lake)
    sim, hello = _start_sim(sim_kwargs)
    base = hello["base_url"]
    live_args = ["live", "--root", str(root), "--sim-url", base, "--type", "usdt_perp", "--interval", "1m",
                 "--history", "120", "--health-every", "60"]  # fmt: skip
    if args.offsets:
        live_args += ["--offsets", args.offsets]
    env = dict(os.environ)
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    cmd = [sys.executable, "-m", "bench.live_soak", "--child"]
    if args.diag:
        env["LAKE_SOAK_DIAG"] = str(out / "diag.jsonl")
        env["LAKE_SOAK_DIAG_EVERY"] = str(args.diag_every)
        if args.tracemalloc:
            env["LAKE_SOAK_TRACEMALLOC"] = "1"
    log_path = out / "live.log"
    with log_path.open("wb") as err:
        live = subprocess.Popen(
            [*cmd, *live_args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    rows: list[dict[str, Any]] = []
    csv = (out / "samples.csv").open("w")
    csv.write(",".join(FIELDS) + "\n")
    t0 = time.monotonic()
    v0: int | None = None
    tick = os.sysconf("SC_CLK_TCK")
    exit_code: int | None = None
    try:
        nxt = 0.0
        while time.monotonic() - t0 < args.minutes * 60:
            if live.poll() is not None:
                exit_code = live.returncode
                break
            el = time.monotonic() - t0
            if el < nxt:
                time.sleep(min(0.5, nxt - el))
                continue
            nxt += args.every
            now = int(_get(f"{base}/_sim/clock")["now"])
            v0 = now if v0 is None else v0
            p = _proc(live.pid)
            if p is None:
                continue
            wm = _watermark(root)
            r = {
                "t_real": round(el, 1), "virtual_ms": now, "virtual_days": round((now - v0) / DAY, 5),
                "watermark_ms": wm, "lag_min": None if wm is None else round((now - wm) / M - 1, 2),
                "rss_kb": p["VmRSS"], "rss_anon_kb": p["RssAnon"], "rss_file_kb": p["RssFile"],
                "threads": p["Threads"], "fds": p["fds"], "cpu_s": round(p["cpu_cs"] / tick, 1),
            }  # fmt: skip
            rows.append(r)
            csv.write(",".join("" if r[f] is None else str(r[f]) for f in FIELDS) + "\n")
            csv.flush()
            if not args.quiet:
                print(
                    f"t={el:7.1f}s vday={r['virtual_days']:6.3f} lag={r['lag_min']} rss={p['VmRSS'] // 1024}MB "
                    f"anon={p['RssAnon'] // 1024}MB thr={p['Threads']} fds={p['fds']} cpu={r['cpu_s']}s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        csv.close()
        if live.poll() is None:
            live.send_signal(signal.SIGINT)
            try:
                exit_code = live.wait(timeout=120)
            except subprocess.TimeoutExpired:
                live.kill()
                exit_code = live.wait(timeout=10)
        sim.terminate()
        sim.join(10)
    checked = verify(root, sim_kwargs, args.offsets or None) if args.verify else None
    if not args.keep_lake:
        shutil.rmtree(root, ignore_errors=True)
    lags = [r["lag_min"] for r in rows if r["lag_min"] is not None]
    res: dict[str, Any] = {
        "bench": "live_soak",
        "date": stamp,
        "speed": args.speed,
        "symbols": hello["symbols"],
        "offsets": args.offsets or None,
        "env": args.env,
        "diag": args.diag,
        "tracemalloc": args.tracemalloc,
        "real_minutes": round((time.monotonic() - t0) / 60, 1),
        "samples": len(rows),
        "exit_code": exit_code,
        "lag_min_p50": sorted(lags)[len(lags) // 2] if lags else None,
        "lag_min_max": max(lags) if lags else None,
        "lag_min_last": lags[-1] if lags else None,
        "threads": [rows[0]["threads"], rows[-1]["threads"]] if rows else None,
        "fds": [rows[0]["fds"], rows[-1]["fds"]] if rows else None,
        "rss_anon": summarize(rows),
        "rss": summarize(rows, "rss_kb"),
        "verify": checked,
        "out": str(out),
    }
    (out / "result.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, separators=(",", ":")))
    sys.stdout.flush()
    if checked is not None and not verified(checked):
        sys.exit(1)


# -- checking the lake a soak left ------------------------------------------------------------------


def _differences(ours: Any, want: Any, keys: list[str]) -> dict[str, int]:
    """Rows of ``want`` not in ``ours``, of ``ours`` not in ``want``, and rows of both whose values
    differ (exactly: the simulator's floats are those of the strings it serves), on ``keys``."""
    import polars as pl

    values = [c for c in want.columns if c not in keys]
    both = ours.select(*keys, *values).join(want, on=keys, how="inner", suffix="_want")
    differ = both.filter(pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_want")) for c in values]))
    return {
        "missing": want.join(ours, on=keys, how="anti").height,
        "extra": ours.join(want, on=keys, how="anti").height,
        "differ": differ.height,
    }


def verified(checked: dict[str, Any]) -> bool:
    """Whether ``verify`` found the lake whole: a watermark, every trading symbol, no duplicate,
    and nothing missing, extra or different in the klines (and the offsets when checked)."""
    if "error" in checked or checked["symbols_not_in_lake"]:
        return False
    if checked["klines_duplicates"] or checked.get("offsets_duplicates"):
        return False
    return not any(sum(checked[k].values()) for k in ("klines", "offsets") if k in checked)


def verify(root: Path, sim_kwargs: dict[str, Any], offsets: str | None) -> dict[str, Any]:
    """The lake a soak left, checked: its 1m klines up to the feed's watermark against the
    simulator's truth (rebuilt from the same configuration: it is deterministic), and, with
    ``offsets``, the offsets table ``lake live`` kept (tail, folds, the year's partition change)
    against a fresh ``lake offsets`` build of the same klines in another root."""
    import polars as pl

    from lake.binance.intervals import parse_interval
    from lake.live.watermark import read_watermark
    from lake.sim import SimConfig
    from lake.sim.clock import VirtualClock
    from lake.sim.market import SimMarket
    from lake.store.klines import scan_klines
    from lake.transform.build import build_offsets, scan_offsets

    tt, iv = "usdt_perp", "1m"
    mark = read_watermark(root, tt, iv)
    if mark is None or mark.get("watermark_ms") is None:
        return {"error": "no watermark"}
    wm = int(mark["watermark_ms"])
    t = pl.col("candle_begin_time").dt.epoch("ms")
    lake = scan_klines(root, tt, iv).filter(t <= wm).drop("source").collect()
    syms = sorted(lake["symbol"].unique().to_list())
    first = int(lake.select(t.min()).item())
    market = SimMarket(SimConfig(**sim_kwargs), VirtualClock(wm + M, speed=0))
    truth = market.truth(tt, iv, syms, first, wm + 1, now=wm + M)
    trading = market.truth(tt, iv, None, wm - 60 * M, wm + 1, now=wm + M)["symbol"].unique().to_list()
    out: dict[str, Any] = {
        "watermark": dt.datetime.fromtimestamp(wm / 1000, dt.UTC).isoformat(),
        "symbols": len(syms),
        "symbols_not_in_lake": sorted(set(trading) - set(syms)),
        "klines_rows": lake.height,
        "klines_duplicates": int(lake.select("symbol", "candle_begin_time").is_duplicated().sum()),
        "klines": _differences(lake, truth, ["symbol", "candle_begin_time"]),
    }
    if offsets:
        fresh = root.parent / "lake_rebuild"
        shutil.rmtree(fresh, ignore_errors=True)
        for table in ("klines", "klines_tail"):
            if (root / table).exists():
                shutil.copytree(root / table, fresh / table)
        t0 = time.monotonic()
        build_offsets(fresh, tt, offsets, base=iv)
        out["rebuild_s"] = round(time.monotonic() - t0, 1)
        span = parse_interval(offsets).ms
        assert span is not None
        keys = ["symbol", "offset", "candle_begin_time"]
        done = (t + span) <= wm + M  # bins whose last base candle is in, both sides
        live = scan_offsets(root, tt, offsets).filter(done).collect()
        rebuilt = scan_offsets(fresh, tt, offsets).filter(done).collect()
        first_bin = live.select(t.min()).item()
        out["offsets_rows"] = live.height
        out["offsets_first_bin"] = (
            None if first_bin is None else dt.datetime.fromtimestamp(first_bin / 1000, dt.UTC).isoformat()
        )
        out["offsets_duplicates"] = int(live.select(keys).is_duplicated().sum())
        out["offsets"] = _differences(live, rebuilt, keys)
        shutil.rmtree(fresh, ignore_errors=True)
    return out


# -- the live process ------------------------------------------------------------------------------


def _diag_main(argv: list[str]) -> None:
    """Run ``lake <argv>`` with, if ``LAKE_SOAK_DIAG`` names a file, a sampler thread (module doc)."""
    path = os.environ.get("LAKE_SOAK_DIAG")
    if path:
        _start_sampler(path, float(os.environ.get("LAKE_SOAK_DIAG_EVERY", "60")))
    tail_days = os.environ.get("LAKE_SOAK_TAIL_MAX_DAYS")
    if tail_days:  # diagnostic: fold the offsets tail after this many days (lake: 32, under 1h: 8)
        from lake.transform import planning

        for k in planning._TAIL_MAX_MS:
            planning._TAIL_MAX_MS[k] = int(float(tail_days) * DAY)
    from lake.cli import main as lake_main

    lake_main(argv)


_RUNNERS: list[Any] = []


def _sizes(runner: Any) -> dict[str, Any]:
    """Lengths of the live runner's containers that are keyed by time, symbol or task."""
    out: dict[str, Any] = {
        "tasks": len(runner._tasks),
        "alert_keys": len(runner.alerter._last),
        "alert_by_key": len(runner.alerter.stats.by_key),
        "ws_rejected": len(runner._ws_rejected),
    }
    for i, f in enumerate(runner.feeds):
        book = f.book
        out[f"feed{i}"] = {
            "periods": len(book._periods) if book else None,
            "sources": len(f.stats.sources),
            "latencies": len(f.stats.latencies),
            "recent_rest": len(f.recent_rest),
            "reconfirm_failures": len(f.reconfirm_failures),
            "provisional_saved": len(f.provisional_saved),
            "pending_catchup": len(f.pending_catchup),
            "inflight": len(f.inflight),
            "appender_buffer": len(f.appender._buffer),
            "appender_held": len(f.appender._held),
            "cache_entries": len(f.writer.cache),
            "cache_rows": f.writer.cache.rows,
            "moved": len(f.writer._moved),
            "offsets_dirty": len(f.offsets._dirty) if f.offsets else None,
        }
    return out


def _start_sampler(path: str, every: float) -> None:
    import collections
    import ctypes
    import gc
    import threading
    import tracemalloc

    trace = os.environ.get("LAKE_SOAK_TRACEMALLOC") == "1"
    if trace:
        tracemalloc.start(4)

    from lake.live import runner as runner_mod

    init = runner_mod.LiveRunner.__init__

    def remember(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        _RUNNERS.append(self)

    runner_mod.LiveRunner.__init__ = remember  # type: ignore[method-assign]

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                      "fordblks", "keepcost")
        ]  # fmt: skip

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")
    first: list[Any] = [None]
    containers = (dict, list, set, collections.deque)

    def sample() -> dict[str, Any]:
        rec: dict[str, Any] = {"t": round(time.time(), 1)}
        with open("/proc/self/statm") as fh:
            rec["rss_mb"] = round(int(fh.read().split()[1]) * page / 2**20, 1)
        mi = libc.mallinfo2()
        rec["malloc_mb"] = {
            k: round(getattr(mi, k) / 2**20, 1) for k in ("arena", "hblkhd", "uordblks", "fordblks")
        }
        pa = sys.modules.get("pyarrow")
        if pa is not None:
            rec["arrow_mb"] = round(pa.total_allocated_bytes() / 2**20, 2)
            rec["arrow_backend"] = pa.default_memory_pool().backend_name
        objs: list[Any] | None = None
        try:
            objs = gc.get_objects()  # (not the frozen start-up heap: what came since)
            rec["gc_objects"] = len(objs)
            rec["gc_frozen"] = gc.get_freeze_count()
            rec["top_types"] = collections.Counter(type(o).__name__ for o in objs).most_common(15)
            rec["big_containers"] = sorted(
                ((type(o).__name__, len(o)) for o in objs if type(o) in containers and len(o) > 2000),
                key=lambda x: -x[1],
            )[:10]
            # native memory Python still holds: Polars frames (buffers shared between frames count
            # once per frame, so this is an upper bound)
            pl = sys.modules.get("polars")
            if pl is not None:
                frames = [o for o in objs if type(o) is pl.DataFrame]
                rec["polars_frames"] = len(frames)
                rec["polars_frames_mb"] = round(sum(f.estimated_size() for f in frames) / 2**20, 2)
                del frames
        finally:
            del objs
        rec["threads"] = threading.active_count()
        if _RUNNERS:
            try:
                rec["runner"] = _sizes(_RUNNERS[-1])
            except (AttributeError, RuntimeError) as exc:
                rec["runner"] = repr(exc)
        if trace:
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            rec["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
            rec["tracemalloc_overhead_mb"] = round(tracemalloc.get_tracemalloc_memory() / 2**20, 2)
            if first[0] is None:
                first[0] = snap
            else:
                grown = snap.compare_to(first[0], "traceback")[:10]
                rec["grown"] = [
                    [[f"{fr.filename.rsplit('/site-packages/', 1)[-1]}:{fr.lineno}" for fr in d.traceback],
                     round(d.size_diff / 2**20, 3), d.count_diff]
                    for d in grown
                ]  # fmt: skip
            del snap
        return rec

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                rec = sample()
            except Exception as exc:  # (a diagnostic must not stop the process)
                rec = {"error": repr(exc)}
            with open(path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    threading.Thread(target=loop, name="soak-diag", daemon=True).start()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _diag_main(sys.argv[2:])
    else:
        main()
