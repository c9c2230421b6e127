"""``SimMarket``: the deterministic market and its ground truth.

The 1m series of a (symbol, day) is generated on demand (``gen.generate_day``), masked by the symbol's
listing segments and the market's maintenance windows, and cached. Intervals up to 1d are derived per
day (every such interval divides a day); 1d candles form a per-symbol daily table from which 3d (epoch
aligned), 1w (Monday) and 1M (calendar month) are derived. All derivations use ``candles.aggregate``.
Spot ``1s`` candles go the other way: they are generated per day from the day's final 1m candles
(``seconds.generate_seconds``) so that they aggregate back to them exactly, and cached apart
(``cache_1s_mb``) so that 1s traffic does not evict the other intervals' data.

``truth()`` returns exactly the candles the servers send (closed ones by default), as floats equal to
``float()`` of the strings sent.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import MARKETS, TRADE_TYPES
from lake.errors import NotFoundError, ValidationError
from lake.sim.cache import ByteLRU
from lake.sim.candles import Candles, aggregate, partial
from lake.sim.clock import MS_PER_DAY, MS_PER_MINUTE, VirtualClock, ms_to_iso, to_ms
from lake.sim.config import SimConfig
from lake.sim.gen import daily_walk, generate_day
from lake.sim.names import parse_symbol
from lake.sim.seconds import MS_PER_SECOND, generate_seconds
from lake.sim.universe import SymbolInfo, Universe

__all__ = ["Awkward", "SimMarket", "truth_frame"]

TimeLike = int | str | dt.datetime | dt.date  # anything clock.to_ms accepts
_MAX_1S_TRUTH_DAYS = 31


def _cost(c: Candles) -> int:
    return 12 * 8 * len(c) + 1000


@dataclass(frozen=True)
class Awkward:
    """Which symbols and windows carry the awkward truths, per market (``{market: [symbols]}``)."""

    recent: dict[str, list[str]]
    delisted: dict[str, list[str]]
    relisted: dict[str, list[str]]
    illiquid: dict[str, list[str]]
    delivered: dict[str, list[str]]
    maintenance: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k) for k in ("recent", "delisted", "relisted", "illiquid", "delivered")
        }
        out["maintenance"] = {
            m: [{"start": a, "end": b, "start_iso": ms_to_iso(a), "end_iso": ms_to_iso(b)} for a, b in w]
            for m, w in self.maintenance.items()
        }
        return out


class SimMarket:
    """The simulated market: symbols, candles of every interval, ground truth, listing changes."""

    def __init__(self, config: SimConfig | None = None, clock: VirtualClock | None = None):
        self.config = (config or SimConfig()).resolved()
        self.universe = Universe(self.config)
        self.clock = clock or VirtualClock(self.universe.start_ms, self.config.speed)
        # Shares of cache_mb: 1m 3/8, derived 3/16, walks 1/16, daily tables 1/16 (REST row blocks take
        # 3/16 and archive zips 1/8, see rows.py and archive.py).
        budget = self.config.cache_mb * 2**20
        self._minutes: ByteLRU[Candles] = ByteLRU(budget * 3 // 8, _cost)
        self._derived: ByteLRU[Candles] = ByteLRU(budget * 3 // 16, _cost)
        self._walks: ByteLRU[np.ndarray] = ByteLRU(budget // 16, lambda w: int(w.nbytes))
        self._daily: ByteLRU[tuple[int, Candles]] = ByteLRU(budget // 16, lambda e: _cost(e[1]))
        # 1s: its own budget (cache_1s_mb), half of it for the seconds of a day (8.3 MB each); the REST
        # row blocks and daily archive zips of 1s take a quarter each (rows.py, archive.py).
        self._seconds: ByteLRU[Candles] = ByteLRU(self.config.cache_1s_mb * 2**20 // 2, _cost)
        self._lock = threading.RLock()

    # ---- symbols ----------------------------------------------------------------------------------
    def info(self, market: str, symbol: str) -> SymbolInfo:
        found = self.universe.get(market, symbol)
        if found is None:
            raise NotFoundError(f"no symbol {symbol!r} on simulated market {market!r}")
        return found

    def resolve(self, kind: str) -> tuple[str, list[SymbolInfo]]:
        """Market name and symbols of a market (``spot``/``um``/``cm``) or trade type (``usdt_perp``…)."""
        if kind in MARKETS:
            return kind, list(self.universe.symbols[kind].values())
        if kind in TRADE_TYPES:
            m = TRADE_TYPES[kind].market_name
            return m, [i for i in self.universe.symbols[m].values() if i.trade_type == kind]
        raise ValidationError(f"unknown market or trade type {kind!r}")

    def symbols(self, kind: str, *, trading_at: int | None = None) -> list[str]:
        """Symbol names of a market or trade type; with ``trading_at``, only those TRADING then."""
        _, infos = self.resolve(kind)
        if trading_at is None:
            return [i.symbol for i in infos]
        return [i.symbol for i in infos if self.universe.status(i, trading_at) == "TRADING"]

    @property
    def awkward(self) -> Awkward:
        def by(role: str) -> dict[str, list[str]]:
            return {
                m: [s for s, i in syms.items() if role in i.roles]
                for m, syms in self.universe.symbols.items()
            }

        return Awkward(
            recent=by("recent"), delisted=by("delisted"), relisted=by("relisted"), illiquid=by("illiquid"),
            delivered=by("delivered"), maintenance={m: list(w) for m, w in self.universe.maintenance.items()},
        )  # fmt: skip

    # ---- 1m base truth ----------------------------------------------------------------------------
    def walk(self, info: SymbolInfo) -> np.ndarray:
        """The symbol's daily log-price walk (see ``gen.daily_walk``), cached."""
        return self._walks.get_or(info.key, lambda: daily_walk(info))

    def minutes(self, info: SymbolInfo, day: int) -> Candles:
        """The 1m candles of ``day`` (days since the epoch) that exist: listed, outside maintenance."""
        key = (info.market, info.symbol, info.version, day)
        got = self._minutes.get(key)
        if got is not None:
            return got
        d0 = day * MS_PER_DAY
        if not self.universe.has_data(info, d0, d0 + MS_PER_DAY):
            return self._minutes.put(key, Candles.empty())
        c = generate_day(info, self.walk(info), day)
        mask = self.universe.valid_mask(info, c.t)
        if not mask.all():
            c = c.take(mask)
        zombie = self.universe.zombie_span(info)
        if zombie is not None and d0 < zombie[1] and zombie[0] < d0 + MS_PER_DAY:
            c = self._zombies(info, c, *zombie)
        fixes = [(t, add) for t, add in info.corrections.items() if d0 <= t < d0 + MS_PER_DAY]
        for t, add in fixes:
            i = int(np.searchsorted(c.t, t))
            if i < len(c) and c.t[i] == t and c.v[i] > 0:
                c.q[i] += round(float(c.q[i]) * add / float(c.v[i]))
                c.v[i] += add
        return self._minutes.put(key, c)

    def _zombies(self, info: SymbolInfo, c: Candles, a: int, b: int) -> Candles:
        """``c`` (one day's minutes) with those opening in ``[a, b)`` made zombies: no trades, all four
        prices at the last close before ``a``."""
        z = (c.t >= a) & (c.t < b)
        last = self.universe.prev_valid(info, a - MS_PER_MINUTE)
        if not z.any() or last is None:
            return c
        if last >= int(c.t[0]):  # (the same day: this day's own candle, not a recursion)
            price = c.c[int(np.searchsorted(c.t, last))]
        else:
            before = self.minutes(info, last // MS_PER_DAY)
            price = before.c[int(np.searchsorted(before.t, last))]
        c = c.copy()
        for col in (c.o, c.h, c.l, c.c):
            col[z] = price
        for col in (c.v, c.q, c.n, c.tb, c.tq):
            col[z] = 0
        c.f[z] = -1
        c.L[z] = -1
        return c

    def seconds(self, info: SymbolInfo, day: int) -> Candles:
        """The 1s candles of ``day``: 60 per existing 1m candle, aggregating to it exactly (spot only)."""
        if info.market != "spot":
            raise ValidationError(f"{info.market} has no 1s candles (Binance serves 1s on spot only)")
        key = (info.symbol, info.version, day)
        got = self._seconds.get(key)
        if got is None:
            got = self._seconds.put(key, generate_seconds(info, day, self.minutes(info, day)))
        return got

    # ---- derived intervals ------------------------------------------------------------------------
    def day_candles(self, info: SymbolInfo, iv: Interval, day: int) -> Candles:
        """Candles of an interval up to 1d that open on ``day`` (final values)."""
        if iv.name == "1m":
            return self.minutes(info, day)
        if iv.name == "1s":
            return self.seconds(info, day)
        assert iv.ms is not None and iv.ms <= MS_PER_DAY
        key = (info.market, info.symbol, info.version, iv.name, day)
        got = self._derived.get(key)
        if got is None:
            m = self.minutes(info, day)
            got = self._derived.put(key, aggregate(m, m.t - m.t % iv.ms))
        return got

    def daily_table(self, info: SymbolInfo, last_day: int) -> Candles:
        """1d candles from the symbol's first day through ``last_day``."""
        key = (info.market, info.symbol, info.version)
        with self._lock:
            done, table = self._daily.get(key) or (info.first_ms // MS_PER_DAY - 1, Candles.empty())
            if last_day > done:
                parts = [table]
                for d in range(done + 1, last_day + 1):
                    m = self.minutes(info, d)
                    if len(m):
                        parts.append(aggregate(m, np.full(len(m), d * MS_PER_DAY, dtype=np.int64)))
                table = Candles.concat(parts)
                self._daily.put(key, (last_day, table))
        return table.between(-(2**62), (last_day + 1) * MS_PER_DAY)

    def long_candles(self, info: SymbolInfo, iv: Interval, until: int) -> Candles:
        """Candles of 1d and longer opening before ``until`` (an interval boundary), final values."""
        key = (info.market, info.symbol, info.version, iv.name, "until", until)
        got = self._derived.get(key)
        if got is None:
            days = self.daily_table(info, (until - 1) // MS_PER_DAY)
            got = self._derived.put(key, aggregate(days, bucket_opens(iv, days.t)))
        return got

    def candles(self, info: SymbolInfo, iv: Interval, start: int, end: int) -> Candles:
        """Final values of every candle opening in ``[start, end)``, whatever the clock says."""
        if end <= start:
            return Candles.empty()
        if iv.ms is not None and iv.ms <= MS_PER_DAY:
            parts = []
            day = max(start, info.first_ms) // MS_PER_DAY
            while day * MS_PER_DAY < end:
                probe = max(start, day * MS_PER_DAY)
                if iv.ms < MS_PER_MINUTE:  # 1s: the minute holding ``start`` has seconds from it on
                    probe -= probe % MS_PER_MINUTE
                nxt = self.universe.next_valid(info, probe)
                if nxt is None or nxt >= end:
                    break
                day = nxt // MS_PER_DAY
                parts.append(self.day_candles(info, iv, day).between(start, end))
                day += 1
            return Candles.concat(parts)
        until = iv.next_open(iv.floor(end - 1))
        return self.long_candles(info, iv, until).between(start, end)

    def forming(self, info: SymbolInfo, iv: Interval, now: int) -> Candles | None:
        """The candle containing ``now`` with partial values (one row), or None if it has no 1m data."""
        fo = iv.floor(now)
        minute = now - now % MS_PER_MINUTE
        today = now // MS_PER_DAY
        if iv.name == "1s":
            sec = self.seconds(info, today).between(fo, fo + MS_PER_SECOND)
            return partial(sec, (now - fo) / MS_PER_SECOND) if len(sec) else None
        subs = []
        if iv.ms is None or iv.ms > MS_PER_DAY:
            subs.append(self.daily_table(info, today - 1).between(fo, today * MS_PER_DAY))
        m = self.minutes(info, today)
        subs.append(m.between(max(fo, today * MS_PER_DAY), minute))
        cur = m.between(minute, minute + MS_PER_MINUTE)
        if len(cur):
            subs.append(partial(cur, (now - minute) / MS_PER_MINUTE))
        sub = Candles.concat(subs)
        if not len(sub):
            return None
        return aggregate(sub, np.full(len(sub), fo, dtype=np.int64))

    # ---- ground truth -----------------------------------------------------------------------------
    def truth(
        self,
        kind: str,
        interval: str | Interval,
        symbols: list[str] | str | None = None,
        start: TimeLike | None = None,
        end: TimeLike | None = None,
        *,
        closed_only: bool = True,
        now: TimeLike | None = None,
    ) -> pl.DataFrame:
        """The candles the simulator serves, as a DataFrame: ``symbol`` + the lake kline columns.

        ``kind`` is a market (``spot``/``um``/``cm``) or trade type; ``symbols`` defaults to all of it.
        ``1s`` exists on spot only (a futures ``kind`` with ``1s`` is a ``ValidationError``) and is
        served at most 31 days per call (86,400 rows per symbol-day). Candles open in ``[start, end)`` (default: all history up to now). With ``closed_only`` (the
        default) only candles closed at ``now`` (default: the virtual clock) are returned, i.e. with
        open + interval <= now. Sorted by symbol, then time. On COIN-M ``volume`` is in contracts and
        ``quote_volume`` is the base-asset volume, as in the REST fields they come from.
        """
        market, infos = self.resolve(kind)
        iv = parse_interval(interval, spot=market == "spot")  # 1s: spot only
        if symbols is not None:
            wanted = [symbols] if isinstance(symbols, str) else list(symbols)
            known = {i.symbol: i for i in infos}
            missing = [s for s in wanted if s not in known]
            if missing:
                raise NotFoundError(f"unknown symbols for {kind}: {', '.join(missing)}")
            infos = [known[s] for s in wanted]
        now_ms = self.clock.now_ms() if now is None else to_ms(now)
        lo = self.universe.history_start if start is None else to_ms(start)
        hi = now_ms + 1 if end is None else to_ms(end)
        if closed_only:
            hi = min(hi, iv.floor(now_ms))
        if iv.ms == MS_PER_SECOND and hi - lo > _MAX_1S_TRUTH_DAYS * MS_PER_DAY:
            # 86,400 rows a symbol-day: the default (all history) would be tens of GB
            raise ValidationError(
                f"1s truth spans at most {_MAX_1S_TRUTH_DAYS} days per call: give start (and end)"
            )
        frames = [truth_frame(i, self.candles(i, iv, lo, hi)) for i in sorted(infos, key=lambda i: i.symbol)]
        return pl.concat(frames) if frames else truth_frame(None, Candles.empty())

    def zero_volume_opens(self, market: str, symbol: str, start: TimeLike, end: TimeLike) -> list[int]:
        """Open times of the zero-volume 1m candles in ``[start, end)`` (test helper)."""
        c = self.candles(self.info(market, symbol), parse_interval("1m"), to_ms(start), to_ms(end))
        return [int(t) for t in c.t[c.v == 0]]

    # ---- listing changes (fault knobs) ------------------------------------------------------------
    def _next_minute(self, at: TimeLike | None) -> int:
        t = self.clock.now_ms() if at is None else to_ms(at)
        return -(-t // MS_PER_MINUTE) * MS_PER_MINUTE

    def list_symbol(self, market: str, symbol: str, at: TimeLike | None = None) -> SymbolInfo:
        """List a new symbol (or relist a delisted one) from the next minute (or ``at``)."""
        t = self._next_minute(at)
        with self._lock:
            info = self.universe.get(market, symbol)
            if info is None:
                tt, base, quote, delivery = parse_symbol(market, symbol)
                info = self.universe._add(market, tt, symbol, base, quote, delivery)
                info.segments = [(t, delivery)]
            elif info.listed_at(t):
                raise ValidationError(f"{symbol} is already listed on {market}")
            else:
                info.segments = [*info.segments, (t, None)]
            info.version += 1
        return info

    def delist_symbol(self, market: str, symbol: str, at: TimeLike | None = None) -> SymbolInfo:
        """Stop a symbol's data from the next minute (or ``at``); exchangeInfo status changes then."""
        t = self._next_minute(at)
        with self._lock:
            info = self.info(market, symbol)
            a, b = info.segments[-1]
            if b is not None and b <= t:
                raise ValidationError(f"{symbol} is not listed on {market} at {ms_to_iso(t)}")
            if t <= a:
                info.segments = info.segments[:-1] or [(a, a)]
            else:
                info.segments = [*info.segments[:-1], (a, t)]
            info.version += 1
        return info

    def correct_day(self, market: str, symbol: str, day: TimeLike) -> int:
        """Change one traded minute of ``day`` (volume +1%, as a corrected re-upload); returns its open."""
        info = self.info(market, symbol)
        d = to_ms(day) // MS_PER_DAY
        m = self.minutes(info, d)
        traded = np.flatnonzero(m.v > 0)
        if not len(traded):
            raise ValidationError(f"{symbol} has no traded minute on that day")
        i = int(traded[(len(traded) * 7 // 13 + len(info.corrections)) % len(traded)])
        with self._lock:
            t = int(m.t[i])
            info.corrections[t] = info.corrections.get(t, 0) + max(1, int(m.v[i]) // 100)
            info.version += 1
        return t


def bucket_opens(iv: Interval, t: np.ndarray) -> np.ndarray:
    """Open time of the ``iv`` candle containing each timestamp (vectorized ``Interval.floor``)."""
    if iv.ms is None:
        return t.astype("datetime64[ms]").astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)
    if iv.name == "1w":
        return t - (t - 4 * MS_PER_DAY) % iv.ms
    return t - t % iv.ms


def truth_frame(info: SymbolInfo | None, c: Candles) -> pl.DataFrame:
    """Candles as the lake's kline columns (floats exactly equal to the strings served), plus ``symbol``."""
    pd = 10.0 ** (info.price_dec if info else 0)
    vd = 10.0 ** (info.qty_dec if info else 0)
    qd = 10.0 ** (info.quote_dec if info else 0)
    return pl.DataFrame(
        {
            "symbol": pl.Series([info.symbol if info else ""] * len(c), dtype=pl.String),
            "candle_begin_time": pl.Series(c.t, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
            "open": c.o / pd,
            "high": c.h / pd,
            "low": c.l / pd,
            "close": c.c / pd,
            "volume": c.v / vd,
            "quote_volume": c.q / qd,
            "trade_num": pl.Series(c.n, dtype=pl.Int64),
            "taker_buy_base_asset_volume": c.tb / vd,
            "taker_buy_quote_asset_volume": c.tq / qd,
        }
    )
