"""PeriodBook: expected/stored/absent bookkeeping and a watermark that never runs ahead."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.binance.intervals import parse_interval
from lake.live.period import PeriodBook

IV = parse_interval("1m")
M = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % M


def test_watermark_waits_for_catchup_then_follows_complete_periods() -> None:
    book = PeriodBook(IV, T0)
    assert book.watermark() is None
    book.open_period(T0 + M, {"A", "B"})
    book.mark_stored("A", [T0 + M])
    book.catchup_done()
    assert book.watermark() == T0  # catch-up reached base; T0+M still lacks B
    assert book.missing_by_symbol() == {"B": [T0 + M]}
    assert book.mark_stored("B", [T0 + M]) == [T0 + M]
    assert book.watermark() == T0 + M
    assert book.state(T0 + M) is None  # pruned once passed


def test_gap_in_registration_is_filled_and_blocks_watermark() -> None:
    book = PeriodBook(IV, T0)
    book.catchup_done()
    book.open_period(T0 + 3 * M, {"A"})  # a stall: T0+M and T0+2M registered too
    assert [s.open_ms for s in book.pending()] == [T0 + M, T0 + 2 * M, T0 + 3 * M]
    book.mark_stored("A", [T0 + 3 * M])
    assert book.watermark() == T0
    book.mark_absent("A", [T0 + M])
    book.mark_stored("A", [T0 + 2 * M])
    assert book.watermark() == T0 + 3 * M


def test_absent_only_for_expected_symbols_and_unknown_periods_ignored() -> None:
    book = PeriodBook(IV, T0)
    book.catchup_done()
    book.open_period(T0 + M, {"A"})
    assert book.mark_absent("Z", [T0 + M]) == []
    assert book.mark_stored("A", [T0 + 5 * M]) == []  # not registered
    assert book.summary(T0 + M) == (0, 1)


def test_new_and_dropped_symbols() -> None:
    book = PeriodBook(IV, T0)
    book.catchup_done()
    book.open_period(T0 + M, {"A"})
    book.add_symbol("N", T0 + M)
    assert book.missing_by_symbol() == {"A": [T0 + M], "N": [T0 + M]}
    book.drop_symbol("N", T0 + M)
    book.mark_stored("A", [T0 + M])
    assert book.watermark() == T0 + M


def test_previous_watermark_is_kept_and_never_decreases() -> None:
    book = PeriodBook(IV, T0, watermark=T0 + 10 * M)  # file from a run that got further (clock skew)
    book.catchup_done()
    assert book.watermark() == T0 + 10 * M
    book.open_period(T0 + 11 * M, {"A"})
    assert book.is_stored("A", T0 + 5 * M)  # behind the watermark
    assert not book.is_stored("A", T0 + 11 * M)


def test_monthly_interval_rejected() -> None:
    with pytest.raises(ValueError):
        PeriodBook(parse_interval("1M"), T0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["stored", "absent", "open"]), st.integers(1, 8), st.sampled_from("ABC")),
        max_size=60,
    )
)
def test_watermark_never_ahead_of_data(ops: list[tuple[str, int, str]]) -> None:
    """Whatever happens, every period ≤ the watermark (after base) has each expected symbol ready."""
    book = PeriodBook(IV, T0)
    book.catchup_done()
    expected: dict[int, set[str]] = {}
    ready: dict[int, set[str]] = {}
    last = book.watermark()
    for op, k, sym in ops:
        p = T0 + k * M
        if op == "open":
            for q in range(book.last_opened + M, p + 1, M):
                if q > (book.watermark() or 0):
                    expected.setdefault(q, {"A", "B", "C"})
            book.open_period(p, {"A", "B", "C"})
        elif op == "stored":
            if book.state(p) is not None:
                ready.setdefault(p, set()).add(sym)
            book.mark_stored(sym, [p])
        else:
            if book.state(p) is not None:
                ready.setdefault(p, set()).add(sym)
            book.mark_absent(sym, [p])
        wm = book.watermark()
        assert wm is not None and last is not None and wm >= last
        last = wm
        for q, syms in expected.items():
            if q <= wm:
                assert syms <= ready.get(q, set()), (q, wm)
