"""Shared checks for the live tests: lake vs simulator truth, a DuckDB reader, a watermark auditor."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from aiohttp import web

from lake.live.watermark import read_watermark
from lake.query.connect import _TORN, connect
from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA
from lake.store.fs import LakeFS
from lake.store.klines import list_partitions, list_series, read_partition
from lake.store.tail import read_tail

M = 60_000
VALUES = [c for c in KLINE_COLUMNS if c != "source"]


async def until(cond: Any, within: float) -> None:
    """Wait until ``cond()`` holds, at most ``within`` seconds (``TimeoutError`` otherwise)."""
    async with asyncio.timeout(within):
        while True:  # (a polled condition of another task's state, not an event to wait on)
            if cond():
                return
            await asyncio.sleep(0.01)


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def lake_frame(root: str | Path, tt: str = "usdt_perp", iv: str = "1m") -> pl.DataFrame:
    """Every stored row of one (trade type, interval), each file read in one go.

    (Lazy scans open a file twice - footer at plan time, pages later - and can fail when the live
    writer replaces it in between; reading the bytes once is immune.) The live tail is read first
    and wins over partition rows, the rule of ``scan_klines`` and the ``klines`` view.
    """
    lfs = LakeFS(root)
    tail = read_tail(lfs, tt, iv)
    frames = []
    for t, i, sym in list_series(lfs):
        if (t, i) != (tt, iv):
            continue
        for key in list_partitions(lfs, t, i, sym):
            df = read_partition(lfs, key)
            if df is not None:
                frames.append(df.with_columns(pl.lit(sym).alias("symbol")))
    if frames and tail.height:
        parts = pl.concat(frames).join(tail, on=["symbol", "candle_begin_time"], how="anti")
        frames = [parts, tail]
    elif tail.height:
        frames = [tail]
    if not frames:
        return pl.DataFrame(schema={"symbol": pl.String, **KLINE_SCHEMA, "t": pl.Int64})
    return (
        pl.concat([f.select(["symbol", *KLINE_COLUMNS]) for f in frames])
        .with_columns(pl.col("candle_begin_time").dt.epoch("ms").alias("t"))
        .sort("symbol", "t")
    )


def diff_truth(lake: pl.DataFrame, truth: pl.DataFrame) -> dict[str, Any]:
    """Rows missing from the lake, extra in the lake, and rows whose values differ."""
    key = ["symbol", "candle_begin_time"]
    t = truth.select(["symbol", *VALUES])
    lk = lake.select(["symbol", *VALUES])
    missing = t.join(lk, on=key, how="anti")
    extra = lk.join(t, on=key, how="anti")
    both = t.join(lk, on=key, suffix="_lake")
    differ = both.filter(pl.any_horizontal([pl.col(c) != pl.col(f"{c}_lake") for c in VALUES[1:]]))
    return {
        "missing": missing.height,
        "extra": extra.height,
        "differ": differ.height,
        "missing_rows": missing.head(5).to_dicts(),
        "extra_rows": extra.head(5).to_dicts(),
        "differ_rows": differ.select(key).head(5).to_dicts(),
        "differ_src": lake.join(differ.select(key), on=key).select(*key, "source").head(5).to_dicts()
        if "source" in lake.columns
        else None,
    }


# A file replaced between DuckDB's two opens of it (lake.query.connect's patterns, less a file gone)
TORN = tuple(t for t in _TORN if t not in ("FileNotFoundError", "No such file", "FileExpired"))


def assert_equals_truth(sim: Any, root: str | Path, tt: str, iv: str, symbols: list[str]) -> int:
    """Every stored candle up to the watermark equals the simulator's truth for ``symbols``, none
    twice; returns the watermark (ms)."""
    wm = read_watermark(root, tt, iv)
    assert wm is not None
    lake = lake_frame(root, tt, iv)
    truth = sim.market.truth(tt, iv, symbols, int(lake["t"].min()), wm["watermark_ms"] + 1)
    d = diff_truth(lake.filter(pl.col("t") <= wm["watermark_ms"]), truth)
    assert d["missing"] == d["extra"] == d["differ"] == 0, d
    assert lake.select("symbol", "t").is_duplicated().sum() == 0
    return int(wm["watermark_ms"])


class DuckReader(threading.Thread):
    """Queries the ``klines`` view of ``lake.connect`` in a loop, as a notebook would; counts queries,
    errors, and results holding a candle twice (the tail and the partitions must add up exactly).

    Every failure is an error, none is retried: a query torn by a partition file replaced between
    DuckDB's two opens of it (footer, then pages) cannot happen since rewrites are relocated
    (lake.store.relocate), and a tail file does not vanish between DuckDB's listing and its open on
    a local disk (retired in place, lake.store.tail; only stubs beyond 64 per directory are
    deleted, which these runs do not reach). ``torn`` and ``gone`` count those two kinds among the
    errors.
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(daemon=True)
        self.root = str(root)
        self.stop_flag = threading.Event()
        self.queries = 0
        self.torn = 0
        self.gone = 0  # a tail file deleted between DuckDB's listing and its open
        self.with_tail = 0  # queries that saw candles still in the tail
        self.duplicates = 0
        self.errors: list[str] = []

    def _query(self, con: duckdb.DuckDBPyConnection) -> None:
        n, distinct, from_tail = con.execute(
            "SELECT count(*), count(DISTINCT (symbol, candle_begin_time)), "
            "(SELECT count(*) FROM klines_tail) FROM klines"
        ).fetchone() or (0, 0, 0)
        if n != distinct:
            self.duplicates += 1
            self.errors.append(f"{n - distinct} candles counted twice")
        self.with_tail += from_tail > 0

    def run(self) -> None:
        con: duckdb.DuckDBPyConnection | None = None
        try:
            while not self.stop_flag.is_set():
                if con is None:
                    if not any(Path(self.root).glob("klines_tail/*/*/[0-9]*.parquet")):
                        time.sleep(0.01)
                        continue
                    con = connect(self.root)  # once the tail holds candles (else klines is partitions only)
                try:
                    self._query(con)
                except duckdb.Error as exc:
                    msg = str(exc)
                    self.torn += any(t in msg for t in TORN)
                    self.gone += "klines_tail" in msg and "No such file" in msg
                    self.errors.append(msg)
                self.queries += 1
                time.sleep(0.01)
        finally:
            if con is not None:
                con.close()

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(timeout=10)


class WatermarkAuditor(threading.Thread):
    """Whenever the watermark moves, checks that every followed symbol that has a truth candle at
    each period in (start, watermark] has it in the lake (the watermark never runs ahead)."""

    def __init__(self, root: str | Path, truth_fn: Any, tt: str = "usdt_perp", iv: str = "1m") -> None:
        super().__init__(daemon=True)
        self.root, self.truth_fn, self.tt, self.iv = root, truth_fn, tt, iv
        self.stop_flag = threading.Event()
        self.checks = 0
        self.violations: list[str] = []
        self.seen: list[int] = []

    def run(self) -> None:
        last = None
        while not self.stop_flag.is_set():
            doc = read_watermark(self.root, self.tt, self.iv)
            wm = doc.get("watermark_ms") if doc else None
            if isinstance(wm, int) and wm != last:
                if last is not None and wm < last:
                    self.violations.append(f"watermark went back {last} -> {wm}")
                last = wm
                self.seen.append(wm)
                lo = wm - 4 * M
                lake = lake_frame(self.root, self.tt, self.iv).filter(pl.col("t").is_between(lo, wm))
                truth = self.truth_fn(lake["symbol"].unique().sort().to_list(), lo, wm + M)
                d = diff_truth(lake, truth)
                if d["missing"]:
                    self.violations.append(f"watermark {utc(wm)} ahead of data: {d['missing_rows']}")
                self.checks += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(timeout=10)


@contextlib.asynccontextmanager
async def post_server(path: str, handle: Any) -> AsyncIterator[str]:
    """A real local HTTP server answering POSTs to ``path`` with ``handle``; yields its URL."""
    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        await runner.cleanup()


async def run_while(runner: Any, scenario: Any, limit_s: float) -> Any:
    """``runner.run()`` (at most ``limit_s`` seconds) while the coroutine ``scenario`` plays against it;
    the scenario is cancelled when the run ends, its errors re-raised."""
    play = asyncio.create_task(scenario)
    try:
        return await asyncio.wait_for(runner.run(), timeout=limit_s)
    finally:
        play.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await play


@contextlib.asynccontextmanager
async def webhook(delay_s: float = 0.0) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """A real local webhook for alerts: yields (the JSON bodies posted, its URL); each answer comes
    ``delay_s`` late."""
    posts: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        if delay_s:
            await asyncio.sleep(delay_s)
        posts.append(await request.json())
        return web.json_response({"ok": True})

    async with post_server("/alerts", handle) as url:
        yield posts, url


def closing_events(messages: list[str | bytes]) -> list[tuple[str, int]]:
    """(stream, open time) of the closing kline events among raw websocket ``messages``."""
    out = []
    for m in messages:
        doc = json.loads(m)
        data = doc.get("data", doc)
        if data.get("e") == "kline" and data["k"]["x"]:
            out.append((doc.get("stream", ""), data["k"]["t"]))
    return out
