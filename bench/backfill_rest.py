"""REST backfill at the weight limit against a simulator process; prints ONE JSON line.

    python -m bench.backfill_rest              # 105 usdt_perp + 105 usdt_spot symbols, 120 days, 2x clock
    python -m bench.backfill_rest --symbols 300 --days 15 --speed 10 --types usdt_perp,usdt_spot

The simulator runs in its own process (real weight limits: 2400/min USDⓈ-M, 6000/min spot; its clock
sped up ``--speed``×, so a weight window lasts 60/speed real seconds; ``--pin`` puts it on CPU 0 and
this process on CPU 1). This process runs ``lake.ingest.backfill.backfill`` for ``--days`` of
``--interval`` klines of every TRADING symbol of each trade type into a fresh lake.

Reported:

* ``efficiency`` = theoretical minimum time ÷ actual time. The minimum is, for the market whose
  budget binds, (weight needed ÷ weight per window) × window, in real seconds. "Weight needed" is
  the weight of the ideal page plan (``plan_pages`` over each symbol's available history in the
  range, nothing else); ``efficiency_sent`` uses the weight actually sent instead (with time syncs,
  exchangeInfo and first-candle probes). Actual time is the whole ``backfill`` call, start-up and
  the last write included. Above 1 is possible: a run may start mid-window with the window's budget
  unused.
* 429/418 responses and the highest weight used in any window (from the simulator's stats);
* rows/s = candles written ÷ actual time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._simproc import pin, server_main


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _ideal_weight(report: Any) -> dict[str, int]:
    from lake.binance.intervals import parse_interval
    from lake.binance.markets import get_trade_type
    from lake.ingest.pages import plan_pages

    out: dict[str, int] = {}
    for s in report.series:
        tt = get_trade_type(s.trade_type)
        iv = parse_interval(s.interval)
        if s.first_ms is None:
            continue
        a = max(s.start_ms, s.first_ms)
        b = s.end_ms if s.status != "ended" or s.last_ms is None else iv.next_open(s.last_ms)
        w = sum(p.weight for p in plan_pages(tt.market, iv, a, b))
        out[tt.market_name] = out.get(tt.market_name, 0) + w
    return out


async def _backfill(base_url: str, root: Path, types: list[str], interval: str, days: float) -> Any:
    from lake.binance.markets import Endpoints
    from lake.ingest.backfill import backfill

    return await backfill(
        root, types, interval, days=days, endpoints=Endpoints.simulator(base_url), state_dir=root / ".state"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--symbols",
        type=int,
        default=180,
        help="simulated symbols per market (180: >= 100 TRADING usdt_perp)",
    )
    # 120 days x 105 symbols needs ~3 USDⓈ-M windows of weight: a run the budget, not the CPU, bounds.
    ap.add_argument("--days", type=float, default=120)
    ap.add_argument("--interval", default="5m")
    ap.add_argument(
        "--speed",
        type=float,
        default=2.0,
        help="simulator clock speed (2: 30 s weight windows; at 60 the client CPU, not the weight, binds)",
    )
    ap.add_argument("--types", default="usdt_perp,usdt_spot")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pin", action="store_true", help="pin the simulator to CPU 0 and this process to CPU 1")
    ap.add_argument("--keep", action="store_true", help="keep the lake directory")
    ap.add_argument(
        "--um-limit",
        type=int,
        default=2400,
        help="USDⓈ-M weight limit (diagnostics only; the benchmark uses 2400)",
    )
    args = ap.parse_args(argv)
    types = [t.strip() for t in args.types.split(",") if t.strip()]

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    kwargs: dict[str, Any] = {
        "seed": args.seed,
        "n_symbols": args.symbols,
        "speed": args.speed,
        "history_days": 60,
    }
    if args.um_limit != 2400:
        kwargs["weight_limits"] = {"spot": 6000, "um": args.um_limit, "cm": 2400}
    server = ctx.Process(target=server_main, args=(kwargs, child, args.pin), daemon=True)
    server.start()
    info = parent.recv()
    pinned = pin(1) if args.pin else False
    base = info["base_url"]
    root = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    try:
        _get_json(f"{base}/_sim/stats")
        t0 = time.perf_counter()
        report = asyncio.run(_backfill(base, root, types, args.interval, args.days))
        elapsed = time.perf_counter() - t0
        stats = _get_json(f"{base}/_sim/stats")["rest"]
    finally:
        server.terminate()
        server.join(5)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    window_real = 60.0 / args.speed
    ideal = _ideal_weight(report)
    per_market: dict[str, Any] = {}
    t_min = t_min_sent = 0.0
    for m, mr in report.markets.items():
        need = ideal.get(m, 0)
        tm = need / mr.weight_limit * window_real
        ts = mr.weight / mr.weight_limit * window_real
        t_min, t_min_sent = max(t_min, tm), max(t_min_sent, ts)
        st = stats[m]["status"]
        per_market[m] = {
            "weight_limit": mr.weight_limit,
            "weight_needed": need,
            "weight_sent": mr.weight,
            "requests": mr.requests,
            "min_time_s": round(tm, 3),
            "status_429": int(st.get("429", 0)),
            "status_418": int(st.get("418", 0)),
            "max_used_weight": stats[m]["max_used_weight"],
        }
    result = {
        "bench": "backfill_rest",
        "types": types,
        "symbols": report.symbols,
        "days": args.days,
        "interval": args.interval,
        "speed": args.speed,
        "window_real_s": round(window_real, 3),
        "elapsed_s": round(elapsed, 3),
        "min_time_s": round(t_min, 3),
        "efficiency": round(t_min / elapsed, 4) if elapsed else None,
        "efficiency_sent": round(t_min_sent / elapsed, 4) if elapsed else None,
        "candles": report.candles,
        "rows_per_s": round(report.candles / elapsed) if elapsed else None,
        "status_429": sum(v["status_429"] for v in per_market.values()),
        "status_418": sum(v["status_418"] for v in per_market.values()),
        "missing": len(report.missing),
        "markets": per_market,
        "pinned": bool(pinned and info.get("pinned")),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
