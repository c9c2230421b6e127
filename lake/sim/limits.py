"""Request-weight windows, 429/418 decisions and response statistics.

Each market has one fixed window aligned to the virtual UTC minute (the reset rule Binance does not
document; a fixed calendar minute is the common assumption), or with ``weight_window="sliding"`` the
last 60 virtual seconds. A request whose weight would take the
window past the limit is refused with 429 and, unless ``count_rejected_weight``, adds nothing. Requests
that keep coming after a 429 in the same window earn a 418 ban once ``ban_after`` of them arrived; bans
last ``ban_base_s`` virtual seconds, doubling per repeat offence up to ``ban_max_s``. ``Retry-After``
is in real seconds (the virtual wait divided by the speed; virtual seconds when the clock is frozen).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from lake.binance.markets import MARKETS
from lake.sim.clock import VirtualClock
from lake.sim.config import SimConfig

__all__ = ["Decision", "Stats", "WeightLimiter"]

_WINDOW_MS = 60_000
_FUNDING_WINDOW_MS = 300_000


_KEEP_WINDOWS = 1440  # per-window maxima kept in the stats (the last day at 1x)


@dataclass
class MarketStats:
    requests: int = 0
    status: Counter[int] = field(default_factory=Counter)
    max_used_weight: int = 0
    weight_total: int = 0
    windows: dict[int, int] = field(default_factory=dict)  # window start (virtual ms) -> max used weight

    def to_json(self, limit: int) -> dict[str, Any]:
        st = {str(k): v for k, v in sorted(self.status.items())}
        st["5xx"] = sum(v for k, v in self.status.items() if k >= 500)
        return {
            "requests": self.requests,
            "status": st,
            "max_used_weight": self.max_used_weight,
            "weight_limit": limit,
            "weight_total": self.weight_total,
            "over_limit": self.max_used_weight > limit,
            "windows": [[w, u] for w, u in sorted(self.windows.items())],
        }


class Stats:
    """Response counts per market and status, max used weight per window, websocket and archive counters."""

    def __init__(self, config: SimConfig):
        self._limits = dict(config.weight_limits)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.rest: dict[str, MarketStats] = {m: MarketStats() for m in MARKETS}
            self.ws: Counter[str] = Counter()
            self.archive: Counter[str] = Counter()

    def record_rest(
        self, market: str, status: int, used: int, charged: int, window: int | None = None
    ) -> None:
        """One REST response; ``used`` is the weight of ``window`` (its start, ms) after it, ``charged`` what it added."""
        with self._lock:
            s = self.rest[market]
            s.requests += 1
            s.status[status] += 1
            s.max_used_weight = max(s.max_used_weight, used)
            s.weight_total += charged
            if window is not None:
                s.windows[window] = max(s.windows.get(window, 0), used)
                if len(s.windows) > _KEEP_WINDOWS:
                    del s.windows[min(s.windows)]

    def count(self, group: str, key: str, n: int = 1) -> None:
        with self._lock:
            (self.ws if group == "ws" else self.archive)[key] += n

    def status_count(self, market: str, status: int | str) -> int:
        """Responses of ``market`` with ``status`` (an int, or ``"5xx"``)."""
        s = self.rest[market].status
        if status == "5xx":
            return sum(v for k, v in s.items() if k >= 500)
        return s[int(status)]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rest": {m: s.to_json(self._limits[m]) for m, s in self.rest.items()},
                "ws": dict(self.ws),
                "archive": dict(self.archive),
            }


@dataclass(frozen=True)
class Decision:
    status: int  # 200 (serve), 429 or 418
    used: int  # weight used in the window after this decision
    retry_after: int | None = None
    window: int | None = None  # start of the weight window (virtual ms)
    ban_until: int | None = None  # 418: when the ban ends (virtual ms), as the error message says


@dataclass
class _Window:
    limit: int
    wid: int = -1
    used: int = 0
    events: deque[tuple[int, int]] = field(default_factory=deque)  # sliding mode: (time, weight)
    after_429: int = 0
    ban_until: int = 0
    ban_level: int = 0
    funding_wid: int = -1
    funding_used: int = 0


class WeightLimiter:
    """Per-market weight budget on the virtual clock."""

    def __init__(self, config: SimConfig, clock: VirtualClock):
        self.config = config
        self.clock = clock
        self.limits = {m: int(config.weight_limits.get(m, MARKETS[m].default_weight_limit)) for m in MARKETS}
        self._w = {m: _Window(self.limits[m]) for m in MARKETS}
        self._lock = threading.Lock()
        self.sliding = config.weight_window == "sliding"

    def _roll(self, w: _Window, now: int) -> None:
        wid = now // _WINDOW_MS
        if self.sliding:
            while w.events and w.events[0][0] <= now - _WINDOW_MS:
                w.used -= w.events.popleft()[1]
            if now < w.wid * _WINDOW_MS:  # the clock went backwards: forget the future
                w.events.clear()
                w.used = 0
            w.wid = wid  # the stats bucket only
        elif wid != w.wid:
            w.wid, w.used, w.after_429 = wid, 0, 0

    def _charge(self, w: _Window, now: int, weight: int) -> None:
        w.used += weight
        if self.sliding:
            w.events.append((now, weight))

    def _wait_ms(self, w: _Window, now: int, weight: int) -> int:
        """Virtual ms until ``weight`` more would fit in the window."""
        if not self.sliding:
            return (w.wid + 1) * _WINDOW_MS - now
        need, freed = w.used + weight - w.limit, 0
        for t, x in w.events:
            freed += x
            if freed >= need:
                return t + _WINDOW_MS - now
        return _WINDOW_MS

    def retry_after(self, virtual_ms: float) -> int:
        real = self.clock.real_seconds(virtual_ms)
        if math.isinf(real):
            real = virtual_ms / 1000.0
        return max(1, math.ceil(real))

    def used(self, market: str) -> int:
        with self._lock:
            w = self._w[market]
            self._roll(w, self.clock.now_ms())
            return w.used

    def banned(self, market: str) -> Decision | None:
        """A 418 decision while ``market`` is banned, else None."""
        now = self.clock.now_ms()
        with self._lock:
            w = self._w[market]
            self._roll(w, now)
            if now < w.ban_until:
                left = w.ban_until - now
                return Decision(418, w.used, self.retry_after(left), w.wid * _WINDOW_MS, w.ban_until)
        return None

    def reject(self, market: str) -> Decision:
        """A forced 429 (fault knob): no weight added, counts towards a ban like a real one."""
        now = self.clock.now_ms()
        with self._lock:
            w = self._w[market]
            self._roll(w, now)
            w.after_429 += 1
            return Decision(429, w.used, self.retry_after((w.wid + 1) * _WINDOW_MS - now), w.wid * _WINDOW_MS)

    def take(self, market: str, weight: int) -> Decision:
        """Charge ``weight`` to ``market``'s window, or refuse with 429/418."""
        now = self.clock.now_ms()
        cfg = self.config
        with self._lock:
            w = self._w[market]
            self._roll(w, now)
            start = w.wid * _WINDOW_MS
            if now < w.ban_until:
                return Decision(418, w.used, self.retry_after(w.ban_until - now), start, w.ban_until)
            if w.used + weight <= self.limits[market]:
                self._charge(w, now, weight)
                if self.sliding:
                    w.after_429 = 0
                return Decision(200, w.used, None, start)
            if w.after_429 >= cfg.ban_after:
                dur = min(cfg.ban_base_s * 2**w.ban_level, cfg.ban_max_s) * 1000
                w.ban_until, w.ban_level = now + int(dur), w.ban_level + 1
                return Decision(418, w.used, self.retry_after(dur), start, w.ban_until)
            w.after_429 += 1
            wait = self._wait_ms(w, now, weight)
            if cfg.count_rejected_weight:
                self._charge(w, now, weight)
            return Decision(429, w.used, self.retry_after(wait), start)

    def take_funding(self, market: str) -> Decision:
        """USDⓈ-M fundingRate: its own 500 requests / 5 min budget (not REQUEST_WEIGHT)."""
        now = self.clock.now_ms()
        with self._lock:
            w = self._w[market]
            self._roll(w, now)
            fid = now // _FUNDING_WINDOW_MS
            if fid != w.funding_wid:
                w.funding_wid, w.funding_used = fid, 0
            if w.funding_used + 1 > self.config.funding_limit_5m:
                return Decision(429, w.used, self.retry_after((fid + 1) * _FUNDING_WINDOW_MS - now))
            w.funding_used += 1
            return Decision(200, w.used, None, w.wid * _WINDOW_MS)

    def reset(self) -> None:
        with self._lock:
            self._w = {m: _Window(self.limits[m]) for m in MARKETS}
