import datetime as dt
import json
import subprocess
import sys

import polars as pl

from lake.audit import audit
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from tests.store.helpers import frame, t0_ms

S = 300_000


def confirm(
    root: str, sym: str, first: int, end: int, tt: str = "usdt_perp", iv: str = "5m", step: int = S
) -> None:
    """Record slots ``[first, end)`` (indexes from ``t0_ms()``) as answered empty by the exchange."""
    add_empty_ranges(root, tt, iv, sym, [EmptyRange(t0_ms() + first * step, t0_ms() + end * step)])


def build(root: str, evidence: bool = True) -> None:
    # 100..110: maintenance for every symbol. AAA: delisted for ~2 days (600 candles).
    # BBB: 3 candles really missing. CCC: a 1-day hole with a 50% price jump; DDD: 5 candles confirmed empty.
    # With ``evidence`` the exchange answered every hole but BBB's empty (as a backfill records).
    plan = {
        "AAAUSDT": set(range(300, 900)),
        "BBBUSDT": {500, 501, 502},
        "CCCUSDT": set(range(1000, 1300)),
        "DDDUSDT": set(range(700, 705)),
    }
    for sym, extra in plan.items():
        kept = [i for i in range(1500) if not (100 <= i < 110) and i not in extra]
        df = frame([t0_ms() + i * S for i in kept], source="archive" if sym != "DDDUSDT" else "ws")
        df = df.with_columns(pl.col("volume") + 1.0)  # every candle traded (zero volume: tests below)
        if sym == "CCCUSDT":
            after = pl.col("candle_begin_time").dt.epoch("ms") >= t0_ms() + 1300 * S
            df = df.with_columns(
                [
                    pl.when(after).then(pl.col(c) * 3.0).otherwise(pl.col(c)).alias(c)
                    for c in ("open", "high", "low", "close")
                ]
            )
        write_klines(root, "usdt_perp", "5m", sym, df)
    confirm(root, "DDDUSDT", 700, 705)
    if evidence:
        for sym in plan:
            confirm(root, sym, 100, 110)
        confirm(root, "AAAUSDT", 300, 900)
        confirm(root, "CCCUSDT", 1000, 1300)


def kinds(report: dict) -> dict[str, list[tuple[str, int]]]:  # type: ignore[type-arg]
    return {s: [(h.kind, h.missing) for h in a.holes] for s, a in report.items()}


def test_audit_classifies_every_hole(tmp_path) -> None:
    build(str(tmp_path))
    report = {a.symbol: a for a in audit(tmp_path)}
    assert kinds(report) == {
        "AAAUSDT": [("maintenance", 10), ("segment_break", 600)],
        "BBBUSDT": [("maintenance", 10), ("missing", 3)],
        "CCCUSDT": [("maintenance", 10), ("segment_break", 300)],
        "DDDUSDT": [("maintenance", 10), ("confirmed_empty", 5)],
    }
    assert report["CCCUSDT"].holes[1].price_jump is not None and report["CCCUSDT"].holes[1].price_jump > 0.1
    assert [len(a.segments) for a in report.values()] == [2, 1, 2, 1]
    assert report["DDDUSDT"].sources == {"ws": 1485}
    assert report["AAAUSDT"].sources == {"archive": 890}


def test_holes_nobody_asked_about_are_missing_however_they_look(tmp_path) -> None:
    # The same lake, but no backfill ever asked the exchange about the shared window or the long gaps
    # (two backfills with a hole between them look exactly like this): all of it is missing, so
    # audit fails and --repair fetches it. The audit used to call them maintenance / segment breaks.
    build(str(tmp_path), evidence=False)
    report = {a.symbol: a for a in audit(tmp_path)}
    assert kinds(report) == {
        "AAAUSDT": [("missing", 10), ("missing", 600)],
        "BBBUSDT": [("missing", 10), ("missing", 3)],
        "CCCUSDT": [("missing", 10), ("missing", 300)],
        "DDDUSDT": [("missing", 10), ("confirmed_empty", 5)],
    }
    # Segments still follow the shape of the data (the split is real whatever the evidence).
    assert [len(a.segments) for a in report.values()] == [2, 1, 2, 1]


def test_archive_files_are_evidence_for_maintenance_and_breaks_only(tmp_path) -> None:
    # Ingested archive files spanning a hole: the exchange published those days without the rows.
    # That makes a shared window maintenance and a long gap a segment break, but a hole of one
    # symbol inside an archive day stays missing (archive days do lack rows REST has).
    from lake.ingest.archive.manifest import record_files
    from lake.ingest.archive.plan import FileRecord
    from lake.store.fs import LakeFS

    build(str(tmp_path), evidence=False)
    day = 288 * S
    for sym in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        recs = [
            (
                f"{sym}-5m-{i}.zip",
                FileRecord("0" * 64, "v", "c", 288, t0_ms() + i * day, t0_ms() + (i + 1) * day),
                {},
            )
            for i in range(6)
        ]
        record_files(LakeFS(str(tmp_path)), "um", "5m", sym, recs)
    report = {a.symbol: a for a in audit(tmp_path)}
    assert kinds(report) == {
        "AAAUSDT": [("maintenance", 10), ("segment_break", 600)],
        "BBBUSDT": [("maintenance", 10), ("missing", 3)],
        "CCCUSDT": [("maintenance", 10), ("segment_break", 300)],
        "DDDUSDT": [("missing", 10), ("confirmed_empty", 5)],
    }


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
        first = (
            con.sql("SELECT candles FROM segments WHERE symbol = 'AAAUSDT' ORDER BY segment")
            .pl()["candles"]
            .to_list()
        )
    finally:
        con.close()
    report = {a.symbol: a for a in audit(tmp_path)}
    assert dict(view.iter_rows()) == {s: len(a.segments) for s, a in report.items()}
    assert first == [290, 600]  # AAA: 300 candles minus the 10-candle maintenance window, then 600


M = 60_000
UTC = dt.UTC


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp() * 1000)


def traded(
    opens: list[int], prices: list[float] | None = None, volume: list[float] | None = None
) -> pl.DataFrame:
    df = frame(opens, source="archive").with_columns(pl.col("volume") + 1.0)
    if prices is not None:
        p = pl.Series(prices, dtype=pl.Float64)
        df = df.with_columns(open=p, high=p, low=p, close=p)
    if volume is not None:
        df = df.with_columns(volume=pl.Series(volume, dtype=pl.Float64))
    return df


def segments_view(root: str) -> list[tuple[object, ...]]:
    from lake.query.connect import connect

    con = connect(root)
    try:
        return con.sql(
            "SELECT symbol, segment, first_open, last_open, candles FROM segments ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def test_off_grid_2018_candle_after_an_outage(tmp_path) -> None:
    # 2018-02-08: trading stops after 03:00 and resumes at 2018-02-09 09:28:14.789, a candle off the
    # 1m grid (open 1518168494789, stored as published, filling the 09:28 slot). The hole is 1828
    # slots (1.27 days) for both symbols; BTC reopens 50% higher (a segment break by the 1-day +
    # 10% rule), ETH at the same price (exchange-wide maintenance). The audit used to look the
    # neighbours up by exact open time, miss the off-grid one, and report no jump for BTC.
    before = [ms(2018, 2, 8) + i * M for i in range(180)]
    off = 1518168494789
    after = [off] + [ms(2018, 2, 9, 9, 29) + i * M for i in range(60)]
    write_klines(tmp_path, "usdt_spot", "1m", "BTCUSDT", traded(before + after, [100.0] * 180 + [150.0] * 61))
    write_klines(tmp_path, "usdt_spot", "1m", "ETHUSDT", traded(before + after, [10.0] * 241))
    for sym in ("BTCUSDT", "ETHUSDT"):  # as a backfill records the outage
        add_empty_ranges(
            tmp_path, "usdt_spot", "1m", sym, [EmptyRange(ms(2018, 2, 8, 3), ms(2018, 2, 9, 9, 28))]
        )
    report = {a.symbol: a for a in audit(tmp_path)}
    hole = (dt.datetime(2018, 2, 8, 3, tzinfo=UTC), dt.datetime(2018, 2, 9, 9, 28, tzinfo=UTC), 1828)
    assert [(h.start, h.end, h.missing, h.kind, h.price_jump) for h in report["BTCUSDT"].holes] == [
        (*hole, "segment_break", 0.5)
    ]
    assert [(h.start, h.end, h.missing, h.kind, h.price_jump) for h in report["ETHUSDT"].holes] == [
        (*hole, "maintenance", 0.0)
    ]
    assert report["BTCUSDT"].segments == [
        (dt.datetime(2018, 2, 8, tzinfo=UTC), hole[0]),
        (hole[1], dt.datetime(2018, 2, 9, 10, 29, tzinfo=UTC)),
    ]
    assert report["ETHUSDT"].segments == [
        (dt.datetime(2018, 2, 8, tzinfo=UTC), dt.datetime(2018, 2, 9, 10, 29, tzinfo=UTC))
    ]
    assert segments_view(str(tmp_path)) == [
        ("BTCUSDT", 0, dt.datetime(2018, 2, 8, tzinfo=UTC), dt.datetime(2018, 2, 8, 2, 59, tzinfo=UTC), 180),
        (
            "BTCUSDT",
            1,
            dt.datetime(2018, 2, 9, 9, 28, 14, 789000, tzinfo=UTC),
            dt.datetime(2018, 2, 9, 10, 28, tzinfo=UTC),
            61,
        ),
        ("ETHUSDT", 0, dt.datetime(2018, 2, 8, tzinfo=UTC), dt.datetime(2018, 2, 9, 10, 28, tzinfo=UTC), 241),
    ]


def test_off_grid_candle_does_not_shift_the_break_threshold(tmp_path) -> None:
    # A 1-day rule boundary measured between slots: the hole before the off-grid 09:28:14.789 candle
    # is exactly 1 day of slots (2018-02-08 09:28 -> 2018-02-09 09:28) with a 50% jump: a break in
    # both the audit and the view (raw open times made the view see 1 day + 14.789 s).
    before = [ms(2018, 2, 8, 8, 28) + i * M for i in range(60)]
    after = [1518168494789] + [ms(2018, 2, 9, 9, 29) + i * M for i in range(9)]
    write_klines(tmp_path, "usdt_spot", "1m", "BTCUSDT", traded(before + after, [100.0] * 60 + [150.0] * 10))
    add_empty_ranges(
        tmp_path, "usdt_spot", "1m", "BTCUSDT", [EmptyRange(ms(2018, 2, 8, 9, 28), ms(2018, 2, 9, 9, 28))]
    )
    (a,) = audit(tmp_path)
    assert [(h.missing, h.kind) for h in a.holes] == [(1440, "segment_break")]
    assert [(s[1], s[4]) for s in segments_view(str(tmp_path))] == [(0, 60), (1, 10)]


def test_monthly_series_is_not_split_by_31_day_months(tmp_path) -> None:
    # Six consecutive 1M candles whose open differs from the previous close by 50%: no hole, one
    # segment. The view measured a month as 30 days, so every 31-day month looked like a 1-day hole
    # and split the series at each jump. A missing month is a break, with its price jump reported.
    opens = [ms(2020, m, 1) for m in (1, 2, 3, 4, 5, 6)] + [ms(2020, 8, 1)]
    df = traded(opens).with_columns(
        open=pl.Series([100.0, 150, 100, 150, 100, 150, 200]), close=pl.Series([100.0] * 7)
    )
    write_klines(tmp_path, "usdt_spot", "1M", "ETHUSDT", df)
    add_empty_ranges(tmp_path, "usdt_spot", "1M", "ETHUSDT", [EmptyRange(ms(2020, 7, 1), ms(2020, 8, 1))])
    (a,) = audit(tmp_path)
    assert [(h.start, h.end, h.missing, h.kind, h.price_jump) for h in a.holes] == [
        (dt.datetime(2020, 7, 1, tzinfo=UTC), dt.datetime(2020, 8, 1, tzinfo=UTC), 1, "segment_break", 1.0)
    ]
    assert a.segments == [
        (dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 7, 1, tzinfo=UTC)),
        (dt.datetime(2020, 8, 1, tzinfo=UTC), dt.datetime(2020, 9, 1, tzinfo=UTC)),
    ]
    assert [(s[1], s[4]) for s in segments_view(str(tmp_path))] == [(0, 6), (1, 1)]


def test_zero_volume_zombie_candles_do_not_extend_or_join_segments(tmp_path) -> None:
    # A delisted perp keeps producing zero-volume "zombie" candles (OHLC frozen at the last trade),
    # here for 3 days, then it relists at the same price: two segments (lostleaf drops volume == 0
    # rows before looking for gaps). A second symbol ends with a 3-day zombie tail: its segment ends
    # at the last traded candle. Neither has a hole in the stored rows.
    H = 3_600_000
    t = [ms(2024, 1, 1) + i * H for i in range(24 * 5)]
    vol = [5.0] * 24 + [0.0] * 72 + [5.0] * 24
    write_klines(tmp_path, "usdt_perp", "1h", "FTTBUSD", traded(t, [2.0] * 120, vol))
    write_klines(tmp_path, "usdt_perp", "1h", "ZOMBUSDT", traded(t, [3.0] * 120, [5.0] * 48 + [0.0] * 72))
    report = {a.symbol: a for a in audit(tmp_path)}
    d = lambda day, h=0: dt.datetime(2024, 1, day, h, tzinfo=UTC)  # noqa: E731
    assert report["FTTBUSD"].holes == []
    assert report["FTTBUSD"].segments == [(d(1), d(2)), (d(5), d(6))]
    assert report["ZOMBUSDT"].segments == [(d(1), d(3))]
    assert (report["FTTBUSD"].zero_volume, report["ZOMBUSDT"].zero_volume) == (72, 72)
    assert report["ZOMBUSDT"].to_dict()["zero_volume"] == 72
    assert segments_view(str(tmp_path)) == [
        ("FTTBUSD", 0, d(1), d(1, 23), 24),
        ("FTTBUSD", 1, d(5), d(5, 23), 24),
        ("ZOMBUSDT", 0, d(1), d(2, 23), 48),
    ]


def test_hole_inside_a_zero_volume_gap_is_a_segment_break(tmp_path) -> None:
    # Zombie candles for 1 day, then 1.5 days not stored, then trading again at the same price: the
    # gap between traded candles is 2.5 days, so the stored hole lies in a segment break (it is not
    # "missing" data to refetch forever).
    H = 3_600_000
    base = ms(2024, 1, 1)
    t = [base + i * H for i in range(48)] + [base + i * H for i in range(84, 108)]
    vol = [5.0] * 24 + [0.0] * 24 + [5.0] * 24
    write_klines(tmp_path, "usdt_perp", "1h", "FTTBUSD", traded(t, [2.0] * 72, vol))
    add_empty_ranges(tmp_path, "usdt_perp", "1h", "FTTBUSD", [EmptyRange(base + 48 * H, base + 84 * H)])
    (a,) = audit(tmp_path)
    assert [(h.missing, h.kind, h.price_jump) for h in a.holes] == [(36, "segment_break", 0.0)]
    assert len(a.segments) == 2 and not a.unexpected


def test_series_read_in_batches_give_the_same_audit_and_coverage(tmp_path, monkeypatch) -> None:
    import lake.store.klines as klines
    from lake.store.coverage import coverage

    build(str(tmp_path))
    whole = (audit(tmp_path), coverage(tmp_path))
    batches: list[list[str]] = []
    real = klines.iter_series_batches

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        for syms, df in real(*args, **kwargs):
            batches.append(syms)
            yield syms, df

    monkeypatch.setattr(klines, "BATCH_ROWS", 1)  # every series is a batch of its own
    monkeypatch.setattr("lake.store.coverage.iter_series_batches", spy)
    monkeypatch.setattr("lake.audit.iter_series_batches", spy)
    batched = (audit(tmp_path), coverage(tmp_path))
    assert batched == whole
    assert batches[:4] == [["AAAUSDT"], ["BBBUSDT"], ["CCCUSDT"], ["DDDUSDT"]]  # coverage, one at a time
    assert len(batches) == 12  # audit: coverage of the market, then its own pass; coverage again


def test_a_series_left_behind_is_counted_not_failed(tmp_path) -> None:
    """A gap after a series' last candle is no hole (nothing follows it), but ``behind`` counts the
    candles to the latest one of its trade type and interval: a backfill left EEE 7 candles behind,
    FFF was never asked for its last 40. The exit code is still about holes only."""
    for sym, n in (("DDDUSDT", 100), ("EEEUSDT", 93), ("FFFUSDT", 60)):
        write_klines(tmp_path, "usdt_perp", "5m", sym, frame([t0_ms() + i * S for i in range(n)]))
    write_klines(tmp_path, "usdt_perp", "1h", "DDDUSDT", frame([t0_ms() + i * 12 * S for i in range(3)]))
    report = {(a.interval, a.symbol): a.behind for a in audit(tmp_path)}
    assert report == {("5m", "DDDUSDT"): 0, ("5m", "EEEUSDT"): 7, ("5m", "FFFUSDT"): 40, ("1h", "DDDUSDT"): 0}
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", "audit", "--root", str(tmp_path), "--interval", "5m"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "2 series end before the latest candle" in res.stdout
    doc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lake.cli",
            "audit",
            "--root",
            str(tmp_path),
            "--symbols",
            "EEEUSDT",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert [s["behind"] for s in json.loads(doc.stdout)["series"]] == [7]
