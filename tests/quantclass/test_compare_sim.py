"""The seed's comparison end to end against the simulator's Quantclass-compatible API.

The lake holds the simulator's 5m truth, ``build_offsets`` makes the 1h offsets, and the comparison
with the simulated Quantclass files (the seed rule applied by a plain group-by inside the simulator)
must be the seed's result: 0 for OHLC and trade_num, ≤ 1e-12 for the volume columns.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from lake.commands import compare as compare_command
from lake.quantclass.compare import COLUMNS, compare_quantclass
from lake.settings import Settings
from lake.sim import SimHandle
from lake.sim.quantclass import add_quantclass_routes
from lake.sim.testing import start_sim
from lake.store.klines import write_klines
from lake.transform.build import build_offsets

TRADE_TYPES = ("usdt_perp", "usdt_spot")
EXACT = {"open", "close", "high", "low", "trade_num"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    with start_sim(extra_routes=add_quantclass_routes) as handle:
        yield handle


@pytest.fixture(scope="module")
def root(sim: SimHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lake")
    now = sim.market.clock.now_ms()
    for tt in TRADE_TYPES:
        truth = sim.market.truth(tt, "5m", start=now - 6 * 3_600_000)
        for (symbol,), part in truth.group_by("symbol"):
            write_klines(root, tt, "5m", str(symbol), part.with_columns(pl.lit("rest").alias("source")))
        build_offsets(root, tt, "1h")
    return root


def _assert_seed_result(errors: dict[str, float]) -> None:
    assert set(errors) == set(COLUMNS)
    for column, err in errors.items():
        assert err is not None
        assert err == 0.0 if column in EXACT else err <= 1e-12, (column, err)


@pytest.mark.parametrize("trade_type", TRADE_TYPES)
def test_offsets_match_the_reference(sim: SimHandle, root: Path, trade_type: str) -> None:
    settings = Settings(root=str(root), sim_url=sim.base_url)
    result = asyncio.run(compare_quantclass(settings, trade_type, "1h"))
    _assert_seed_result(dict(result.summary.iter_rows()))
    assert result.offsets == tuple(f"{5 * i}m" for i in range(12))
    assert result.symbols >= 3 and result.missing == 0 and result.absent_symbols == []
    assert result.matched == result.reference_rows == 2 * 12 * result.symbols  # two hours per offset
    assert result.detail.height == result.symbols * 12 * len(COLUMNS)


def test_saved_files_compare_again_offline_and_missing_bins_are_counted(
    sim: SimHandle, root: Path, tmp_path: Path
) -> None:
    settings = Settings(root=str(root), sim_url=sim.base_url)
    saved = tmp_path / "reference"
    online = asyncio.run(compare_quantclass(settings, "usdt_perp", save_dir=saved))
    assert len(list(saved.glob("*-swap_1h*.7z"))) == 12
    offline = asyncio.run(compare_quantclass(Settings(root=str(root)), "usdt_perp", reference_dir=saved))
    assert offline.summary.equals(online.summary) and offline.matched == online.matched

    lake = tmp_path / "lake"
    shutil.copytree(root, lake)
    symbol = online.detail["symbol"][0]
    gone = lake / f"offsets/trade_type=usdt_perp/interval=1h/offset=15m/symbol={symbol}"
    shutil.rmtree(gone)
    other = sorted(set(online.detail["symbol"]) - {symbol})[0]
    shutil.rmtree(lake / f"offsets/trade_type=usdt_perp/interval=1h/offset=0m/symbol={other}")
    for p in (lake / "offsets/trade_type=usdt_perp/interval=1h").glob(f"offset=*/symbol={other}"):
        shutil.rmtree(p)
    partial = asyncio.run(compare_quantclass(Settings(root=str(lake)), "usdt_perp", reference_dir=saved))
    assert partial.missing == 2  # the two 15m candles of `symbol`
    assert partial.absent_symbols == [other]
    _assert_seed_result(dict(partial.summary.iter_rows()))


def test_cli(sim: SimHandle, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_SIM_URL", sim.base_url)
    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    out = tmp_path / "detail.csv"
    r = CliRunner().invoke(
        app, ["compare", "--type", "usdt_spot", "--interval", "1h", "--root", str(root), "--output", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert "taker_buy_quote_asset_volume" in r.output and "0 missing" in r.output
    assert set(pl.read_csv(out)["column"]) == set(COLUMNS)
    r = CliRunner().invoke(app, ["compare", "--type", "usdt_perp", "--interval", "4h", "--root", str(root)])
    assert r.exception is not None and "1h" in str(r.exception)


def test_cli_without_offsets_fails_with_a_hint(
    sim: SimHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Base candles but no offsets yet: nothing can be compared, which is exit 5 with the command to
    run, not an empty table and exit 0."""
    monkeypatch.setenv("LAKE_SIM_URL", sim.base_url)
    root = tmp_path / "lake"
    now = sim.market.clock.now_ms()
    truth = sim.market.truth("usdt_perp", "5m", start=now - 3 * 3_600_000)
    for (symbol,), part in truth.group_by("symbol"):
        write_klines(root, "usdt_perp", "5m", str(symbol), part.with_columns(pl.lit("rest").alias("source")))
    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    r = CliRunner().invoke(app, ["compare", "--type", "usdt_perp", "--interval", "1h", "--root", str(root)])
    assert r.exit_code == 5 or getattr(r.exception, "exit_code", None) == 5, r.output
    assert "lake offsets --type usdt_perp --interval 1h" in (r.output + str(r.exception))


def test_cli_with_no_candle_in_common_fails(
    sim: SimHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offsets of hours the reference does not cover (the README tour after `lake live` stopped):
    an all "-" table with exit 0 read as success; now exit 5 saying why."""
    monkeypatch.setenv("LAKE_SIM_URL", sim.base_url)
    root = tmp_path / "lake"
    now = sim.market.clock.now_ms()
    truth = sim.market.truth("usdt_perp", "5m", start=now - 30 * 3_600_000, end=now - 20 * 3_600_000)
    for (symbol,), part in truth.group_by("symbol"):
        write_klines(root, "usdt_perp", "5m", str(symbol), part.with_columns(pl.lit("rest").alias("source")))
    build_offsets(root, "usdt_perp", "1h")
    app = typer.Typer()
    compare_command.register(app)
    app.command("noop", hidden=True)(lambda: None)
    r = CliRunner().invoke(app, ["compare", "--type", "usdt_perp", "--interval", "1h", "--root", str(root)])
    assert getattr(r.exception, "exit_code", None) == 5, r.output
    assert "none of the" in str(r.exception) and "reference candles is in the lake" in str(r.exception)
