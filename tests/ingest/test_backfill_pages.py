"""Page planning, missing ranges and what an answer proves (pure functions)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from lake.binance.intervals import MS_PER_DAY, parse_interval
from lake.binance.markets import MARKETS
from lake.ingest.backfill import resolve_range
from lake.ingest.pages import Page, answer_gaps, missing_ranges, page_limit, plan_pages, subtract_ranges

M5 = parse_interval("5m")
T0 = 1_700_006_400_000  # a 5m-aligned instant


@settings(max_examples=60, deadline=None)
@given(
    market=st.sampled_from(["spot", "um", "cm"]),
    iv_name=st.sampled_from(["1m", "5m", "1h", "1d", "1w"]),
    start=st.integers(0, 10**9),
    length=st.integers(0, 5 * 10**9),
)
def test_pages_tile_the_range_exactly(market: str, iv_name: str, start: int, length: int) -> None:
    m, iv = MARKETS[market], parse_interval(iv_name)
    a = T0 + start
    b = a + length
    pages = plan_pages(m, iv, a, b)
    slots = iv.count(a, b)
    assert sum(p.limit for p in pages) == slots
    for p, q in itertools.pairwise(pages):
        assert p.end_ms == q.start_ms
    for p in pages:
        assert p.limit == iv.count(p.start_ms, p.end_ms)
        assert 1 <= p.limit <= page_limit(m, iv)
        assert p.weight == m.kline_weight(p.limit)
        if m.kline_max_span_days:
            assert p.end_time - p.start_ms <= m.kline_max_span_days * MS_PER_DAY


def test_page_sizes_and_weights() -> None:
    pages = plan_pages(MARKETS["um"], M5, T0, T0 + 4320 * 300_000)  # 15 days of 5m
    assert [p.limit for p in pages] == [499] * 8 + [328]
    assert sum(p.weight for p in pages) == 18
    tail = plan_pages(MARKETS["um"], M5, T0, T0 + (499 + 40) * 300_000)
    assert [p.weight for p in tail] == [2, 1]  # a short last page costs 1
    assert [p.limit for p in plan_pages(MARKETS["spot"], M5, T0, T0 + 4320 * 300_000)] == [1000] * 4 + [320]
    assert page_limit(MARKETS["cm"], parse_interval("1d")) == 199


def test_subtract_and_missing_ranges() -> None:
    assert subtract_ranges(0, 100, [(10, 20), (15, 30), (90, 200)]) == [(0, 10), (30, 90)]
    assert subtract_ranges(0, 100, []) == [(0, 100)]
    step = 300_000
    opens = [T0 + i * step for i in (0, 1, 2, 5, 6)]
    assert missing_ranges(M5, T0, T0 + 10 * step, opens) == [
        (T0 + 3 * step, T0 + 5 * step),
        (T0 + 7 * step, T0 + 10 * step),
    ]
    # confirmed-empty ranges are not missing; irregular open times fill their slot
    assert missing_ranges(
        M5, T0, T0 + 10 * step, [*opens, T0 + 3 * step + 17], [(T0 + 7 * step, T0 + 10 * step)]
    ) == [(T0 + 4 * step, T0 + 5 * step)]
    assert missing_ranges(M5, T0, T0 + 3 * step, []) == [(T0, T0 + 3 * step)]


def test_answer_gaps() -> None:
    step = 300_000
    page = Page(T0, T0 + 10 * step, 10, 1)
    gaps, unresolved = answer_gaps(M5, page, [T0 + i * step for i in (2, 3, 7)], recent_first=False)
    assert gaps == [(T0, T0 + 2 * step), (T0 + 4 * step, T0 + 7 * step), (T0 + 8 * step, T0 + 10 * step)]
    assert unresolved is None
    assert answer_gaps(M5, page, [], recent_first=True) == ([(T0, T0 + 10 * step)], None)
    # a full answer with irregular times: only the part the rows span is proven
    odd = [T0 + i * step + 1 for i in range(9)] + [T0 + 8 * step + 2]
    gaps, unresolved = answer_gaps(M5, page, sorted(odd), recent_first=False)
    assert unresolved == (T0 + 9 * step, T0 + 10 * step)
    assert gaps == []
    recent = [T0 + 1 * step + 5, *[T0 + i * step for i in range(1, 10)]]
    gaps, unresolved = answer_gaps(M5, page, sorted(recent), recent_first=True)
    assert unresolved == (T0, T0 + step)


def test_resolve_range_caps_at_the_forming_candle() -> None:
    now = T0 + 7 * 300_000 + 1234
    s, e = resolve_range(M5, now, days=1)
    assert e == T0 + 7 * 300_000 and s == e - MS_PER_DAY
    s, e = resolve_range(M5, now, start=T0 + 1, end=T0 + 100 * 300_000)
    assert s == T0 + 300_000 and e == T0 + 7 * 300_000
    s, e = resolve_range(M5, now, start=now + MS_PER_DAY)
    assert s == e  # nothing to do for a start in the future
    s, e = resolve_range(M5, now, days=36500)  # 100 years back: never a negative startTime
    assert s == 0 and e == T0 + 7 * 300_000


@settings(max_examples=200, deadline=None)
@given(
    iv=st.sampled_from(["1m", "5m", "1h", "1w"]),
    slots=st.lists(st.integers(-5, 400), max_size=300),
    jitter=st.lists(st.integers(0, 59_999), min_size=300, max_size=300),
    a=st.integers(-3, 50),
    n=st.integers(0, 420),
)
def test_array_path_equals_slot_walk(iv: str, slots: list[int], jitter: list[int], a: int, n: int) -> None:
    """The numpy path (used above 64 stored candles) finds exactly the ranges of the slot walk,
    irregular (non-aligned) open times included."""
    from lake.ingest.pages import _slot_ranges, _slot_ranges_np

    i = parse_interval(iv)
    assert i.ms is not None
    base = i.floor(1_700_000_000_000)
    opens = [base + k * i.ms + (j % i.ms) for k, j in zip(slots, jitter, strict=False)]
    start, end = base + a * i.ms + 7, base + (a + n) * i.ms
    walk = _slot_ranges(i, start, end, sorted({i.floor(t) for t in opens}))
    assert _slot_ranges_np(i, start, end, opens) == walk


def test_missing_ranges_from_arrays_sorted_or_not() -> None:
    """The planner passes int64 arrays (a year of 1m per symbol): sorted and aligned ones skip the
    sort, others (the tail appended after the partitions, irregular opens) take it; same ranges."""
    import numpy as np

    step = M5.ms
    assert step is not None
    opens = [T0 + k * step for k in range(200) if k not in (3, 4, 150)]
    want = missing_ranges(M5, T0, T0 + 210 * step, opens)
    assert want == [
        (T0 + 3 * step, T0 + 5 * step),
        (T0 + 150 * step, T0 + 151 * step),
        (T0 + 200 * step, T0 + 210 * step),
    ]
    arr = np.array(opens, dtype=np.int64)
    assert missing_ranges(M5, T0, T0 + 210 * step, arr) == want
    assert missing_ranges(M5, T0, T0 + 210 * step, arr[::-1].copy()) == want
    shuffled = np.concatenate([arr[100:], arr[:100], arr[:5] + 17])  # repeated slots, unaligned opens
    assert missing_ranges(M5, T0, T0 + 210 * step, shuffled) == want
    assert missing_ranges(M5, T0, T0 + 210 * step, arr[:10]) == missing_ranges(
        M5, T0, T0 + 210 * step, opens[:10]
    )


def test_stored_opens_name_a_damaged_partition(tmp_path) -> None:
    # a backfill planning its requests over a truncated partition said only "a file in the lake
    # cannot be read as klines"
    import pytest

    from lake.errors import DataError
    from lake.ingest.backfill import _stored_opens
    from lake.store.fs import LakeFS
    from lake.store.klines import write_klines
    from tests.transform.helpers import random_candles

    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 600, hole_rate=0.0))
    lfs = LakeFS(tmp_path)
    start = int(random_candles(1, 300_000, 1)["candle_begin_time"].dt.epoch("ms")[0])
    got = _stored_opens(lfs, "usdt_perp", M5, ["BTCUSDT"], start, start + 600 * 300_000)
    assert len(got["BTCUSDT"]) == 600
    bad = next(tmp_path.rglob("data.parquet"))
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(
        DataError, match=r"1 unreadable or foreign kline partition file\(s\).*symbol=BTCUSDT/date="
    ):
        _stored_opens(lfs, "usdt_perp", M5, ["BTCUSDT"], start, start + 600 * 300_000)
