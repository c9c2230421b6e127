"""More `lake live` runs on the simulator: alerts when repair fails (real local webhook), spot and
COIN-M feeds, a server clock jump, proactive connection rotation with SUBSCRIBE-paced shards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from lake.errors import UpstreamError
from lake.live.alerts import Alerter
from lake.live.runner import LiveConfig, LiveRunner
from lake.live.watermark import read_watermark
from lake.settings import Settings
from lake.sim.server import SimServer
from lake.sim.testing import sim_server, test_config
from tests.live.helpers import until

from .helpers import M, diff_truth, lake_frame, run_while, webhook

IV = "1m"


def _check_truth(
    sim: SimServer, root: Path, tt: str, symbols: list[str] | None = None, scope: list[str] | None = None
) -> int:
    wm = read_watermark(root, tt, IV, scope)
    assert wm is not None, f"no watermark for {tt}"
    lake = lake_frame(root, tt, IV)
    syms = symbols or sorted(lake["symbol"].unique())
    start = int(lake["t"].min())
    truth = sim.market.truth(tt, IV, syms, start, wm["watermark_ms"] + M)
    d = diff_truth(lake.filter(pl.col("t") <= wm["watermark_ms"]), truth)
    assert d["missing"] == d["extra"] == d["differ"] == 0, (tt, d)
    assert lake.select("symbol", "t").is_duplicated().sum() == 0
    return int(wm["watermark_ms"])


@pytest.fixture
async def hook() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    async with webhook() as posted:
        yield posted


async def test_alert_when_repair_fails_then_recovery(
    tmp_path: Path, hook: tuple[list[dict[str, Any]], str]
) -> None:
    posts, url = hook
    async with sim_server(test_config(speed=120.0, n_symbols_by_market={"um": 10})) as sim:
        live = sim.market.symbols("usdt_perp", trading_at=sim.clock.now_ms())
        sim.faults.update({"ws_skip_close_symbols": live[:1]})
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=("usdt_perp",), intervals=(IV,), periods=14, grace_s=5.0, history=10),
            alerter=Alerter(url, "json", min_interval_s=0.0),
            client_options={"retries": 0, "connect_retries": 0, "backoff_base": 0.01, "backoff_cap": 0.02},
        )

        async def scenario() -> None:
            feed = runner.feeds[0]
            await until(lambda: feed.catchup_done.is_set(), 30)
            sim.faults.update({"rest_error_rate": 1.0})  # REST down: the skipped symbol cannot be repaired
            await until(lambda: any("incomplete after repair" in p["title"] for p in posts), 30)
            sim.faults.update({"rest_error_rate": 0.0})

        summary = await run_while(runner, scenario(), 90)
        feed = summary["feeds"][0]
        assert feed["incomplete_alerts"] >= 1 and feed["repair_failures"] >= 1
        alerts = [p for p in posts if "incomplete after repair" in p["title"]]
        assert all(a["level"] == "error" for a in alerts)
        assert any(live[0] in a["text"] for a in alerts)  # the symbol without closing events
        assert summary["alerts"]["sent"] >= 1
        _check_truth(sim, tmp_path, "usdt_perp", live)  # repaired once REST came back


async def test_spot_and_coin_m_feeds(tmp_path: Path) -> None:
    async with sim_server(test_config(speed=120.0, n_symbols=8)) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(
                trade_types=("usdt_spot", "coin_perp"), intervals=(IV,), periods=5, grace_s=5.0, history=5
            ),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=90)
        for tt in ("usdt_spot", "coin_perp"):
            wm = _check_truth(sim, tmp_path, tt)
            assert wm >= int(lake_frame(tmp_path, tt)["t"].min()) + 8 * M
        assert all(f["appender"]["closed"] > 0 for f in summary["feeds"])


async def test_server_clock_jump(tmp_path: Path) -> None:
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 8})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=("usdt_perp",), intervals=(IV,), periods=9, grace_s=5.0, history=5),
        )

        async def scenario() -> None:
            feed = runner.feeds[0]
            await until(lambda: feed.stats.periods_checked >= 3, 30)
            sim.clock.advance(7 * M)  # the exchange's clock jumps seven minutes ahead

        await run_while(runner, scenario(), 90)
        wm = _check_truth(sim, tmp_path, "usdt_perp")
        assert wm >= sim.clock.now_ms() - 4 * M  # followed the jump


async def test_rotation_before_lifetime_and_paced_subscriptions(tmp_path: Path) -> None:
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 16})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(
                trade_types=("usdt_perp",),
                intervals=(IV,),
                periods=6,
                grace_s=5.0,
                history=5,
                ws_lifetime_s=1.5,
                ws_url_streams=2,
                ws_subscribe_batch=2,
            ),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=90)
        feed = summary["feeds"][0]
        assert feed["ws"]["rotations"] >= 2 and feed["ws"]["drops"] == 0
        assert feed["appender"]["control"] >= 3  # SUBSCRIBE replies: the URL carried only 2 streams
        assert sim.stats.snapshot()["ws"].get("closed_rate_limit", 0) == 0
        _check_truth(sim, tmp_path, "usdt_perp")


async def test_stop_during_failing_catchup_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_backfill(*args: Any, **kwargs: Any) -> Any:
        raise UpstreamError("REST down (test)")

    monkeypatch.setattr("lake.live.runner.backfill", broken_backfill)
    async with sim_server(test_config(speed=60.0, n_symbols_by_market={"um": 6})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path), sim_url=sim.base_url),
            LiveConfig(trade_types=("usdt_perp",), intervals=(IV,), duration_s=3.0, history=5),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=60)
    # websocket candles were stored, but the history before them never was: no watermark
    assert summary["feeds"][0]["appender"]["closed"] > 0
    assert read_watermark(tmp_path, "usdt_perp", IV) is None
    assert summary["alerts"]["by_key"].get("catchup:usdt_perp 1m", 0) >= 1


async def test_torn_read_in_catchup_is_retried_and_a_bug_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lake.live.runner as runner_mod

    real = runner_mod.backfill
    calls = {"n": 0}

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # what #4's backfill raises when its plan's lazy scan meets a replaced file
            raise ExceptionGroup(
                "market run", [pl.exceptions.ComputeError("parquet: File out of specification")]
            )
        return await real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "backfill", flaky)
    async with sim_server(test_config(speed=120.0, n_symbols_by_market={"um": 6})) as sim:
        runner = LiveRunner(
            Settings(root=str(tmp_path / "a"), sim_url=sim.base_url),
            LiveConfig(trade_types=("usdt_perp",), intervals=(IV,), periods=3, history=5),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=60)
        assert calls["n"] == 2 and not summary["alerts"]["by_key"]  # retried quietly
        _check_truth(sim, tmp_path / "a", "usdt_perp")

        async def buggy(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(runner_mod, "backfill", buggy)
        runner = LiveRunner(
            Settings(root=str(tmp_path / "b"), sim_url=sim.base_url),
            LiveConfig(trade_types=("usdt_perp",), intervals=(IV,), periods=3, history=5),
        )
        with pytest.raises(RuntimeError, match="a bug"):
            await asyncio.wait_for(runner.run(), timeout=60)


def test_catchup_retries_what_a_retry_can_fix_only() -> None:
    """Upstream trouble, incomplete ranges, bad answers and torn reads are retried by the catch-up;
    bad settings (a bucket gone, credentials refused) and bad input end the run instead of looping."""
    from lake.errors import ConfigError, DataError, IncompleteError, ValidationError
    from lake.live.runner import _transient

    assert (
        _transient(UpstreamError("503"))
        and _transient(IncompleteError("gaps"))
        and _transient(DataError("x"))
    )
    assert _transient(pl.exceptions.ComputeError("torn"))
    assert not _transient(ConfigError("lake root s3://gone/lake: bucket 'gone' does not exist"))
    assert not _transient(ValidationError("bad interval")) and not _transient(RuntimeError("bug"))
    assert _transient(ExceptionGroup("g", [UpstreamError("a"), IncompleteError("b")]))
    assert not _transient(ExceptionGroup("g", [UpstreamError("a"), ConfigError("b")]))


async def test_a_symbols_whitelist_is_shared_by_several_trade_types(tmp_path: Path) -> None:
    """`lake live -t usdt_spot -t btc_spot --symbols BTCUSDT,ETHBTC` follows each pair in the trade
    type that lists it (it used to fail: BTCUSDT is no btc_spot symbol); a symbol none of them lists
    is named before anything starts."""
    from lake.errors import NotFoundError

    async with sim_server(test_config(speed=60.0)) as sim:
        settings = Settings(root=str(tmp_path), sim_url=sim.base_url)
        types = ("usdt_spot", "btc_spot")
        with pytest.raises(NotFoundError, match="NOPEUSDT"):
            await LiveRunner(
                settings,
                LiveConfig(trade_types=types, intervals=(IV,), periods=1, symbols=["BTCUSDT", "NOPEUSDT"]),
            ).run()
        runner = LiveRunner(
            settings,
            LiveConfig(
                trade_types=types, intervals=(IV,), periods=2, history=3, symbols=["BTCUSDT", "ETHBTC"]
            ),
        )
        summary = await asyncio.wait_for(runner.run(), timeout=60)
        assert {f["feed"]: f["live"] for f in summary["feeds"]} == {"usdt_spot 1m": 1, "btc_spot 1m": 1}
        # (a --symbols run keeps a watermark of its own, under the list it was given)
        _check_truth(sim, tmp_path, "usdt_spot", ["BTCUSDT"], scope=["BTCUSDT", "ETHBTC"])
        _check_truth(sim, tmp_path, "btc_spot", ["ETHBTC"], scope=["BTCUSDT", "ETHBTC"])
