"""``lake demo``: the whole pipeline, offline, against the built-in simulator.

1. start the simulator in-process (deterministic market, clock sped up);
2. backfill ``usdt_perp`` and ``usdt_spot`` 5m candles: archive files first, REST for the recent days;
3. run live for a few sped-up periods while the simulator drops the websocket connections;
4. build 1h candles at all 12 offsets from the 5m base;
5. compare them with the simulator's Quantclass-compatible reference (the seed's error table);
6. print coverage, and write a chart of one symbol with two offsets overlaid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from lake.errors import ValidationError
from lake.settings import Settings
from lake.store.coverage import coverage
from lake.store.fs import LakeFS

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger("lake.demo")

TRADE_TYPES = ("usdt_perp", "usdt_spot")


@dataclass(frozen=True)
class DemoOptions:
    root: str | None = None  # None: a temporary lake, removed at the end
    plot: str = "lake-demo.png"
    symbols: int = 30  # simulator symbols per market (a few dozen per trade type after filtering)
    days: int = 7
    live_periods: int = 3
    speed: float = 120.0
    seed: int = 1
    start: str = "2025-06-02T00:02:00Z"
    interval: str = "5m"
    target: str = "1h"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DemoResult:
    root: str
    plot: Path
    steps: dict[str, float] = field(default_factory=dict)
    compare: pl.DataFrame | None = None
    rows: int = 0


@contextmanager
def _step(console: Console, result: DemoResult, name: str) -> Iterator[None]:
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    yield
    result.steps[name] = time.perf_counter() - t0
    console.print(f"[green]✓[/green] {name} in {result.steps[name]:.1f}s")


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    """Run every stage; raises on the first failure (nothing is skipped silently)."""
    from lake.sim import SimConfig, run_in_thread

    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="lake-demo-") as tmp:
        root = options.root or str(Path(tmp) / "lake")
        result = DemoResult(root=root, plot=Path(options.plot))
        config = SimConfig(
            seed=options.seed,
            n_symbols=options.symbols,
            speed=options.speed,
            start=options.start,
            history_days=max(40, options.days + 10),
            ws_intermediate=False,
        )
        with _step(console, result, "start the simulator"):
            handle = run_in_thread(config, extra_routes=_extra_routes())
        try:
            console.print(f"simulator at {handle.base_url} (seed {options.seed}, {options.speed:g}x clock)")
            settings = Settings(root=root, sim_url=handle.base_url, state_dir=str(Path(tmp) / "state"))
            _run_stages(options, settings, handle, console, result)
        finally:
            handle.stop()
        return result


def _extra_routes() -> Callable[..., Any] | None:
    try:
        from lake.sim.quantclass import add_quantclass_routes
    except ImportError:
        return None
    return add_quantclass_routes


def _run_stages(
    options: DemoOptions, settings: Settings, handle: Any, console: Console, result: DemoResult
) -> None:
    from lake.ingest.archive.hybrid import archive_backfill
    from lake.live.runner import LiveConfig, run_live
    from lake.progress import Progress
    from lake.transform.build import build_offsets

    lfs = LakeFS(settings.root)
    with _step(console, result, f"backfill {', '.join(TRADE_TYPES)} {options.interval} (archive + REST)"):
        with Progress(console=console) as progress:
            hybrid = asyncio.run(
                archive_backfill(
                    lfs, list(TRADE_TYPES), options.interval, settings=settings, days=options.days,
                    source="auto", progress=progress,
                )
            )  # fmt: skip
        for rep in hybrid.archive:
            console.print(
                f"  archive {rep.trade_type}: {len(rep.symbols)} symbols, {rep.rows} rows "
                f"from {rep.files_downloaded} verified files"
            )
        if hybrid.rest is not None:
            r = hybrid.rest
            console.print(
                f"  rest: {r.candles} candles for the days the archive lacks, {r.holes} exchange-empty slots, "
                f"weight utilisation {r.utilisation:.0%}"
            )

    with _step(console, result, f"live for {options.live_periods} periods, connections dropped every 2 s"):
        handle.faults.update({"ws_drop_every_s": 2.0})
        live = LiveConfig(
            trade_types=TRADE_TYPES, intervals=(options.interval,), periods=options.live_periods, grace_s=20.0
        )
        summary = asyncio.run(run_live(settings, live, install_signals=False))
        handle.faults.update({"ws_drop_every_s": None})
        for feed in summary.get("feeds", []):
            ws = feed.get("ws", {})
            console.print(
                f"  live {feed.get('feed')}: {feed.get('live')} symbols, watermark {feed.get('watermark')}, "
                f"{ws.get('drops', 0)} dropped connections reconnected, "
                f"{feed.get('appender', {}).get('closed', 0)} closed candles from ws, "
                f"{feed.get('rest_repaired', 0)} repaired over REST"
            )

    with _step(console, result, "rerun the backfill: only what is still missing is fetched"):
        # Live stops after --periods boundaries; a period still waiting for its repair at that moment
        # is what a restart would fill. The rerun plans from the lake, so it is nearly free.
        from lake.ingest.backfill import backfill

        again = asyncio.run(
            backfill(lfs, list(TRADE_TYPES), options.interval, days=options.days, settings=settings)
        )
        console.print(f"  {again.candles} candles written, {again.fetched} fetched")

    with _step(console, result, f"{options.target} candles at every offset from {options.interval}"):
        for tt in TRADE_TYPES:
            built = build_offsets(lfs, tt, options.target, base=options.interval)
            console.print(
                f"  {tt}: {built.symbols} symbols × {len(built.offsets)} offsets, {built.bins} bins, "
                f"{built.written} files written"
            )

    with _step(console, result, "compare with the (simulated) Quantclass reference"):
        result.compare = _compare(settings, options, console)

    with _step(console, result, "coverage"):
        _print_coverage(lfs, console, result)

    with _step(console, result, f"chart → {result.plot}"):
        _plot(lfs, options, result.plot)


def _compare(settings: Settings, options: DemoOptions, console: Console) -> pl.DataFrame | None:
    try:
        from lake.quantclass.compare import compare_quantclass
    except ImportError:
        console.print("[yellow]comparison not available in this build[/yellow]")
        return None
    import io

    frames = []
    lfs = LakeFS(settings.root)
    for tt in TRADE_TYPES:
        result = asyncio.run(compare_quantclass(settings, tt, options.target))
        console.print(f"\n{tt} errors (max |ours / reference - 1| over all symbols and offsets):")
        for column, err in result.summary.iter_rows():
            console.print(f"  {column:<30} {err:.6e}" if err is not None else f"  {column:<30} -")
        detail = result.detail.with_columns(pl.lit(tt).alias("trade_type"))
        buf = io.BytesIO()
        detail.write_parquet(buf)
        lfs.write_atomic(f"_reports/compare_{tt}.parquet", buf.getvalue())
        frames.append(detail)
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _print_coverage(lfs: LakeFS, console: Console, result: DemoResult) -> None:
    table = Table(title="coverage")
    for col in ("type", "interval", "symbols", "rows", "missing", "exchange holes"):
        table.add_column(col)
    covs = coverage(lfs)
    groups: dict[tuple[str, str], list[Any]] = {}
    for c in covs:
        groups.setdefault((c.trade_type, c.interval), []).append(c)
    for (tt, iv), cs in sorted(groups.items()):
        rows = sum(c.rows for c in cs)
        result.rows += rows
        table.add_row(
            tt,
            iv,
            str(len(cs)),
            str(rows),
            str(sum(c.missing for c in cs)),
            str(sum(c.exchange_missing for c in cs)),
        )
    console.print(table)


def _plot(lfs: LakeFS, options: DemoOptions, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from lake.store.klines import scan_klines
    from lake.transform.build import scan_offsets

    symbol = "BTCUSDT"
    end = (
        scan_klines(lfs, "usdt_perp", options.interval, symbol)
        .select(pl.col("candle_begin_time").max())
        .collect()
    )
    last = end.item()
    start = last - dt.timedelta(hours=36)
    base = (
        scan_klines(lfs, "usdt_perp", options.interval, symbol, start=start)
        .collect()
        .sort("candle_begin_time")
    )
    offs = (
        scan_offsets(lfs, "usdt_perp", options.target, ["0m", "30m"], symbol, start=start)
        .collect()
        .sort("offset", "candle_begin_time")
    )
    fig, ax = plt.subplots(figsize=(12, 5), dpi=110)
    ax.plot(base["candle_begin_time"], base["close"], color="0.7", lw=0.8, label=f"{options.interval} close")
    for off, color in (("0m", "tab:blue"), ("30m", "tab:orange")):
        part = offs.filter(pl.col("offset") == off)
        width = 50 / 1440  # days, matplotlib's date unit: 50 of the bin's 60 minutes
        shift = 3 / 1440 if off == "30m" else 0.0  # keep the two offsets' wicks apart
        for ti, o, h, lo, c in part.select("candle_begin_time", "open", "high", "low", "close").iter_rows():
            x = float(mdates.date2num(ti))
            ax.vlines(x + width / 2 + shift, lo, h, color=color, lw=0.8)
            ax.add_patch(
                plt.Rectangle(
                    (x, min(o, c)), width, abs(c - o) or 1e-9, fill=(c >= o), color=color, alpha=0.35
                )
            )
        ax.plot([], [], color=color, lw=6, alpha=0.5, label=f"{options.target} offset {off}")
    ax.set_title(
        f"{symbol} usdt_perp: {options.target} candles at offsets 0m and 30m over {options.interval} closes"
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def demo_options(**values: Any) -> DemoOptions:
    """The demo's options with the given ones set; bad values fail here, before the simulator
    starts (a negative --days used to start it and print a step first)."""
    options = replace(DemoOptions(), **{k: v for k, v in values.items() if v is not None})
    # (the simulator needs 3 symbols per market)
    for name, least in (("days", 1), ("symbols", 3), ("live_periods", 1)):
        value = getattr(options, name)
        if not isinstance(value, int) or value < least:
            flag = "--periods" if name == "live_periods" else f"--{name}"
            raise ValidationError(f"{flag} must be a whole number >= {least}, got {value!r}")
    return options
