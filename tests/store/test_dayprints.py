"""Packed day fingerprints: which days differ between two sets, as a full comparison of both says."""

from __future__ import annotations

import base64

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lake.store.dayprints import changed_days, pack_days, unpack_days

_REC = np.dtype([("d", "<i4"), ("p", "<i8"), ("l", "<i4")])
_DAY = 19_700


def _raw(records: list[tuple[int, int, int]]) -> str:
    """Packed records as given (any order, duplicates too: what a damaged footer could hold)."""
    rec = np.array(records, dtype=_REC)
    return base64.b64encode(rec.tobytes()).decode("ascii")


def _reference(new: str, old: str) -> dict[int, tuple[object, object]]:
    n, o = unpack_days(new), unpack_days(old)
    return {
        d: (n.get(d), o.get(d)) for d in n.keys() | o.keys() if n.get(d, (None,))[0] != o.get(d, (None,))[0]
    }


_record = st.tuples(
    st.integers(_DAY, _DAY + 40), st.integers(0, 3), st.sampled_from([-1, 0, 300_000, 86_100_000])
)


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[str, str]:
    days = sorted(draw(st.sets(st.integers(_DAY, _DAY + 30), max_size=31)))
    old = [(d, draw(st.integers(0, 3)), draw(st.sampled_from([-1, 86_100_000]))) for d in days]
    kind = draw(st.sampled_from(["append", "edit", "delete", "independent", "unordered"]))
    new = list(old)
    if kind == "append":
        last = days[-1] if days else _DAY
        if new and draw(st.booleans()):  # the last old day grew (a live period)
            d, p, _ = new[-1]
            new[-1] = (d, p + 1, 86_100_000)
        new += [(last + i + 1, draw(st.integers(0, 3)), 86_100_000) for i in range(draw(st.integers(0, 3)))]
    elif kind == "edit" and new:
        i = draw(st.integers(0, len(new) - 1))
        d, p, last = new[i]
        new[i] = (d, p + draw(st.integers(0, 1)), last)
    elif kind == "delete" and new:
        del new[draw(st.integers(0, len(new) - 1))]
    elif kind == "independent":
        new = draw(st.lists(_record, max_size=8))
        return _raw(new), _raw(old)
    elif kind == "unordered":
        new = new + draw(st.lists(_record, max_size=4))
        return _raw(new), _raw(old)
    return _raw(new), _raw(old)


@settings(max_examples=400, deadline=None)
@given(_pairs())
def test_changed_days_equals_a_full_comparison(pair: tuple[str, str]) -> None:
    new, old = pair
    assert changed_days(new, old) == _reference(new, old)
    assert changed_days(old, new) == {d: (o, n) for d, (n, o) in _reference(new, old).items()}


def test_an_appended_day_and_a_grown_last_day() -> None:
    ms = 86_400_000
    days = np.arange(_DAY, _DAY + 31)
    prints = np.arange(31, dtype=np.int64) * 7
    lasts = days * ms + 86_100_000
    old = pack_days(days[:30], prints[:30], lasts[:30] - 600_000)  # its last day two candles short
    grown = prints.copy()
    grown[29] += 1
    new = pack_days(days, grown, lasts)
    got = changed_days(new, old)
    assert sorted(got) == [_DAY + 29, _DAY + 30]
    assert got[_DAY + 29] == ((grown[29], int(lasts[29])), (prints[29], int(lasts[29]) - 600_000))
    assert got[_DAY + 30] == ((grown[30], int(lasts[30])), None)
    assert changed_days(old, old) == {}
    assert changed_days(old, "") == {d: (rec, None) for d, rec in unpack_days(old).items()}
