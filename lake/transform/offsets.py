"""All-offset resampling: every offset of a target interval T from base candles of interval B, in one pass.

For T = n·B there are n offsets, k·B for k = 0 … n−1. Offset k's bins start at ``anchor + k·B + m·T``
(``anchor`` is the Unix epoch, or the first Monday after it for weekly bins) and hold the base candles
opening in ``[start, start + T)``. A bin is kept only when it spans the whole of T: its first and last
base candles are present (holes inside are allowed, as in the seed's pandas ``resample_symbol``).

How all n offsets come out of one pass: number the base slots ``i = (t − anchor) / B`` and cut them into
offset-0 groups ``j = i // n`` at positions ``p = i % n``. The bin of offset k ≥ 1 that starts in group
j is the *suffix* of group j from position k plus the *prefix* of group j+1 up to position k−1, so
per-group forward and backward cumulative aggregates (sum, max, min, count) answer every offset with
one vectorised lookup each; offset 0 is the whole group. The non-empty groups are laid out densely
as an (n positions × groups) grid, so the work is a handful of numpy passes over the data, whatever
n is, and never a Python loop over rows.

Two methods:

* ``seed``: open = first, high = max, low = min, close = last, sums for the volume columns.
* ``binance``: as Binance aggregates its own higher intervals — zero-volume base candles do not move
  open, high or low (open is the first *traded* candle's open, high/low over traded candles only);
  a bin without any traded candle falls back to the seed rules (for Binance data such a bin is flat
  at the previous close). Close and the sums are the same as ``seed``. Base slots the exchange
  confirmed empty (a maintenance window, the time before a listing or after a delisting; the
  lake records them as ``_meta/empty``) count as present for the span test, so the bin of an hour
  cut by one is kept as Binance keeps it; ``n_base`` counts real candles only
  (``with_confirmed_empty``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from lake.binance.intervals import MS_PER_DAY, Interval, parse_interval
from lake.errors import DataError, ValidationError
from lake.schema import OFFSET_SCHEMA

__all__ = [
    "METHODS",
    "SUM_COLUMNS",
    "OffsetPlan",
    "Resampled",
    "check_target",
    "format_offset",
    "offset_plan",
    "parse_duration_ms",
    "resample_arrays",
    "resample_offsets",
    "with_confirmed_empty",
]

METHODS = ("seed", "binance")
SUM_COLUMNS = (
    "volume",
    "quote_volume",
    "trade_num",
    "taker_buy_base_asset_volume",
    "taker_buy_quote_asset_volume",
)
_UNITS_MS = {"w": 7 * MS_PER_DAY, "d": MS_PER_DAY, "h": 3_600_000, "m": 60_000, "s": 1000}
_DURATION_RE = re.compile(r"(?:(\d+)([wdhms]))+")
_PART_RE = re.compile(r"(\d+)([wdhms])")
# The first Monday after the epoch (1970-01-01 was a Thursday): weekly bins start on Mondays.
_MONDAY_MS = 4 * MS_PER_DAY
_OUT_COLUMNS = ["symbol", "offset", *OFFSET_SCHEMA]
_VALUE_COLUMNS = [c for c in OFFSET_SCHEMA if c not in ("candle_begin_time", "n_base")]


def parse_duration_ms(text: str) -> int:
    """``"15m"`` → 900000; also ``"1h15m"``, ``"2d"``, ``"0m"``. Raises ``ValidationError``."""
    s = text.strip()
    if not _DURATION_RE.fullmatch(s):
        raise ValidationError(f"invalid offset {text!r}: expected a duration such as 0m, 15m, 1h or 1h30m")
    return sum(int(num) * _UNITS_MS[unit] for num, unit in _PART_RE.findall(s))


@functools.lru_cache(maxsize=1024)  # asked per series and offset (3,600 times a run)
def format_offset(ms: int, base: Interval | None = None) -> str:
    """Canonical name of an offset: ``0m``, ``5m``, ``1h``, ``1h15m``, ``2d``.

    Zero is named in the base interval's unit (``0m`` for a 5m base, ``0h`` for 1h), the way the
    Quantclass files name their offsets; other values use the largest units that divide them.
    """
    if ms == 0:
        unit = base.name[-1] if base is not None and base.name[-1] in "dhms" else "m"
        return f"0{unit}"
    out = []
    rest = ms
    for unit in "dhms":
        size = _UNITS_MS[unit]
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        raise ValidationError(f"offset of {ms} ms is not a whole number of seconds")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class OffsetPlan:
    """What to compute: target ``T`` from base ``B`` (``n = T/B``), which offsets, which method."""

    target: Interval
    base: Interval
    offsets: tuple[int, ...]  # offset indexes k in 0 … n-1, ascending
    method: str = "seed"

    @property
    def n(self) -> int:
        assert self.target.ms is not None and self.base.ms is not None
        return self.target.ms // self.base.ms

    @property
    def base_ms(self) -> int:
        assert self.base.ms is not None
        return self.base.ms

    @property
    def target_ms(self) -> int:
        assert self.target.ms is not None
        return self.target.ms

    @property
    def anchor_ms(self) -> int:
        """Where offset 0's bins are anchored: the epoch, or the first Monday for weekly bins."""
        return _MONDAY_MS if self.target.name == "1w" else 0

    def name(self, k: int) -> str:
        return format_offset(k * self.base_ms, self.base)

    @property
    def names(self) -> list[str]:
        return [self.name(k) for k in self.offsets]


def check_target(target: Interval) -> None:
    """Raise ``ValidationError`` for a target interval offsets cannot have (1M)."""
    if target.ms is None:
        raise ValidationError("offsets of 1M are not supported: a calendar month is no multiple of a base")


def offset_plan(
    target: str | Interval,
    base: str | Interval,
    offsets: str | Sequence[str] | None = "all",
    method: str = "seed",
) -> OffsetPlan:
    """Validate a (target, base, offsets, method) combination and return its plan.

    ``offsets`` is ``"all"``/``None``, a comma-separated string (``"0m,15m"``) or a list of names;
    each must be a whole multiple of the base below the target.
    """
    t = parse_interval(target)
    b = parse_interval(base)
    if method not in METHODS:
        raise ValidationError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    check_target(t)
    assert t.ms is not None  # (check_target)
    if b.ms is None:
        raise ValidationError("1M cannot be a base interval")
    if b.ms >= t.ms or t.ms % b.ms:
        raise ValidationError(
            f"{t.name} is not a whole multiple (≥ 2) of the base {b.name}; "
            f"pick a base that divides it, e.g. {_suggest_bases(t)}"
        )
    if t.name == "1w" and _MONDAY_MS % b.ms:
        raise ValidationError(f"weekly bins start on Mondays, which {b.name} candles do not align to")
    n = t.ms // b.ms
    if offsets is None or offsets == "all":
        ks = tuple(range(n))
    else:
        names = [s.strip() for s in offsets.split(",")] if isinstance(offsets, str) else list(offsets)
        chosen: set[int] = set()
        for name in names:
            ms = parse_duration_ms(name)
            if ms % b.ms or ms >= t.ms:
                raise ValidationError(
                    f"offset {name!r} of {t.name} from {b.name}: must be a multiple of {b.name} "
                    f"below {t.name} (valid: {format_offset(0, b)} … {format_offset(t.ms - b.ms, b)})"
                )
            chosen.add(ms // b.ms)
        if not chosen:
            raise ValidationError("no offsets given")
        ks = tuple(sorted(chosen))
    return OffsetPlan(t, b, ks, method)


def _suggest_bases(t: Interval) -> str:
    from lake.binance.intervals import INTERVALS

    assert t.ms is not None
    ok = [i.name for i in INTERVALS.values() if i.ms and i.ms < t.ms and t.ms % i.ms == 0]
    return ", ".join(ok[-3:]) if ok else "none"


# -- the computation ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Grid:
    """Base rows laid out densely by (position p, offset-0 group g): arrays of shape (n, G).

    Position-major, so a cumulative aggregate over positions is n vector operations of length G.
    """

    n: int
    flat: np.ndarray  # row -> index into the flattened (n, G) grid
    gsym: np.ndarray  # group -> symbol code
    gj: np.ndarray  # group -> offset-0 group number j
    next_ok: np.ndarray  # group -> whether group g+1 is group j+1 of the same symbol
    present: np.ndarray  # (n, G) bool

    def dense(self, values: np.ndarray, fill: float | int | bool) -> np.ndarray:
        out = np.full(self.present.size, fill, dtype=values.dtype)
        out[self.flat] = values
        return out.reshape(self.present.shape)


def _layout(sym: np.ndarray, slot: np.ndarray, plan: OffsetPlan) -> _Grid:
    """The grid of rows at base slots ``slot`` (open time − anchor, in base intervals)."""
    n = plan.n
    j, p = np.divmod(slot, n)
    new = np.ones(len(slot), dtype=bool)
    new[1:] = (sym[1:] != sym[:-1]) | (j[1:] != j[:-1])
    gid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    groups = len(starts)
    gsym, gj = sym[starts], j[starts]
    next_ok = np.zeros(groups, dtype=bool)
    next_ok[:-1] = (gsym[1:] == gsym[:-1]) & (gj[1:] == gj[:-1] + 1)
    flat = p * groups + gid
    present = np.zeros(n * groups, dtype=bool)
    present[flat] = True
    if int(np.count_nonzero(present)) != len(slot):
        raise DataError("duplicate base candles (same symbol and open time)")
    return _Grid(n, flat, gsym, gj, next_ok, present.reshape(n, groups))


def _fwd(a: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """Inclusive prefix aggregate over positions: out[p] = op(a[0], …, a[p]).

    n vector operations of length G (``ufunc.accumulate(axis=0)`` is ~9× slower on this shape).
    """
    out = np.empty_like(a)
    out[0] = a[0]
    for p in range(1, len(a)):
        ufunc(out[p - 1], a[p], out=out[p])
    return out


def _bwd(a: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """Inclusive suffix aggregate over positions: out[p] = op(a[p], …, a[n-1])."""
    out = np.empty_like(a)
    out[-1] = a[-1]
    for p in range(len(a) - 2, -1, -1):
        ufunc(a[p], out[p + 1], out=out[p])
    return out


@dataclass(slots=True)
class _Bins:
    """The kept bins of one offset k: groups of their first and last base candle, output slice."""

    k: int
    first_g: np.ndarray
    last_g: np.ndarray
    out: slice


def _kept_bins(g: _Grid, ks: Sequence[int]) -> list[_Bins]:
    pres = g.present
    bins = []
    at = 0
    for k in ks:
        if k == 0:
            c = np.flatnonzero(pres[0] & pres[-1])
            last = c
        else:
            c = np.flatnonzero(pres[k, :-1] & pres[k - 1, 1:] & g.next_ok[:-1])
            last = c + 1
        bins.append(_Bins(k, c, last, slice(at, at + len(c))))
        at += len(c)
    return bins


def _kept_mask(g: _Grid, bins: list[_Bins]) -> np.ndarray:
    """(n, G) bool: ``[k, j]`` when offset k's bin starting in group j is kept. Row-major order is the
    output order (offset, then symbol and time), so a boolean gather of any (n, G) array by it yields
    a column of the result."""
    mask = np.zeros(g.present.shape, dtype=bool)
    for b in bins:
        mask[b.k, b.first_g] = True
    return mask


def _fill(out: np.ndarray, mask: np.ndarray, a: np.ndarray, ufunc: np.ufunc) -> None:
    """Write each kept bin's aggregate of grid ``a``: suffix of its first group ⊕ prefix of the next
    (offset 0: the whole group), for every offset in one (n−1) × (G−1) operation."""
    fwd, agg = _fwd(a, ufunc), _bwd(a, ufunc)
    ufunc(agg[1:, :-1], fwd[:-1, 1:], out=agg[1:, :-1])  # elementwise in place: row k = bins of offset k
    out[:] = agg[mask]


def resample_offsets(
    df: pl.DataFrame,
    plan: OffsetPlan,
    confirmed_empty: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> pl.DataFrame:
    """Resample base candles to every offset of ``plan`` in one pass.

    ``df`` holds base candles (``candle_begin_time`` and the kline value columns; a ``symbol`` column
    for several series, otherwise one series named ``""``), at most one per (symbol, open time). The
    result has ``symbol``, ``offset`` (its name, e.g. ``"15m"``) and the ``OFFSET_SCHEMA`` columns,
    ordered by offset, then symbol (in order of appearance), then ``candle_begin_time``.

    ``confirmed_empty``: per symbol, half-open ``(start_ms, end_ms)`` ranges in which the exchange has
    no candles; used by the ``binance`` method only (``with_confirmed_empty``).
    """
    if "symbol" not in df.columns:
        df = df.with_columns(pl.lit("", pl.String).alias("symbol"))
    if df.height == 0:
        return _empty_result()
    df = df.select(
        pl.col("symbol").cast(pl.String),
        pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias("_t"),
        *(pl.col(c).cast(OFFSET_SCHEMA[c]) for c in _VALUE_COLUMNS),
    )
    names, sym, t = _codes(df)
    if len(t) > 1 and not np.all((sym[1:] > sym[:-1]) | ((sym[1:] == sym[:-1]) & (t[1:] > t[:-1]))):
        df = df.sort("symbol", "_t")
        names, sym, t = _codes(df)
    values = {c: df[c].to_numpy() for c in _VALUE_COLUMNS}
    real = None
    if confirmed_empty and plan.method == "binance":
        code = {str(name): i for i, name in enumerate(names.to_list())}
        empty = {code[k]: list(v) for k, v in confirmed_empty.items() if k in code and v}
        sym, t, values, real = with_confirmed_empty(sym, t, values, plan, empty)
    r = resample_arrays(sym, t, values, plan, real)
    return pl.DataFrame(
        {
            "symbol": names.gather(pl.Series(r.sym)),
            "offset": pl.Series(plan.names, dtype=pl.String).gather(pl.Series(r.which)),
            "candle_begin_time": pl.Series(r.start).cast(pl.Datetime("ms", "UTC")),
            **r.columns,
        }
    ).select(_OUT_COLUMNS)


@dataclass(slots=True)
class Resampled:
    """Bins as numpy arrays, ordered by offset, then symbol code, then open time.

    ``which`` is the bin's index into ``plan.offsets``; ``sym`` its symbol code; ``start`` its open
    time (ms); ``columns`` the ``OFFSET_SCHEMA`` value columns and ``n_base``.
    """

    which: np.ndarray
    sym: np.ndarray
    start: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.start)


def resample_arrays(
    sym: np.ndarray,
    t: np.ndarray,
    values: dict[str, np.ndarray],
    plan: OffsetPlan,
    real: np.ndarray | None = None,
) -> Resampled:
    """The core of ``resample_offsets`` on arrays: ``sym`` (integer symbol codes) and ``t`` (open times,
    ms) sorted by (sym, t) and unique; ``values`` the kline value columns (``volume`` etc.).

    ``real`` (from ``with_confirmed_empty``) tells real candles from stand-ins for confirmed-empty
    slots: stand-ins count for the span test only. ``n_base`` counts real candles, open/high/low come
    from real ones, and a bin of stand-ins only is not kept."""
    if len(t) == 0:
        empty = {
            c: np.empty(0, dtype=np.int64 if c in ("trade_num", "n_base") else np.float64)
            for c in _VALUE_COLUMNS
        }
        empty["n_base"] = np.empty(0, dtype=np.int64)
        z = np.empty(0, dtype=np.int64)
        return Resampled(z.astype(np.uint32), z, z, empty)
    slot, off = np.divmod(t - plan.anchor_ms, plan.base_ms)
    if off.any():
        return _split_off_grid(sym, t, values, plan, off != 0, real)
    g = _layout(sym, slot, plan)
    bins = _kept_bins(g, plan.offsets)
    total = bins[-1].out.stop
    cols = {c: np.empty(total, dtype=np.int64 if c == "trade_num" else np.float64) for c in _VALUE_COLUMNS}
    n_base = np.empty(total, dtype=np.int64)

    mask = _kept_mask(g, bins)
    cols["open"][:] = g.dense(values["open"], np.nan)[mask]  # position k of the first group
    close = g.dense(values["close"], np.nan)
    last = np.full_like(close, np.nan)  # offset 0: position n-1 of its group; k: k-1 of the next
    last[0], last[1:, :-1] = close[-1], close[:-1, 1:]
    cols["close"][:] = last[mask]
    _fill(
        n_base,
        mask,
        g.present.astype(np.int64) if real is None else g.dense(real.astype(np.int64), 0),
        np.add,
    )
    for name in SUM_COLUMNS:
        _fill(cols[name], mask, g.dense(values[name], 0), np.add)
    _fill(cols["high"], mask, g.dense(values["high"], -np.inf), np.maximum)
    _fill(cols["low"], mask, g.dense(values["low"], np.inf), np.minimum)
    if plan.method == "binance":
        if real is not None:  # first the real candles' open/high/low, then the traded ones'
            _prefer(values, g, bins, mask, cols, real)
        _prefer(values, g, bins, mask, cols, values["volume"] > 0)
    ks, first_g = np.nonzero(mask)
    position = np.zeros(plan.n, dtype=np.uint32)
    position[list(plan.offsets)] = np.arange(len(plan.offsets), dtype=np.uint32)
    which = position[ks]
    start = (g.gj[first_g] * plan.n + ks) * plan.base_ms + plan.anchor_ms
    out = Resampled(which, g.gsym[first_g], start, {**cols, "n_base": n_base})
    return out if real is None else _real_bins(out)


def _real_bins(r: Resampled) -> Resampled:
    """The bins holding at least one real candle (not only stand-ins for confirmed-empty slots)."""
    keep = r.columns["n_base"] > 0
    if keep.all():
        return r
    return Resampled(r.which[keep], r.sym[keep], r.start[keep], {c: v[keep] for c, v in r.columns.items()})


def with_confirmed_empty(
    sym: np.ndarray,
    t: np.ndarray,
    values: dict[str, np.ndarray],
    plan: OffsetPlan,
    empty: Mapping[int, Sequence[tuple[int, int]]],
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Base rows (sorted by (sym, t)) with a stand-in row inserted at every base slot that ``empty``
    (per symbol code: half-open ``(start_ms, end_ms)`` ranges; a slot counts when it opens in one)
    confirms empty and that can share a bin with a stored candle of the series (within T of one),
    where no candle is stored; and ``real`` (False for the stand-ins).

    Binance builds its candle of an hour cut by a maintenance window, a listing or a delisting from
    the candles it has: for the span test such slots count as present, which a slot merely missing
    from the lake (the first hour of a backfill, the hour in progress) must not. A bin of stand-ins
    only is not kept, so only slots within T of a stored candle matter: a long range costs at most
    about 2·T/B rows per candle near it, and ranges far from the rows at hand (years before a
    listing, the history of a series whose last day is being appended) cost nothing. A candle
    stored inside a recorded range (a stale record) is a candle like any other, and the range's
    slots around it count as present too.
    A stand-in has zero volumes and the close of the stored candle before it (a bin whose last slots
    are stand-ins closes at its last real candle's close); ``resample_arrays`` takes open, high and
    low from real candles only and counts only them in ``n_base``.
    """
    b_ms, t_ms, anchor = plan.base_ms, plan.target_ms, plan.anchor_ms
    span = -(-t_ms // b_ms)
    at: list[np.ndarray] = []  # insertion positions into the stored rows
    codes: list[np.ndarray] = []
    times: list[np.ndarray] = []
    for code, ranges in sorted(empty.items()):
        lo, hi = np.searchsorted(sym, [code, code + 1])
        if lo == hi or not len(ranges):
            continue
        held = (t[lo:hi] - anchor) // b_ms  # the slots stored candles fill (also off-grid ones)
        # the slots that can share a bin with a stored candle, as merged runs [cs, ce) (a candle off
        # the grid shares bins with slots up to T either side of its own)
        cs, ce = held - span, held + span + 1
        brk = np.flatnonzero(cs[1:] > ce[:-1]) + 1
        cs, ce = cs[np.r_[0, brk]], ce[np.r_[brk - 1, len(held) - 1]]
        r = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        first = -(-(r[:, 0] - anchor) // b_ms)  # the first slot opening in [a, b)
        end = -(-(r[:, 1] - anchor) // b_ms)
        # each range cut to those runs: the runs i0 … i1−1 overlap it
        i0 = np.searchsorted(ce, first, side="right")
        i1 = np.searchsorted(cs, end, side="left")
        n = np.maximum(i1 - i0, 0)
        ri = np.repeat(np.arange(len(r)), n)
        ci = i0[ri] + _ramp(n)
        a, b = np.maximum(first[ri], cs[ci]), np.minimum(end[ri], ce[ci])
        lengths = np.maximum(b - a, 0)
        s = np.unique(np.repeat(a, lengths) + _ramp(lengths))
        s = s[~np.isin(s, held)]
        if len(s) == 0:
            continue
        st = s * b_ms + anchor
        at.append(lo + np.searchsorted(t[lo:hi], st))
        codes.append(np.full(len(s), code, dtype=sym.dtype))
        times.append(st.astype(t.dtype))
    if not at:
        return sym, t, values, np.ones(len(t), dtype=bool)
    pos = np.concatenate(at)
    n_new = len(pos)
    real = np.insert(np.ones(len(t), dtype=bool), pos, np.zeros(n_new, dtype=bool))
    out_sym = np.insert(sym, pos, np.concatenate(codes))
    out_t = np.insert(t, pos, np.concatenate(times))
    out: dict[str, np.ndarray] = {}
    for c, v in values.items():
        out[c] = np.insert(v, pos, np.zeros(n_new, dtype=v.dtype))
    # a stand-in's prices: the close of the real row before it (any series: only a bin's last slots
    # take a stand-in's close, and a kept bin has a real row of its own series before those)
    idx = np.where(real, np.arange(len(real)), -1)
    prev = np.maximum.accumulate(idx)
    close = np.where(prev >= 0, out["close"][np.maximum(prev, 0)], 0.0)
    for c in ("open", "high", "low", "close"):
        out[c] = np.where(real, out[c], close)
    return out_sym, out_t, out, real


def _ramp(n: np.ndarray) -> np.ndarray:
    """0, 1, … n[0]−1, 0, 1, … n[1]−1, …: the positions within runs of lengths ``n``."""
    total = int(n.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)


def _split_off_grid(
    sym: np.ndarray,
    t: np.ndarray,
    values: dict[str, np.ndarray],
    plan: OffsetPlan,
    off_grid: np.ndarray,
    real: np.ndarray | None,
) -> Resampled:
    """Series holding a candle off the base grid go through ``_resample_exact``, the rest the grid.

    Binance's 2018 spot history has runs of candles opening at hh:mm:14.789 and the like
    (../shared/reference/binance.md, quirk 2); the lake stores them at their own times, and the
    one-pass grid cannot place them in a slot without changing which bins the seed's rule keeps."""
    odd = np.isin(sym, np.unique(sym[off_grid]))

    def part(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        return sym[m], t[m], {c: v[m] for c, v in values.items()}, None if real is None else real[m]

    s, tt, v, r = part(odd)
    parts = [_resample_exact(s, tt, v, plan, r)]
    if not odd.all():
        s, tt, v, r = part(~odd)
        parts.append(resample_arrays(s, tt, v, plan, r))
    which = np.concatenate([r.which for r in parts])
    rsym = np.concatenate([r.sym for r in parts])
    start = np.concatenate([r.start for r in parts])
    order = np.lexsort((start, rsym, which))
    columns = {c: np.concatenate([r.columns[c] for r in parts])[order] for c in parts[0].columns}
    return Resampled(which[order], rsym[order], start[order], columns)


def _resample_exact(
    sym: np.ndarray,
    t: np.ndarray,
    values: dict[str, np.ndarray],
    plan: OffsetPlan,
    real: np.ndarray | None = None,
) -> Resampled:
    """The seed's rule taken literally, one offset at a time, for candles at any open time: a bin holds
    the candles opening in ``[start, start + T)`` and is kept when its last candle's end (open + B)
    minus its first candle's open is at least T; its open time is its first candle's open (pandas'
    ``first``), which is the bin start unless that candle is off the grid."""
    b_ms, t_ms = plan.base_ms, plan.target_ms
    parts: list[Resampled] = []
    for which, k in enumerate(plan.offsets):
        origin = plan.anchor_ms + k * b_ms
        binno = (t - origin) // t_ms
        cut = np.flatnonzero((sym[1:] != sym[:-1]) | (binno[1:] != binno[:-1])) + 1
        starts = np.concatenate(([0], cut))  # every bin's rows, kept or not: reduceat needs them all
        stops = np.concatenate((cut, [len(t)]))
        keep = t[stops - 1] + b_ms - t[starts] >= t_ms
        first, last = starts[keep], stops[keep] - 1

        cols: dict[str, np.ndarray] = {
            "open": values["open"][first],
            "close": values["close"][last],
            "high": _reduce(values["high"], starts, keep, np.maximum),
            "low": _reduce(values["low"], starts, keep, np.minimum),
            **{c: _reduce(values[c], starts, keep, np.add) for c in SUM_COLUMNS},
            "n_base": (stops - starts)[keep].astype(np.int64)
            if real is None
            else _reduce(real.astype(np.int64), starts, keep, np.add),
        }
        if plan.method == "binance":
            for rows in ([] if real is None else [real]) + [values["volume"] > 0]:
                first_row = _reduce(np.where(rows, np.arange(len(t)), len(t)), starts, keep, np.minimum)
                use = first_row < len(t)
                cols["open"] = np.where(use, values["open"][np.minimum(first_row, len(t) - 1)], cols["open"])
                for name, ufunc, fill in (("high", np.maximum, -np.inf), ("low", np.minimum, np.inf)):
                    only = _reduce(np.where(rows, values[name], fill), starts, keep, ufunc)
                    cols[name] = np.where(use, only, cols[name])
        parts.append(Resampled(np.full(len(first), which, dtype=np.uint32), sym[first], t[first], cols))
    if real is not None:
        parts = [_real_bins(r) for r in parts]
    return Resampled(
        np.concatenate([r.which for r in parts]),
        np.concatenate([r.sym for r in parts]),
        np.concatenate([r.start for r in parts]),
        {c: np.concatenate([r.columns[c] for r in parts]) for c in parts[0].columns},
    )


def _reduce(a: np.ndarray, starts: np.ndarray, keep: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` over each run of rows from ``starts[i]`` to the next start, for the kept runs."""
    return np.asarray(ufunc.reduceat(a, starts))[keep]


def _codes(df: pl.DataFrame) -> tuple[pl.Series, np.ndarray, np.ndarray]:
    """Symbols in order of appearance, each row's symbol code, each row's open time (ms)."""
    names = df["symbol"].unique(maintain_order=True)
    sym = df["symbol"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64)
    return names, sym, df["_t"].to_numpy()


def _prefer(
    values: dict[str, np.ndarray],
    g: _Grid,
    bins: list[_Bins],
    mask: np.ndarray,
    cols: dict[str, np.ndarray],
    traded_row: np.ndarray,
) -> None:
    """Open/high/low from the rows ``traded_row`` marks only (traded candles: volume > 0); bins with
    none of them keep the values they have."""
    n = g.n
    traded = g.dense(traded_row, False)
    any_traded = np.empty(bins[-1].out.stop, dtype=np.int64)
    _fill(any_traded, mask, traded.astype(np.int64), np.add)
    use = any_traded > 0
    # open: the first traded candle, in the suffix of the first group or else the prefix of the next
    opens = g.dense(values["open"], np.nan)
    pos = np.where(traded, np.arange(n)[:, None], n)
    nxt, first = _bwd(pos, np.minimum), _fwd(pos, np.minimum)
    traded_open = np.empty(len(use), dtype=np.float64)
    for b in bins:
        q = nxt[b.k][b.first_g]
        val = opens[np.minimum(q, n - 1), b.first_g]
        if b.k:
            q2 = first[b.k - 1][b.last_g]
            val = np.where(q < n, val, opens[np.minimum(q2, n - 1), b.last_g])
        traded_open[b.out] = val
    cols["open"] = np.where(use, traded_open, cols["open"])
    for name, ufunc, fill in (("high", np.maximum, -np.inf), ("low", np.minimum, np.inf)):
        traded_only = np.empty(len(use), dtype=np.float64)
        _fill(traded_only, mask, g.dense(np.where(traded_row, values[name], fill), fill), ufunc)
        cols[name] = np.where(use, traded_only, cols[name])


def _empty_result() -> pl.DataFrame:
    return pl.DataFrame(schema={"symbol": pl.String, "offset": pl.String, **OFFSET_SCHEMA})
