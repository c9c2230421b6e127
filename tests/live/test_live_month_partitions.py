"""Findings of a soak of `lake live` on month and year partitions (3m-30m, 1h/4h) across a month
end and a year end, against a separate `lake sim` (scripts kept out of the repo)."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

import lake.transform.build as build_module
from lake.live.appender import KlineWriter
from lake.live.period import PeriodBook
from lake.live.runner import LiveConfig, LiveRunner
from lake.settings import Settings
from lake.sim.testing import sim_server, test_config
from lake.store.fs import LakeFS
from lake.store.klines import list_partitions, list_series, read_partition, scan_klines, write_klines
from lake.transform.build import build_offsets, scan_offsets
from tests.transform.helpers import random_candles

from .helpers import assert_equals_truth

TT, SYM = "usdt_perp", "BTCUSDT"
KEY = ["symbol", "offset", "candle_begin_time"]


def _ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("base", "target", "b_ms", "start", "dates"),
    [
        # 3m-30m: month partitions; the base crosses into December
        ("3m", "15m", 180_000, "2026-11-30T20:00", ["2026-11-01", "2026-12-01"]),
        # 1h and longer: year partitions; the base crosses into 2027
        ("1h", "4h", 3_600_000, "2026-12-28T00:00", ["2026-01-01", "2027-01-01"]),
    ],
)
def test_first_offsets_build_racing_a_compaction_holds_each_bin_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    base: str,
    target: str,
    b_ms: int,
    start: str,
    dates: list[str],
) -> None:
    """`lake live --interval 3m,15m,30m --offsets 15m,1h` from an empty lake: the first offsets build
    of a series (every bin recomputed) takes the day fingerprints of a month or year partition from
    its footer, then reads its rows; a compaction of the live tail appended a candle in between. That
    candle completed a bin in the period files while the manifest recorded the footer's older
    fingerprints, so the next build took the candle for an append and put the bin into a tail layer
    as well: the `offsets` view and scan_offsets held it twice (found with 22 symbols, 1 bin of
    66,240; a 1m base has day files, whose fingerprints are hashed from the rows read)."""
    root = tmp_path / "lake"
    rows = random_candles(7, b_ms, 120, start_ms=_ms(start), hole_rate=0.0)
    first, racing_rows, later = rows.head(70), rows.slice(70, 1), rows.slice(71, 49)
    write_klines(root, TT, base, SYM, first)  # the catch-up's candles
    writer = KlineWriter(LakeFS(root), TT, base, threads=1)  # the live compactor's write path
    real = build_module._read_base

    def racing(*args: Any, **kwargs: Any) -> pl.DataFrame:
        monkeypatch.setattr(build_module, "_read_base", real)
        writer.write_partition(SYM, racing_rows)  # after the footers, before the rows
        return real(*args, **kwargs)

    try:
        monkeypatch.setattr(build_module, "_read_base", racing)
        build_offsets(root, TT, target, base=base)  # the first build: every bin
        for k in range(0, later.height, 4):  # then a compaction and a build per period, across the end
            writer.write_partition(SYM, later.slice(k, 4))
            build_offsets(root, TT, target, base=base, symbols=[SYM], missing_ok=True)
    finally:
        writer.close()
    got = scan_offsets(root, TT, target).collect().sort(KEY)
    assert got.select(KEY).is_duplicated().sum() == 0
    fresh = tmp_path / "fresh"
    write_klines(fresh, TT, base, SYM, scan_klines(root, TT, base).collect())
    build_offsets(fresh, TT, target, base=base)
    assert got.equals(scan_offsets(fresh, TT, target).collect().sort(KEY))
    # the base partitions are named by the first day of their month / year, and hold every candle
    keys = list_partitions(LakeFS(root), TT, base, SYM)
    assert [k.date.isoformat() for k in keys] == dates
    assert scan_klines(root, TT, base).collect().drop("symbol").equals(rows)


async def test_live_3m_feed_across_a_month_end_equals_the_truth_and_a_fresh_offsets_build(
    tmp_path: Path,
) -> None:
    """A 3m feed (month partitions) with live 15m offsets (month files) from an empty lake, its
    simulator 18 minutes before a month end at 600x: every candle equals the truth once, each
    partition named by its month's first day and holding only its month, and the offsets equal a
    fresh build (the first build races the compactions, as above)."""
    root = tmp_path / "lake"
    start = "2025-03-31T23:42:00Z"
    cfg = test_config(speed=600.0, start=start, n_symbols_by_market={"um": 12}, ws_intermediate=True)
    async with sim_server(cfg) as sim:
        sim.faults.update(
            {"ws_skip_close_symbols": sim.market.symbols(TT, trading_at=sim.clock.now_ms())[:1]}
        )
        settings = Settings(root=str(root), sim_url=sim.base_url)
        config = LiveConfig(
            trade_types=(TT,), intervals=("3m",), offsets=("15m",), periods=14, grace_s=5.0, history=40
        )
        summary = await asyncio.wait_for(LiveRunner(settings, config).run(), timeout=60)
        feed = summary["feeds"][0]
        assert feed["offsets"]["builds"] >= 5 and feed["offsets"]["errors"] == 0
        symbols = sorted(s for t, i, s in list_series(root) if (t, i) == (TT, "3m"))
        assert len(symbols) >= 5
        wm = assert_equals_truth(sim, root, TT, "3m", symbols)
    assert wm >= _ms("2025-04-01T00:15")  # across the month end
    lfs = LakeFS(root)
    for sym in symbols:
        keys = list_partitions(lfs, TT, "3m", sym)
        assert [k.date.isoformat() for k in keys] == ["2025-03-01", "2025-04-01"]
        for k in keys:
            times = read_partition(lfs, k)["candle_begin_time"].dt.epoch("ms")  # type: ignore[index]
            assert times.min() >= k.start_ms and times.max() < k.end_ms
    fresh = tmp_path / "fresh"
    shutil.copytree(root / "klines", fresh / "klines")
    build_offsets(fresh, TT, "15m", base="3m")
    live = scan_offsets(root, TT, "15m").collect().sort(KEY)
    assert live.select(KEY).is_duplicated().sum() == 0
    assert live.height > 0 and live.equals(scan_offsets(fresh, TT, "15m").collect().sort(KEY))


async def test_a_period_check_alerts_only_for_candles_it_tried_to_repair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A period check leaves out the candles that closed less than a second ago (their closing
    events may still come), then alerts for what is still missing after its repair. It recomputed
    "still missing" with a later clock, so candles too young for the repair a moment before counted
    as missing after it, though nothing had asked for them: an "incomplete after repair" ERROR for
    every symbol of the period, which the websocket delivered right after (33 false alerts of 103
    symbols each in 8 minutes of a 15m/30m soak at 1800x, where the 10 s grace is 6 ms; at 1x
    possible when a check starts within the margin: --grace below 1 s, or a clock uncertain by
    more than half the grace)."""
    runner = LiveRunner(Settings(root=str(tmp_path)), LiveConfig(trade_types=(TT,), intervals=("3m",)))
    feed = runner.feeds[0]
    period = _ms("2026-11-30T23:57")
    close = period + 180_000
    symbols = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    book = feed.book = PeriodBook(feed.iv, period - 180_000)
    book.catchup_done()
    book.open_period(period, symbols)
    calls = iter(range(1_000_000))
    # the first reading is within the close margin, every later one past it
    monkeypatch.setattr(feed, "now_ms", lambda: close + (500 if next(calls) == 0 else 1_500))
    clock = SimpleNamespace(uncertainty_ms=lambda mono=None: 0.0, real_seconds=lambda ms: ms / 1000)
    monkeypatch.setitem(feed._clients, "um", SimpleNamespace(clock=clock))  # (no REST: no server)
    repaired: list[dict[str, list[int]]] = []

    async def repair(feed_: Any, missing: dict[str, list[int]]) -> tuple[bool, set[tuple[str, int]]]:
        repaired.append(missing)
        return True, set()

    monkeypatch.setattr(runner, "_repair", repair)

    def closing_events() -> None:  # arriving during the check's first pause
        for s in symbols:
            book.mark_stored(s, [period])

    asyncio.get_running_loop().call_later(0.01, closing_events)
    try:
        await asyncio.wait_for(runner._check_locked(feed, period), timeout=5)
    finally:
        feed.writer.close()
    assert not book.pending(period)
    assert repaired == [] and feed.stats.incomplete_alerts == 0


def test_the_compaction_cache_holds_each_month_partition_in_one_piece(tmp_path: Path) -> None:
    """The compactor appends each compaction's candles to the partition it cached (``append_klines``)
    and caches the result. That was a concatenation of the cached frame and the new rows, one
    more Arrow chunk per column at each append: at 1x a 3m month partition is appended to ~14,880
    times (a 1h year partition ~8,760), and the chunks cost ~2 KB per append and symbol beyond
    the rows (a soak: RSS +40 MB for 6.5 MB of cached rows after 175 appends to 114 partitions;
    rechunked, the same frames took 55 MB less), growing until the month ended. The row cap does
    not see it. Each cached partition is one chunk now."""
    lfs = LakeFS(tmp_path)
    writer = KlineWriter(lfs, TT, "3m", threads=1)
    symbols = ["AAAUSDT", "BBBUSDT"]
    rows = random_candles(11, 180_000, 120, start_ms=_ms("2026-11-30T20:00"), hole_rate=0.0)
    try:
        for sym in symbols:
            writer.write_partition(sym, rows.head(20))
        for k in range(20, 120):  # one candle per compaction, as at 1x; across the month end
            for sym in symbols:
                writer.write_partition(sym, rows.slice(k, 1))
        assert writer.cache.hits > 50  # the cache did serve the appends
        cached = [df for _token, df in writer.cache._d.values()]
        assert len(cached) == len(symbols) and all(df.height == 40 for df in cached)  # December's
        assert all(df.n_chunks("all") == [1] * df.width for df in cached)
    finally:
        writer.close()
    for sym in symbols:
        keys = list_partitions(lfs, TT, "3m", sym)
        assert [k.date.isoformat() for k in keys] == ["2026-11-01", "2026-12-01"]
        got = scan_klines(lfs, TT, "3m", [sym]).collect().drop("symbol")
        assert got.equals(rows)
