import json
import subprocess
import sys

import polars as pl

from lake.audit import audit
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from tests.store.helpers import frame, t0_ms

S = 300_000


def build(root: str) -> None:
    # 100..110: maintenance for every symbol. AAA: delisted for ~2 days (600 candles).
    # BBB: 3 candles really missing. CCC: a 1-day hole with a 50% price jump; DDD: 5 candles confirmed empty.
    plan = {
        "AAAUSDT": set(range(300, 900)),
        "BBBUSDT": {500, 501, 502},
        "CCCUSDT": set(range(1000, 1300)),
        "DDDUSDT": set(range(700, 705)),
    }
    for sym, extra in plan.items():
        kept = [i for i in range(1500) if not (100 <= i < 110) and i not in extra]
        df = frame([t0_ms() + i * S for i in kept], source="archive" if sym != "DDDUSDT" else "ws")
        if sym == "CCCUSDT":
            after = pl.col("candle_begin_time").dt.epoch("ms") >= t0_ms() + 1300 * S
            df = df.with_columns(
                [
                    pl.when(after).then(pl.col(c) * 3.0).otherwise(pl.col(c)).alias(c)
                    for c in ("open", "high", "low", "close")
                ]
            )
        write_klines(root, "usdt_perp", "5m", sym, df)
    add_empty_ranges(root, "usdt_perp", "5m", "DDDUSDT", [EmptyRange(t0_ms() + 700 * S, t0_ms() + 705 * S)])


def test_audit_classifies_every_hole(tmp_path) -> None:
    build(str(tmp_path))
    report = {a.symbol: a for a in audit(tmp_path)}
    kinds = {s: [(h.kind, h.missing) for h in a.holes] for s, a in report.items()}
    assert kinds == {
        "AAAUSDT": [("maintenance", 10), ("segment_break", 600)],
        "BBBUSDT": [("maintenance", 10), ("missing", 3)],
        "CCCUSDT": [("maintenance", 10), ("segment_break", 300)],
        "DDDUSDT": [("maintenance", 10), ("confirmed_empty", 5)],
    }
    assert report["CCCUSDT"].holes[1].price_jump is not None and report["CCCUSDT"].holes[1].price_jump > 0.1
    assert [len(a.segments) for a in report.values()] == [2, 1, 2, 1]
    assert report["DDDUSDT"].sources == {"ws": 1485}
    assert report["AAAUSDT"].sources == {"archive": 890}


def test_audit_cli_exit_code_and_json(tmp_path) -> None:
    build(str(tmp_path))
    cmd = [sys.executable, "-m", "lake.cli", "audit", "--root", str(tmp_path), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    assert doc["unexpected_holes"] == 1
    ok = subprocess.run([*cmd, "--symbols", "AAAUSDT,CCCUSDT"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert {s["symbol"]: len(s["segments"]) for s in json.loads(ok.stdout)["series"]} == {
        "AAAUSDT": 2,
        "CCCUSDT": 2,
    }


def test_segments_view_agrees_with_the_audit(tmp_path) -> None:
    from lake.query.connect import connect

    build(str(tmp_path))
    con = connect(tmp_path)
    try:
        view = con.sql("SELECT symbol, count(*) AS n FROM segments GROUP BY symbol ORDER BY symbol").pl()
        first = con.sql(
            "SELECT candles FROM segments WHERE symbol = 'AAAUSDT' ORDER BY segment"
        ).pl()["candles"].to_list()
    finally:
        con.close()
    report = {a.symbol: a for a in audit(tmp_path)}
    assert dict(view.iter_rows()) == {s: len(a.segments) for s, a in report.items()}
    assert first == [290, 600]  # AAA: 300 candles minus the 10-candle maintenance window, then 600
