"""All-offset resampling: every offset of a target interval T from base candles of interval B, in one pass.

For T = n·B there are n offsets, k·B for k = 0 … n−1. Offset k's bins start at ``anchor + k·B + m·T``
(``anchor`` is the Unix epoch, or the first Monday after it for weekly bins) and hold the base candles
opening in ``[start, start + T)``. A bin is kept only when it spans the whole of T: its first and last
base candles are present (holes inside are allowed, as in the seed's pandas ``resample_symbol``).

How all n offsets come out of one pass: number the base slots ``i = (t − anchor) / B`` and cut them into
offset-0 groups ``j = i // n`` at positions ``p = i % n``. The bin of offset k ≥ 1 that starts in group
j is the *suffix* of group j from position k plus the *prefix* of group j+1 up to position k−1, so
per-group forward and backward cumulative aggregates (sum, max, min, count) answer every offset with
one vectorised lookup each; offset 0 is the whole group. The groups are laid out densely, one row of
n slots per non-empty group, so the work is a handful of numpy passes over the data, whatever n is.

Two methods:

* ``seed``: open = first, high = max, low = min, close = last, sums for the volume columns.
* ``binance``: as Binance aggregates its own higher intervals — zero-volume base candles do not move
  open, high or low (open is the first *traded* candle's open, high/low over traded candles only);
  a bin without any traded candle falls back to the seed rules (for Binance data such a bin is flat
  at the previous close). Close and the sums are the same as ``seed``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
    "format_offset",
    "offset_plan",
    "parse_duration_ms",
    "resample_offsets",
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


def parse_duration_ms(text: str) -> int:
    """``"15m"`` → 900000; also ``"1h15m"``, ``"2d"``, ``"0m"``. Raises ``ValidationError``."""
    s = text.strip()
    if not _DURATION_RE.fullmatch(s):
        raise ValidationError(f"invalid offset {text!r}: expected a duration such as 0m, 15m, 1h or 1h30m")
    return sum(int(num) * _UNITS_MS[unit] for num, unit in _PART_RE.findall(s))


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
    if t.ms is None:
        raise ValidationError("offsets of 1M are not supported: a calendar month is no multiple of a base")
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
class _Groups:
    """Base rows laid out as a dense (groups × n) grid of offset-0 groups."""

    n: int
    flat: np.ndarray  # row -> index into the (G*n) grid
    gsym: np.ndarray  # group -> symbol code
    gj: np.ndarray  # group -> offset-0 group number j
    next_ok: np.ndarray  # group -> whether group+1 is group j+1 of the same symbol
    present: np.ndarray  # (G, n) bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.present.shape

    def dense(self, values: np.ndarray, fill: float | int) -> np.ndarray:
        out = np.full(self.present.size, fill, dtype=values.dtype)
        out[self.flat] = values
        return out.reshape(self.present.shape)


def _layout(sym: np.ndarray, t: np.ndarray, plan: OffsetPlan) -> _Groups:
    rel = t - plan.anchor_ms
    slot, misaligned = np.divmod(rel, plan.base_ms)
    if misaligned.any():
        bad = int(t[np.flatnonzero(misaligned)[0]])
        raise DataError(f"base candle at {bad} ms is not aligned to {plan.base.name}")
    n = plan.n
    j, p = np.divmod(slot, n)
    new = np.ones(len(t), dtype=bool)
    if len(t) > 1:
        new[1:] = (sym[1:] != sym[:-1]) | (j[1:] != j[:-1])
    gid = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    gsym, gj = sym[starts], j[starts]
    next_ok = np.zeros(len(starts), dtype=bool)
    next_ok[:-1] = (gsym[1:] == gsym[:-1]) & (gj[1:] == gj[:-1] + 1)
    flat = gid * n + p
    present = np.zeros(len(starts) * n, dtype=bool)
    present[flat] = True
    if int(present.sum()) != len(t):
        raise DataError("duplicate base candles (same symbol and open time)")
    return _Groups(n, flat, gsym, gj, next_ok, present.reshape(len(starts), n))


def _fwd(a: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    return ufunc.accumulate(a, axis=1)


def _bwd(a: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    return ufunc.accumulate(a[:, ::-1], axis=1)[:, ::-1]


@dataclass(slots=True)
class _Bins:
    """Which bins of one offset are kept: (group, position) of their first and last base candle."""

    k: int
    first_g: np.ndarray
    last_g: np.ndarray

    @property
    def last_p(self) -> int:
        return self.k - 1 if self.k else -1  # -1: position n-1


def _kept_bins(g: _Groups, k: int) -> _Bins:
    pres = g.present
    if k == 0:
        c = np.flatnonzero(pres[:, 0] & pres[:, -1])
        return _Bins(0, c, c)
    c = np.flatnonzero(pres[:-1, k] & pres[1:, k - 1] & g.next_ok[:-1])
    return _Bins(k, c, c + 1)


def _combine(b: _Bins, fwd: np.ndarray, bwd: np.ndarray, op: np.ufunc) -> np.ndarray:
    """Aggregate of each bin from the backward (suffix) and forward (prefix) cumulative grids."""
    if b.k == 0:
        return bwd[b.first_g, 0]
    return op(bwd[b.first_g, b.k], fwd[b.last_g, b.k - 1])


def _first_traded_open(b: _Bins, nxt: np.ndarray, first: np.ndarray, opens: np.ndarray) -> np.ndarray:
    """Open of each bin's first traded candle (index grids hold n where nothing traded)."""
    n = nxt.shape[1]
    q = nxt[b.first_g, b.k]
    in_suffix = q < n
    out = opens[b.first_g, np.minimum(q, n - 1)]
    if b.k:
        q2 = first[b.last_g, b.k - 1]
        out = np.where(~in_suffix & (q2 < n), opens[b.last_g, np.minimum(q2, n - 1)], out)
    return out


def resample_offsets(df: pl.DataFrame, plan: OffsetPlan) -> pl.DataFrame:
    """Resample base candles to every offset of ``plan`` in one pass.

    ``df`` holds base candles (``candle_begin_time`` and the kline value columns; a ``symbol`` column
    for several series, otherwise one series named ``""``), at most one per (symbol, open time). The
    result has ``symbol``, ``offset`` (its name, e.g. ``"15m"``) and the ``OFFSET_SCHEMA`` columns,
    sorted by offset, symbol and ``candle_begin_time``.
    """
    if "symbol" not in df.columns:
        df = df.with_columns(pl.lit("", pl.String).alias("symbol"))
    if df.height == 0:
        return _empty_result()
    df = df.select(
        pl.col("symbol").cast(pl.String),
        pl.col("candle_begin_time").cast(pl.Datetime("ms", "UTC")).dt.epoch("ms").alias("_t"),
        *(
            pl.col(c).cast(OFFSET_SCHEMA[c])
            for c in OFFSET_SCHEMA
            if c not in ("candle_begin_time", "n_base")
        ),
    )
    names, sym, t = _codes(df)
    if len(t) > 1 and not np.all((sym[1:] > sym[:-1]) | ((sym[1:] == sym[:-1]) & (t[1:] > t[:-1]))):
        df = df.sort("symbol", "_t")
        names, sym, t = _codes(df)
    g = _layout(sym, t, plan)
    bins = [_kept_bins(g, k) for k in plan.offsets]
    cols: dict[str, list[np.ndarray]] = {c: [] for c in OFFSET_SCHEMA}

    def col(name: str) -> np.ndarray:
        return df[name].to_numpy()

    opens = g.dense(col("open"), np.nan)
    closes = g.dense(col("close"), np.nan)
    for b in bins:
        cols["open"].append(opens[b.first_g, b.k])
        cols["close"].append(closes[b.last_g, b.last_p])
    del closes
    count = g.present.astype(np.int64)
    cf, cb = _fwd(count, np.add), _bwd(count, np.add)
    cols["n_base"] = [_combine(b, cf, cb, np.add) for b in bins]
    del count, cf, cb
    for name in SUM_COLUMNS:
        d = g.dense(col(name), 0)
        f, bk = _fwd(d, np.add), _bwd(d, np.add)
        cols[name] = [_combine(b, f, bk, np.add) for b in bins]
    for name, ufunc, fill in (("high", np.maximum, -np.inf), ("low", np.minimum, np.inf)):
        d = g.dense(col(name), fill)
        cols[name] = [_combine(b, _fwd(d, ufunc), _bwd(d, ufunc), ufunc) for b in bins]
    if plan.method == "binance":
        _binance_overrides(df, g, bins, opens, cols)
    lengths = [len(b.first_g) for b in bins]
    first_g = np.concatenate([b.first_g for b in bins])
    ks = np.repeat(np.asarray(plan.offsets, dtype=np.int64), lengths)
    start = ((g.gj[first_g] * plan.n + ks) * plan.base_ms + plan.anchor_ms).astype(np.int64)
    offset_names = pl.Series("offset", plan.names, pl.String)
    out = pl.DataFrame(
        {
            "symbol": names.gather(pl.Series(g.gsym[first_g])),
            "offset": offset_names.gather(pl.Series(np.repeat(np.arange(len(bins)), lengths))),
            "candle_begin_time": pl.Series(start).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
            **{c: np.concatenate(cols[c]) for c in OFFSET_SCHEMA if c != "candle_begin_time"},
        }
    )
    return out.cast({c: OFFSET_SCHEMA[c] for c in OFFSET_SCHEMA}).select(_OUT_COLUMNS)


def _codes(df: pl.DataFrame) -> tuple[pl.Series, np.ndarray, np.ndarray]:
    """Symbols in order of appearance, each row's symbol code, each row's open time (ms)."""
    names = df["symbol"].unique(maintain_order=True)
    sym = df["symbol"].cast(pl.Enum(names)).to_physical().to_numpy().astype(np.int64)
    return names, sym, df["_t"].to_numpy()


def _binance_overrides(
    df: pl.DataFrame, g: _Groups, bins: list[_Bins], opens: np.ndarray, cols: dict[str, list[np.ndarray]]
) -> None:
    """Open/high/low from traded (volume > 0) candles only; bins with no trade keep the seed values."""
    traded_row = df["volume"].to_numpy() > 0
    n = g.n
    traded = g.dense(traded_row, False)
    cnt = traded.astype(np.int64)
    cf, cb = _fwd(cnt, np.add), _bwd(cnt, np.add)
    any_traded = [_combine(b, cf, cb, np.add) > 0 for b in bins]
    pos = np.where(traded, np.arange(n)[None, :], n)
    nxt, first = _bwd(pos, np.minimum), _fwd(pos, np.minimum)
    for i, b in enumerate(bins):
        cols["open"][i] = np.where(any_traded[i], _first_traded_open(b, nxt, first, opens), cols["open"][i])
    for name, ufunc, fill in (("high", np.maximum, -np.inf), ("low", np.minimum, np.inf)):
        d = g.dense(np.where(traded_row, df[name].to_numpy(), fill), fill)
        f, bk = _fwd(d, ufunc), _bwd(d, ufunc)
        for i, b in enumerate(bins):
            cols[name][i] = np.where(any_traded[i], _combine(b, f, bk, ufunc), cols[name][i])


def _empty_result() -> pl.DataFrame:
    return pl.DataFrame(schema={"symbol": pl.String, "offset": pl.String, **OFFSET_SCHEMA})
