"""Simulator REST throughput; prints ONE JSON line.

    python -m bench.sim_rest                     # defaults: 20 symbols x 60 days, 8 concurrent requests
    python -m bench.sim_rest --requests 20000 --seconds 30 --concurrency 16

The server runs in its own process (Polars limited to one thread; ``--pin`` pins it to CPU 0 and the
client to CPU 1), the aiohttp client in this one. Requests are USDⓈ-M
``/fapi/v1/klines`` at ``interval=5m&limit=499`` over loopback, with weight limits raised so nothing is
refused. Two phases in the same run:

* **cold**: every page of the working set once, in order (generation of 1m data, derivation to 5m and
  formatting of the day blocks happen inside these requests);
* **warm**: random pages of the same working set (row blocks cached), bounded by ``--requests`` and
  ``--seconds``.

Reported: requests/s of each phase (wall clock) and its ratio to the goal (1000 req/s); requests per
second of *server CPU time* (from /proc; what a dedicated core would serve, and robust to other load on
a shared machine) and its ratio to the goal; latency percentiles; and, measured in this process, the cost of generating one symbol-day of 1m candles and of one 5m day block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time

from bench._simproc import pin, server_main

GOAL = 1000.0
START = "2025-03-15T12:00:00Z"
M5 = 300_000
ROWS = 499


async def _run(
    base: str, urls: list[str], concurrency: int, deadline: float | None
) -> tuple[int, float, list[float]]:
    import aiohttp

    latencies: list[float] = []
    it = iter(urls)
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for url in it:
            if deadline is not None and time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            async with session.get(base + url) as r:
                body = await r.read()
            latencies.append(time.perf_counter() - t0)
            if r.status != 200 or body.count(b"],[") != ROWS - 1:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return errors, elapsed, latencies


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), to express throughput per server CPU second."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def _local_costs() -> dict[str, float]:
    """Generation and formatting costs measured in this process (no server involved)."""
    from lake.binance.intervals import parse_interval
    from lake.sim import SimMarket
    from lake.sim.clock import MS_PER_DAY, to_ms
    from lake.sim.fmt import json_block
    from lake.sim.testing import test_config

    market = SimMarket(test_config(history_days=120))
    infos = [market.info("um", s) for s in market.symbols("usdt_perp")[:5]]
    day0 = to_ms(START) // MS_PER_DAY - 100
    t0 = time.perf_counter()
    n = 0
    for info in infos:
        for d in range(day0, day0 + 20):
            market.minutes(info, d)
            n += 1
    gen = (time.perf_counter() - t0) / n
    iv = parse_interval("5m")
    days = [market.day_candles(infos[0], iv, d) for d in range(day0, day0 + 20)]
    t0 = time.perf_counter()
    for c in days:
        json_block(infos[0], iv, c)
    fmt = (time.perf_counter() - t0) / len(days)
    return {
        "gen_1m_ms_per_symbol_day": round(gen * 1000, 3),
        "format_5m_block_ms_per_day": round(fmt * 1000, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--requests", type=int, default=10_000, help="warm phase: at most this many requests")
    ap.add_argument("--seconds", type=float, default=15.0, help="warm phase: at most this long")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--pin", action="store_true", help="pin server and client to CPUs 0 and 1")
    args = ap.parse_args(argv)

    from lake.sim import SimConfig, SimMarket
    from lake.sim.universe import Universe

    def plain_perps(cfg: SimConfig) -> list[str]:
        syms = Universe(cfg).symbols["um"].values()
        return [i.symbol for i in syms if i.trade_type == "usdt_perp" and not i.roles]

    n_symbols = 10  # grow the market until usdt_perp has enough symbols without awkward roles
    while (
        len(plain_perps(SimConfig(start=START, n_symbols=n_symbols, history_days=args.days + 5)))
        < args.symbols
    ):
        n_symbols += 1
    kwargs = {
        "seed": 1, "speed": 0.0, "start": START, "n_symbols": n_symbols, "history_days": args.days + 5,
        "weight_limits": {"spot": 10**9, "um": 10**9, "cm": 10**9}, "ws_intermediate": False, "cache_mb": 1024,
    }  # fmt: skip
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(kwargs, child, args.pin), daemon=True)
    proc.start()
    try:
        hello = parent.recv()
        base = hello["base_url"]
        client_pinned = pin(1) if args.pin else False
        assert proc.pid is not None

        market = SimMarket(SimConfig(**kwargs))  # same universe as the server, for symbol names
        symbols = plain_perps(market.config)[: args.symbols]
        first = market.universe.start_day_ms - args.days * 86_400_000
        last_start = market.universe.start_day_ms - ROWS * M5
        pages = [(s, t) for s in symbols for t in range(first, last_start, ROWS * M5)]

        def url(sym: str, t: int) -> str:
            return f"/fapi/v1/klines?symbol={sym}&interval=5m&startTime={t}&limit={ROWS}"

        cold_urls = [url(s, t) for s, t in pages]
        cpu0 = _cpu_seconds(proc.pid)
        cold_err, cold_s, cold_lat = asyncio.run(_run(base, cold_urls, args.concurrency, None))
        cpu1 = _cpu_seconds(proc.pid)
        rng = random.Random(1)
        warm_urls = []
        for _ in range(args.requests):
            s = rng.choice(symbols)
            t = first + rng.randrange(0, (last_start - first) // M5) * M5
            warm_urls.append(url(s, t))
        deadline = time.perf_counter() + args.seconds
        warm_err, warm_s, warm_lat = asyncio.run(_run(base, warm_urls, args.concurrency, deadline))
        cpu2 = _cpu_seconds(proc.pid)
        costs = _local_costs()
    finally:
        proc.terminate()
        proc.join(10)
    cold_rps = len(cold_lat) / cold_s
    warm_rps = len(warm_lat) / warm_s

    def per_cpu(n: int, a: float | None, b: float | None) -> float | None:
        return round(n / (b - a), 1) if a is not None and b is not None and b > a else None

    warm_cpu = per_cpu(len(warm_lat), cpu1, cpu2)
    cold_cpu = per_cpu(len(cold_lat), cpu0, cpu1)
    out = {
        "bench": "sim_rest",
        "goal_req_s": GOAL,
        "warm_req_s": round(warm_rps, 1),
        "warm_ratio_to_goal": round(warm_rps / GOAL, 3),
        "cold_req_s": round(cold_rps, 1),
        "cold_ratio_to_goal": round(cold_rps / GOAL, 3),
        "cold_over_warm": round(cold_rps / warm_rps, 3),
        # Requests per second of server CPU time: what one free core would serve (robust to other load).
        "warm_req_per_server_cpu_s": warm_cpu,
        "warm_cpu_ratio_to_goal": round(warm_cpu / GOAL, 3) if warm_cpu else None,
        "cold_req_per_server_cpu_s": cold_cpu,
        "cold_cpu_ratio_to_goal": round(cold_cpu / GOAL, 3) if cold_cpu else None,
        "warm_requests": len(warm_lat),
        "warm_seconds": round(warm_s, 3),
        "cold_requests": len(cold_lat),
        "cold_seconds": round(cold_s, 3),
        "warm_latency_ms_p50": round(_pct(warm_lat, 0.5), 3),
        "warm_latency_ms_p99": round(_pct(warm_lat, 0.99), 3),
        "warm_latency_ms_mean": round(statistics.fmean(warm_lat) * 1000, 3) if warm_lat else None,
        "errors": cold_err + warm_err,
        "rows_per_request": ROWS,
        "interval": "5m",
        "symbols": len(symbols),
        "days": args.days,
        "concurrency": args.concurrency,
        "server_pinned": hello["pinned"],
        "client_pinned": client_pinned,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        **costs,
    }
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
