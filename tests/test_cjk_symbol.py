"""A symbol whose name is not ASCII (USDⓈ-M 币安人生USDT, listed by Binance in October 2025) goes
through every path like any other: exchangeInfo, the archive listing and files, REST, websockets,
the partitions and the DuckDB views. Before, one such listing made a whole-market backfill fail and
stopped `lake live`."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import polars as pl

from lake.ingest.archive.hybrid import archive_backfill
from lake.live.runner import LiveConfig, LiveRunner
from lake.query.connect import connect
from lake.schema import KLINE_COLUMNS
from lake.settings import Settings
from lake.sim.testing import sim_server, test_config
from lake.sim.universe import CJK_BASE
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines

from .live.helpers import assert_equals_truth, lake_frame

TT = "usdt_perp"
CJK = f"{CJK_BASE}USDT"


async def test_whole_market_backfill_includes_the_cjk_symbol(tmp_path: Path) -> None:
    cfg = test_config(cjk_symbol=True, n_symbols_by_market={"um": 10}, history_days=60)
    async with sim_server(cfg) as sim:
        s = Settings(root=str(tmp_path), sim_url=sim.base_url)
        trading = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        assert CJK in trading
        start = dt.datetime(2025, 2, 20, tzinfo=dt.UTC)
        res = await archive_backfill(LakeFS(tmp_path), [TT], "1h", settings=s, start=start, source="auto")
        (arch,) = res.archive
        assert CJK in arch.symbols and arch.files_downloaded > 0 and res.rest is not None
        got = scan_klines(tmp_path, TT, "1h").collect().sort("symbol", "candle_begin_time")
        want = sim.market.truth(TT, "1h", trading, got["candle_begin_time"].min()).sort(
            "symbol", "candle_begin_time"
        )
        cols = ["symbol", *[c for c in KLINE_COLUMNS if c != "source"]]
        assert got.height == want.height and got.select(cols).equals(want.select(cols))
        mine = got.filter(pl.col("symbol") == CJK)
        assert mine.height > 0 and set(mine["source"]) == {"archive", "rest"}
        assert (tmp_path / "klines" / f"trade_type={TT}" / "interval=1h" / f"symbol={CJK}").is_dir()

        con = connect(tmp_path)
        try:
            (n,) = con.execute("SELECT count(*) FROM klines WHERE symbol = ?", [CJK]).fetchall()[0]
            latest = con.execute("SELECT symbol FROM latest WHERE symbol = ?", [CJK]).fetchall()
        finally:
            con.close()
        assert n == mine.height and latest == [(CJK,)]


async def test_live_follows_the_cjk_symbol_over_websockets(tmp_path: Path) -> None:
    cfg = test_config(cjk_symbol=True, n_symbols_by_market={"um": 6}, speed=120.0)
    async with sim_server(cfg) as sim:
        live = sim.market.symbols(TT, trading_at=sim.clock.now_ms())
        assert CJK in live
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=(TT,), intervals=("1m",), periods=4, grace_s=5.0, history=3),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=120)
        assert_equals_truth(sim, tmp_path, TT, "1m", live)
        mine = lake_frame(tmp_path, TT, "1m").filter(pl.col("symbol") == CJK)
        # its closed candles of the live periods came from its websocket stream, not only REST
        assert "ws" in set(mine["source"]), mine["source"].value_counts()
        assert summary["feeds"][0]["appender"]["bad"] == {}  # no message of it was refused
