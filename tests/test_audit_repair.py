"""``lake audit --repair`` against the simulator: cut holes are refetched, the lake equals the truth."""

import subprocess
import sys

import polars as pl

from lake.sim.testing import start_sim
from lake.store.klines import scan_klines, write_klines

START, END = "2025-03-10", "2025-03-12"


def test_audit_repair_refetches_missing_candles(tmp_path) -> None:
    with start_sim() as sim:
        market = sim.market
        syms = [s for s in market.symbols("usdt_perp")[:3]]
        truth = market.truth("usdt_perp", "5m", syms, START, END)
        # Store everything but a cut of 7 candles in one symbol.
        cut = truth.filter(pl.col("symbol") == syms[0]).slice(100, 7)["candle_begin_time"]
        for (sym,), part in truth.group_by("symbol"):
            kept = part.filter(
                ~pl.col("candle_begin_time").is_in(cut.implode()) | (pl.col("symbol") != syms[0])
            )
            write_klines(
                tmp_path,
                "usdt_perp",
                "5m",
                str(sym),
                kept.drop("symbol").with_columns(source=pl.lit("archive")),
            )
        base = [sys.executable, "-m", "lake.cli", "audit", "--root", str(tmp_path), "--type", "usdt_perp"]
        before = subprocess.run(base, capture_output=True, text=True, timeout=120)
        assert before.returncode == 1, before.stderr
        fixed = subprocess.run(
            [*base, "--repair", "--sim-url", sim.base_url], capture_output=True, text=True, timeout=300
        )
        assert fixed.returncode == 0, fixed.stderr + fixed.stdout
        got = scan_klines(tmp_path, "usdt_perp", "5m").collect().sort("symbol", "candle_begin_time")
        assert got.drop("source").equals(
            truth.sort("symbol", "candle_begin_time").select(got.drop("source").columns)
        )
        repaired = got.filter(
            pl.col("candle_begin_time").is_in(cut.implode()) & (pl.col("symbol") == syms[0])
        )
        assert repaired["source"].to_list() == ["rest"] * 7


def test_audit_repair_does_not_refetch_an_exchange_hole_forever(tmp_path) -> None:
    # One symbol, so a maintenance window cannot be told exchange-wide: the audit calls it missing.
    # The repair asks the exchange, which has no candles there; the hole is recorded confirmed empty,
    # the audit passes, and a second --repair finds nothing to refetch.
    import json

    window = ("um", "2025-03-10T06:00:00", "2025-03-10T07:00:00")
    with start_sim(maintenance=(window,)) as sim:
        sym = sim.market.symbols("usdt_perp")[0]
        truth = sim.market.truth("usdt_perp", "5m", [sym], START, "2025-03-11")
        write_klines(
            tmp_path, "usdt_perp", "5m", sym, truth.drop("symbol").with_columns(source=pl.lit("archive"))
        )
        base = [sys.executable, "-m", "lake.cli", "audit", "--root", str(tmp_path), "--json"]
        kinds = []
        for extra in ([], ["--repair", "--sim-url", sim.base_url], ["--repair", "--sim-url", sim.base_url]):
            res = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=300)
            holes = json.loads(res.stdout)["series"][0]["holes"]
            kinds.append(
                (res.returncode, [(h["kind"], h["missing"]) for h in holes], "backfill" in res.stderr)
            )
    assert kinds == [
        (1, [("missing", 12)], False),
        (0, [("confirmed_empty", 12)], True),
        (0, [("confirmed_empty", 12)], False),
    ]


def _audit_kinds(root, sim_url: str | None = None) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    import json

    cmd = [sys.executable, "-m", "lake.cli", "audit", "--root", str(root), "--json"]
    if sim_url:
        cmd += ["--repair", "--sim-url", sim_url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    doc = json.loads(res.stdout)
    return res.returncode, {
        s["symbol"]: [(h["kind"], h["missing"]) for h in s["holes"]] for s in doc["series"]
    }


def _backfill(
    root, sim_url: str, source: str, syms: str, start: str, end: str
) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "lake.cli", "backfill", "--root", str(root), "--sim-url", sim_url]
    cmd += ["--type", "usdt_perp", "--source", source, "--symbols", syms, "--start", start, "--end", end]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_gap_between_two_backfills_is_missing_not_maintenance(tmp_path) -> None:
    # Two REST backfills of every symbol with a day between them that nobody asked for: the hole is
    # shared by all symbols and a day long, so by its shape alone the audit called it maintenance
    # and exited 0 (and --repair skipped it). Now it is missing until the exchange is asked.
    window = ("um", "2025-03-10T06:00:00", "2025-03-10T07:00:00")
    with start_sim(maintenance=(window,)) as sim:
        syms = ",".join(sim.market.symbols("usdt_perp")[:3])
        for a, b in (("2025-03-10", "2025-03-11"), ("2025-03-12", "2025-03-13")):
            res = _backfill(tmp_path, sim.base_url, "rest", syms, a, b)
            assert res.returncode == 0, res.stderr
        code, kinds = _audit_kinds(tmp_path)
        assert code == 1
        assert set(map(tuple, kinds.values())) == {(("maintenance", 12), ("missing", 288))}
        code, kinds = _audit_kinds(tmp_path, sim.base_url)
        assert code == 0
        assert set(map(tuple, kinds.values())) == {(("maintenance", 12),)}
        truth = sim.market.truth("usdt_perp", "5m", syms.split(","), "2025-03-10", "2025-03-13")
    got = scan_klines(tmp_path, "usdt_perp", "5m").collect().sort("symbol", "candle_begin_time")
    assert got.drop("source").equals(
        truth.sort("symbol", "candle_begin_time").select(got.drop("source").columns)
    )


def test_archive_only_ingest_calls_maintenance_maintenance(tmp_path) -> None:
    # An archive-only run never asks REST: the window all symbols' archive days lack is maintenance
    # on the archive's evidence, and the audit passes.
    window = ("um", "2025-03-10T06:00:00", "2025-03-10T07:00:00")
    with start_sim(maintenance=(window,)) as sim:
        syms = ",".join(sim.market.symbols("usdt_perp")[:3])
        res = _backfill(tmp_path, sim.base_url, "archive", syms, "2025-03-09", "2025-03-12")
        assert res.returncode == 0, res.stderr
    code, kinds = _audit_kinds(tmp_path)
    assert (code, set(map(tuple, kinds.values()))) == (0, {(("maintenance", 12),)})
