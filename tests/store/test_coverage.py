import datetime as dt
import uuid

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.store.coverage import coverage
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from tests.store.helpers import frame, t0_ms

STEP = 300_000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 600), st.integers(1, 40)), max_size=6))
def test_coverage_finds_exactly_the_cut_holes(lake_root: str, cuts: list[tuple[int, int]]) -> None:
    root = f"{lake_root}/{uuid.uuid4().hex[:8]}"
    n = 700
    missing: set[int] = set()
    for start, length in cuts:
        missing |= set(range(start, min(start + length, n - 1)))
    kept = [i for i in range(n) if i not in missing]
    write_klines(root, "usdt_perp", "5m", "BTCUSDT", frame([t0_ms() + i * STEP for i in kept]))
    (cov,) = coverage(root)
    assert cov.rows == len(kept) and cov.expected == n and cov.missing == len(missing)
    expected_holes = []
    run: list[int] = []
    for i in sorted(missing):
        if run and i != run[-1] + 1:
            expected_holes.append(run)
            run = []
        run.append(i)
    if run:
        expected_holes.append(run)
    got = [(h.start, h.end, h.missing) for h in cov.holes]
    want = [
        (
            dt.datetime.fromtimestamp((t0_ms() + r[0] * STEP) / 1000, dt.UTC),
            dt.datetime.fromtimestamp((t0_ms() + (r[-1] + 1) * STEP) / 1000, dt.UTC),
            len(r),
        )
        for r in expected_holes
    ]
    assert got == want


def test_confirmed_empty_holes_are_exchange_holes(lake_root: str) -> None:
    tmp_path = lake_root
    kept = [i for i in range(100) if not (10 <= i < 20 or 50 <= i < 55)]
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", frame([t0_ms() + i * STEP for i in kept]))
    add_empty_ranges(
        tmp_path, "usdt_perp", "5m", "BTCUSDT", [EmptyRange(t0_ms() + 10 * STEP, t0_ms() + 20 * STEP)]
    )
    (cov,) = coverage(tmp_path)
    assert [(h.kind, h.missing) for h in cov.holes] == [("exchange", 10), ("missing", 5)]
    assert cov.missing == 5 and cov.exchange_missing == 10


def test_monthly_interval_coverage(tmp_path) -> None:
    months = [dt.datetime(2024, m, 1, tzinfo=dt.UTC) for m in (1, 2, 3, 6, 7)]
    df = frame([int(m.timestamp() * 1000) for m in months])
    write_klines(tmp_path, "usdt_perp", "1M", "BTCUSDT", df.with_columns(pl.col("source")))
    (cov,) = coverage(tmp_path)
    assert cov.expected == 7 and cov.rows == 5
    assert [(h.start.month, h.end.month, h.missing) for h in cov.holes] == [(4, 6, 2)]
