"""Period bookkeeping for one live feed (trade type, interval): who is expected, who is stored.

A *period* is one candle, named by its open time in ms. When a period closes (server time passes
its close), the feed registers the symbols it expects for it (the live symbols at that moment).
Each symbol then leaves the period's *missing* set in one of two ways:

* ``stored``: its candle was written to the lake (after the write returned, never before);
* ``absent``: the exchange confirmed over REST that it has no candle for that period (maintenance,
  a listing that had not started trading yet, a delisting).

The *watermark* is the last period for which every expected symbol is stored or absent, and every
earlier tracked period too. It only moves forward, and only once the start-up catch-up
(everything up to ``base``, the last period closed at start) is done::

    book = PeriodBook(iv, base=last_closed_open)
    book.open_period(p, live_symbols)     # at p's close
    book.mark_stored("BTCUSDT", [p])      # after the write returned
    book.catchup_done()                   # after the start-up REST catch-up
    book.watermark()                      # -> p when complete, else base (or None before catch-up)

Pure and synchronous: the runner drives it from one event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lake.binance.intervals import Interval

__all__ = ["PeriodBook", "PeriodState"]


@dataclass
class PeriodState:
    """Expected, stored and absent symbols of one period.

    Change the sets through the methods below: they keep the set of missing symbols up to date
    incrementally. Recomputing it (a difference of three sets) for every stored candle cost
    O(symbols²) per period, ~20 ms of the event loop when a thousand symbols close at once.
    """

    open_ms: int
    expected: set[str]
    stored: set[str] = field(default_factory=set)
    absent: set[str] = field(default_factory=set)
    repairs: int = 0  # REST repair rounds run for this period
    _missing: set[str] | None = field(default=None, repr=False, compare=False)

    def _gaps(self) -> set[str]:
        if self._missing is None:
            self._missing = self.expected - self.stored - self.absent
        return self._missing

    @property
    def missing(self) -> set[str]:
        """Expected symbols neither stored nor confirmed absent (a copy)."""
        return set(self._gaps())

    @property
    def complete(self) -> bool:
        return not self._gaps()

    @property
    def ready(self) -> int:
        """Symbols stored or confirmed absent."""
        return len(self.expected) - len(self._gaps())

    def note_stored(self, symbol: str) -> bool:
        """Record ``symbol`` as stored; returns whether that made the period complete."""
        return self._settle(symbol, self.stored)

    def note_absent(self, symbol: str) -> bool:
        """Record ``symbol`` as confirmed absent; returns whether that made the period complete."""
        return self._settle(symbol, self.absent)

    def _settle(self, symbol: str, into: set[str]) -> bool:
        gaps = self._gaps()
        into.add(symbol)
        if symbol in gaps:
            gaps.discard(symbol)
            return not gaps
        return False

    def expect(self, symbol: str) -> None:
        self.expected.add(symbol)
        self._missing = None

    def unexpect(self, symbol: str) -> None:
        self.expected.discard(symbol)
        self._missing = None


class PeriodBook:
    """Tracks periods after ``base`` (the last period closed when the feed started)."""

    def __init__(self, interval: Interval, base: int, *, watermark: int | None = None) -> None:
        if interval.ms is None:
            raise ValueError("live feeds need a fixed-length interval (not 1M)")
        self.interval = interval
        self.base = interval.floor(base)
        self._periods: dict[int, PeriodState] = {}
        self._catchup_done = False
        self._watermark = watermark  # the last published value (may predate base, from the file)
        self._last_opened: int = self.base

    # -- registration ------------------------------------------------------------------------------
    @property
    def last_opened(self) -> int:
        """The newest period registered so far (``base`` until the first one)."""
        return self._last_opened

    def open_period(self, open_ms: int, symbols: Iterable[str]) -> PeriodState:
        """Register the symbols expected for the period opening at ``open_ms`` (idempotent).

        Periods between the last registered one and ``open_ms`` (a stall, a clock jump) are
        registered with the same symbols, so none is skipped.
        """
        open_ms = self.interval.floor(open_ms)
        expected = set(symbols)
        t = self._last_opened + self.interval.ms  # type: ignore[operator]
        while t <= open_ms:
            if t not in self._periods and (self._watermark is None or t > self._watermark):
                self._periods[t] = PeriodState(t, set(expected))
            t += self.interval.ms  # type: ignore[operator]
        self._last_opened = max(self._last_opened, open_ms)
        st = self._periods.get(open_ms)
        if st is None:  # already behind the watermark: a complete, pruned period
            st = PeriodState(open_ms, set(expected), stored=set(expected))
        return st

    def add_symbol(self, symbol: str, from_open: int) -> None:
        """Expect ``symbol`` in the registered periods opening at or after ``from_open``."""
        for p, st in self._periods.items():
            if p >= from_open:
                st.expect(symbol)

    def drop_symbol(self, symbol: str, from_open: int) -> None:
        """Stop expecting ``symbol`` in the registered periods opening at or after ``from_open``."""
        for p, st in self._periods.items():
            if p >= from_open:
                st.unexpect(symbol)

    # -- progress ----------------------------------------------------------------------------------
    def mark_stored(self, symbol: str, opens: Iterable[int]) -> list[int]:
        """Record stored candles; returns the tracked periods that just became complete."""
        done: list[int] = []
        for p in opens:
            st = self._periods.get(p)
            if st is None or symbol in st.stored:
                continue
            if st.note_stored(symbol):
                done.append(p)
        return done

    def mark_absent(self, symbol: str, opens: Iterable[int]) -> list[int]:
        """Record periods the exchange has no candle for; returns newly complete periods."""
        done: list[int] = []
        for p in opens:
            st = self._periods.get(p)
            if st is None or symbol not in st.expected or symbol in st.stored:
                continue
            if st.note_absent(symbol):
                done.append(p)
        return done

    def catchup_done(self) -> None:
        """The start-up catch-up stored everything up to ``base``: the watermark may reach it."""
        self._catchup_done = True

    @property
    def catching_up(self) -> bool:
        return not self._catchup_done

    def state(self, open_ms: int) -> PeriodState | None:
        return self._periods.get(open_ms)

    def pending(self, up_to: int | None = None) -> list[PeriodState]:
        """Incomplete registered periods (oldest first), optionally only those opening ≤ ``up_to``."""
        return [
            st for p, st in sorted(self._periods.items()) if not st.complete and (up_to is None or p <= up_to)
        ]

    def missing_by_symbol(self, up_to: int | None = None) -> dict[str, list[int]]:
        """For each symbol, the incomplete periods (≤ ``up_to``) it is missing from, ascending."""
        out: dict[str, list[int]] = {}
        for st in self.pending(up_to):
            for s in st.missing:
                out.setdefault(s, []).append(st.open_ms)
        return out

    def is_stored(self, symbol: str, open_ms: int) -> bool:
        st = self._periods.get(open_ms)
        if st is None:
            return self._watermark is not None and open_ms <= self._watermark
        return symbol in st.stored or symbol in st.absent

    # -- watermark ---------------------------------------------------------------------------------
    def watermark(self) -> int | None:
        """The last period with every expected symbol ready (and all earlier ones); never decreases.

        Pruned complete periods are dropped from memory as the watermark passes them.
        """
        if not self._catchup_done:
            return self._watermark
        wm = self.base if self._watermark is None else max(self._watermark, self.base)
        for p in sorted(self._periods):
            if p <= wm:
                continue
            if not self._periods[p].complete:
                break
            wm = p
        for p in [p for p in self._periods if p <= wm]:
            del self._periods[p]
        self._watermark = wm
        return wm

    def summary(self, open_ms: int) -> tuple[int, int] | None:
        """``(ready, expected)`` for a registered period; ``None`` once pruned (complete) or unknown."""
        st = self._periods.get(open_ms)
        if st is None:
            return None
        return st.ready, len(st.expected)
