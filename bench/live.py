"""Live appender benchmark; prints ONE JSON line.

    python -m bench.live                       # all three phases (about 3 minutes)
    python -m bench.live --skip-cpu            # without the 60 s real-speed phase
    python -m bench.live --latency-symbols 1000 --speed 10 --periods 6 --cpu-symbols 300 --cpu-seconds 60

Phases (the simulator always runs in its own process, pinned to CPU 0 when there are two or more;
this process is pinned to CPU 1):

* **appender** (no simulator): the highest message rate ``Appender.feed`` sustains on one core
  (JSON parse, validation, buffering), on pre-built combined-stream messages: a realistic mix
  (mostly ``x: false`` updates, 1 closing event in 20) and the worst case (closing events only).
  Goal ≥ 20,000 msgs/s.
* **latency**: ``lake live`` (in this process) follows ≥ 1,000 USDⓈ-M symbols of a simulator whose
  clock runs ``--speed`` times faster; per closing candle, the time from the websocket message's
  receipt to the end of the atomic write of the tail file that makes it readable through
  ``scan_klines`` and the ``klines`` view (p50/p99; goal p99 ≤ 50 ms). Every symbol closes at the
  same instant, so a period is a burst of 1,000+ candles; the tail files written and the
  compaction into partitions (off the latency path, every 60 s and at shutdown) are reported too,
  and at the end the lake is checked to hold every candle the writer stored, exactly once.
  ``sent_*`` is the stricter figure from the simulator handing the event to its socket (same
  monotonic clock, Linux), which also counts the time an event waits before the client reads it.
  ``latency_small`` repeats it with ``--small-symbols`` symbols (the per-candle floor).
* **cpu**: real speed (``speed 1``), ``--cpu-symbols`` symbols with in-progress updates on, over
  ``--cpu-seconds`` after start-up: CPU seconds used by this process (``resource.getrusage``,
  user + system, all threads) divided by wall seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

from bench._simproc import pin as pin_cpu
from bench._simproc import server_main

GOAL_MSGS = 20_000.0
GOAL_P99_MS = 50.0
M = 60_000


def _start_sim(kwargs: dict[str, Any], pin: bool) -> tuple[Any, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(kwargs, child, pin), daemon=True)
    proc.start()
    hello = parent.recv()
    return proc, hello


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)


# -- phase 1: parse + buffer ----------------------------------------------------------------------


def _messages(n_symbols: int, n: int, closing_every: int) -> tuple[list[str], list[str]]:
    t0 = 1_741_000_000_000 - 1_741_000_000_000 % M
    symbols = [f"X{i:04d}USDT" for i in range(n_symbols)]
    out: list[str] = []
    for i in range(n):
        sym = symbols[i % n_symbols]
        period = i // n_symbols
        closed = closing_every > 0 and (i // n_symbols) % closing_every == 0
        t = t0 + period * M
        k = {
            "t": t, "T": t + M - 1, "s": sym, "i": "1m", "f": 100 + i, "L": 200 + i, "o": "0.01634790",
            "c": f"{0.0163 + (i % 97) * 1e-6:.8f}", "h": "0.01640000", "l": "0.01575800", "v": "148976.11427815",
            "n": 308, "x": closed, "q": "2434.19055334", "V": "1756.87402397", "Q": "28.46694368", "B": "0",
        }  # fmt: skip
        ev = {"e": "kline", "E": t + M + 3, "s": sym, "k": k}
        out.append(json.dumps({"stream": f"{sym.lower()}@kline_1m", "data": ev}, separators=(",", ":")))
    return out, symbols


def _feed_rate(messages: list[str], symbols: list[str]) -> float:
    from lake.live.appender import Appender

    ap = Appender("usdt_perp", "1m", symbols)
    feed, take = ap.feed, ap.take
    perf = time.perf_counter
    t0 = perf()
    for i, raw in enumerate(messages):
        feed(raw, perf())
        if i % 5000 == 4999:
            take()  # the writer drains the buffer
    elapsed = perf() - t0
    assert not ap.stats.bad, ap.stats.bad
    return len(messages) / elapsed


def phase_appender(n: int) -> dict[str, Any]:
    mixed, syms = _messages(1000, n, closing_every=20)
    closing, syms2 = _messages(1000, n, closing_every=1)
    best_mixed = max(_feed_rate(mixed, syms) for _ in range(3))
    best_closing = max(_feed_rate(closing, syms2) for _ in range(3))
    return {
        "messages": n,
        "mixed_msgs_per_s": round(best_mixed),
        "closing_only_msgs_per_s": round(best_closing),
        "goal_msgs_per_s": GOAL_MSGS,
        "ratio_to_goal": round(min(best_mixed, best_closing) / GOAL_MSGS, 2),
    }


# -- phases 2 and 3: lake live against a simulator process ----------------------------------------


async def _run_live(
    base_url: str,
    root: str,
    *,
    seconds: float | None,
    periods: int | None,
    grace: float,
    measure_after: int,
    compact_every: float = 60.0,
) -> dict[str, Any]:
    from lake.live.runner import LiveConfig, LiveRunner
    from lake.settings import Settings

    settings = Settings(root=root, sim_url=base_url, max_concurrency=32)
    cfg = LiveConfig(
        trade_types=("usdt_perp",), intervals=("1m",), history=2, grace_s=grace, periods=periods,
        duration_s=None, health_every_s=3600.0, exchange_info_every=1, compact_every_s=compact_every,
    )  # fmt: skip
    runner = LiveRunner(settings, cfg)
    marks: dict[str, Any] = {}
    written = _record_writes()

    async def watch() -> None:
        feed = runner.feeds[0] if runner.feeds else None
        while (
            feed is None
            or feed.book is None
            or not feed.catchup_done.is_set()
            or feed.stats.periods_complete < measure_after
        ):
            await asyncio.sleep(0.05)
            feed = runner.feeds[0]
        feed.stats.latencies.clear()
        marks["t0"] = time.monotonic()
        marks["ru0"] = resource.getrusage(resource.RUSAGE_SELF)
        marks["writes0"] = feed.writer.writes
        marks["pw0"] = feed.writer.partition_writes
        marks["busy0"] = feed.writer.busy_s
        marks["msgs0"] = feed.appender.stats.messages
        marks["p0"] = feed.stats.periods_complete
        if seconds is not None:
            await asyncio.sleep(seconds)
            runner.stop("benchmark window over")

    watcher = asyncio.create_task(watch())
    try:
        summary = await runner.run()
    finally:
        watcher.cancel()
        _record_writes(stop=True)
    t1 = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    feed = runner.feeds[0]
    lat = list(feed.stats.latencies)
    out: dict[str, Any] = {"summary": summary["feeds"][0], "latencies": lat}
    out["sent_latencies"] = _sent_latencies(base_url, written, marks.get("t0"))
    from lake.store.klines import scan_klines

    stored = scan_klines(root, "usdt_perp", "1m").select("symbol", "candle_begin_time").collect()
    out["lake_rows"] = stored.height
    out["lake_duplicates"] = stored.height - stored.unique().height
    out["writer_rows"] = feed.writer.rows
    if "t0" in marks:
        ru0 = marks["ru0"]
        wall = t1 - marks["t0"]
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        out.update(
            wall_s=round(wall, 2),
            cpu_s=round(cpu, 3),
            cpu_fraction=round(cpu / wall, 4) if wall > 0 else None,
            writes=feed.writer.writes - marks["writes0"],
            partition_writes=feed.writer.partition_writes - marks["pw0"],
            compactions=feed.writer.compactions,
            write_busy_s=round(feed.writer.busy_s - marks["busy0"], 3),
            messages=feed.appender.stats.messages - marks["msgs0"],
            periods=feed.stats.periods_complete - marks["p0"],
        )
    return out


def _record_writes(stop: bool = False) -> dict[tuple[str, int], float]:
    """Note when each websocket candle became readable (``KlineWriter.write`` wrapped for the run)."""
    from lake.live.appender import KlineWriter

    orig = getattr(KlineWriter, "_bench_orig_write", None)
    if stop:
        if orig is not None:
            KlineWriter.write = orig  # type: ignore[method-assign]
            del KlineWriter._bench_orig_write  # type: ignore[attr-defined]
        return {}
    orig = KlineWriter.write
    written: dict[tuple[str, int], float] = {}

    async def write(self: Any, rows_by_symbol: Any, source: str) -> Any:
        out = await orig(self, rows_by_symbol, source)
        if source == "ws":
            for sym, opens in out.stored.items():
                for t in opens:
                    written[(sym, t)] = out.finished[sym]
        return out

    KlineWriter._bench_orig_write = orig  # type: ignore[attr-defined]
    KlineWriter.write = write  # type: ignore[method-assign]
    return written


def _sent_latencies(base_url: str, written: dict[tuple[str, int], float], t0: float | None) -> list[float]:
    """Per closing candle written after ``t0``: seconds from the simulator handing the event to its
    socket to the end of the tail write. Both processes read CLOCK_MONOTONIC (time.monotonic and
    time.perf_counter are that clock on Linux), so this includes what the receipt-based figure
    cannot see: loopback, socket buffers and time the event waited before the client read it."""
    if t0 is None or not sys.platform.startswith("linux"):
        return []
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/_sim/ws_sent", timeout=30) as r:
        events = json.loads(r.read())["events"]
    out = []
    for sym, _iv, opened, sent in events:
        done = written.get((sym, int(opened)))
        if done is not None and sent >= t0:
            out.append(done - sent)
    return out


def _sim_kwargs(um_symbols: int, speed: float, intermediate: bool) -> dict[str, Any]:
    return {
        "seed": 1, "speed": speed, "start": None if speed == 1.0 else "2025-03-15T12:00:30Z", "history_days": 3,
        "n_symbols_by_market": {"um": um_symbols}, "n_symbols": 3, "awkward": False,
        "weight_limits": {"spot": 10**9, "um": 10**9, "cm": 10**9}, "ws_intermediate": intermediate,
        "cache_mb": 1024,
    }  # fmt: skip


def phase_latency(
    symbols: int, speed: float, periods: int, pin: bool, compact_every: float = 60.0
) -> dict[str, Any]:
    proc, hello = _start_sim(_sim_kwargs(int(symbols / 0.57) + 10, speed, False), pin)
    root = tempfile.mkdtemp(prefix="lake-bench-live-")
    try:
        res = asyncio.run(
            _run_live(
                hello["base_url"],
                root,
                seconds=None,
                periods=periods + 2,
                grace=45.0,
                measure_after=2,
                compact_every=compact_every,
            )
        )
    finally:
        proc.terminate()
        proc.join(10)
        shutil.rmtree(root, ignore_errors=True)
    lat = res["latencies"]
    s = res["summary"]
    return {
        "symbols": hello["symbols"],
        "speed": speed,
        "periods_measured": res.get("periods"),
        "candles": len(lat),
        "p50_ms": _pct(lat, 0.5),
        "p99_ms": _pct(lat, 0.99),
        "max_ms": _pct(lat, 1.0),
        "goal_p99_ms": GOAL_P99_MS,
        "sent_candles": len(res["sent_latencies"]),
        "sent_p50_ms": _pct(res["sent_latencies"], 0.5),
        "sent_p99_ms": _pct(res["sent_latencies"], 0.99),
        "sent_max_ms": _pct(res["sent_latencies"], 1.0),
        "tail_files_written": res.get("writes"),
        "partition_writes": res.get("partition_writes"),
        "compactions": res.get("compactions"),
        "rest_repaired": s["rest_repaired"],
        "lake_rows": res["lake_rows"],
        "lake_duplicates": res["lake_duplicates"],
        "writer_rows_after_catchup": res["writer_rows"],
        "ws_closed": s["appender"]["closed"],
        "bad_messages": sum(s["appender"]["bad"].values()),
    }


def phase_cpu(symbols: int, seconds: float, pin: bool) -> dict[str, Any]:
    proc, hello = _start_sim(_sim_kwargs(int(symbols / 0.57) + 10, 1.0, True), pin)
    root = tempfile.mkdtemp(prefix="lake-bench-live-cpu-")
    try:
        res = asyncio.run(
            _run_live(hello["base_url"], root, seconds=seconds, periods=None, grace=10.0, measure_after=0)
        )
    finally:
        proc.terminate()
        proc.join(10)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "symbols": hello["symbols"],
        "wall_s": res.get("wall_s"),
        "cpu_s": res.get("cpu_s"),
        "cpu_fraction_of_one_core": res.get("cpu_fraction"),
        "messages": res.get("messages"),
        "msgs_per_s": round(res["messages"] / res["wall_s"], 1) if res.get("wall_s") else None,
        "tail_files_written": res.get("writes"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--latency-symbols", type=int, default=1000)
    ap.add_argument("--speed", type=float, default=4.0)
    ap.add_argument("--periods", type=int, default=5)
    ap.add_argument("--small-symbols", type=int, default=50, help="latency again with this few symbols")
    ap.add_argument("--cpu-symbols", type=int, default=300)
    ap.add_argument("--cpu-seconds", type=float, default=60.0)
    ap.add_argument("--compact-every", type=float, default=60.0, help="seconds between tail compactions")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args(argv)
    pin = not args.no_pin
    import logging

    logging.getLogger("lake").setLevel(logging.WARNING)
    client_pinned = pin_cpu(1) if pin else False
    t0 = time.perf_counter()
    out: dict[str, Any] = {"bench": "live", "pinned": client_pinned, "cpus": os.cpu_count()}
    out["appender"] = phase_appender(args.messages)
    if not args.skip_latency:
        ce = args.compact_every
        out["latency"] = phase_latency(args.latency_symbols, args.speed, args.periods, pin, ce)
        out["latency_small"] = phase_latency(args.small_symbols, args.speed * 5, args.periods, pin, ce)
    if not args.skip_cpu:
        out["cpu"] = phase_cpu(args.cpu_symbols, args.cpu_seconds, pin)
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, separators=(",", ":")))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
