"""`lake demo` end to end (small), then the notebooks executed against the lake it built."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

from lake.demo import DemoOptions, DemoResult, run_demo
from lake.store.coverage import coverage

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    tmp = tmp_path_factory.mktemp("demo")
    opts = DemoOptions(
        root=str(tmp / "lake"), plot=str(tmp / "chart.png"), symbols=14, days=3, live_periods=2
    )
    return run_demo(opts)


def test_demo_builds_a_complete_lake(demo_lake: DemoResult) -> None:
    root = demo_lake.root
    covs = coverage(root, interval="5m")
    assert {c.trade_type for c in covs} == {"usdt_perp", "usdt_spot"}
    assert all(c.missing == 0 for c in covs), [c for c in covs if c.missing]
    sources = pl.scan_parquet(f"{root}/klines/**/*.parquet").select("source").unique().collect()["source"]
    assert {"archive", "rest"} <= set(sources.to_list())
    png = demo_lake.plot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    if demo_lake.compare is not None:
        worst = demo_lake.compare.group_by("column").agg(pl.col("max_rel_error").max())
        errors = dict(worst.iter_rows())
        for col in ("open", "high", "low", "close", "trade_num"):
            assert errors[col] == 0.0, (col, errors[col])
        for col in ("volume", "quote_volume", "taker_buy_base_asset_volume", "taker_buy_quote_asset_volume"):
            assert errors[col] <= 1e-12, (col, errors[col])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(demo_lake: DemoResult, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKE_ROOT", demo_lake.root)
    book = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), (
        "store notebooks without outputs"
    )
    client = NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute(env={**os.environ, "LAKE_ROOT": demo_lake.root})
