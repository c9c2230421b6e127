"""The simulator's virtual clock, and time parsing helpers.

Everything time-dependent in the simulator (which candles are closed, server time, websocket pushes,
archive publication, weight windows, bans) reads ``VirtualClock.now_ms()``. The clock runs at
``speed`` virtual seconds per real second from an anchor; ``speed == 0`` freezes it, which is what
most tests want (they then ``advance`` it explicitly). Setting or advancing the clock notifies
listeners so sleeping tasks (the websocket pushers) re-evaluate at once instead of oversleeping.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections.abc import Callable

from lake.errors import ValidationError

__all__ = ["MS_PER_DAY", "MS_PER_MINUTE", "VirtualClock", "day_of", "ms_to_iso", "to_ms"]

MS_PER_MINUTE = 60_000
MS_PER_DAY = 86_400_000


def to_ms(value: int | float | str | dt.datetime | dt.date) -> int:
    """Milliseconds since the epoch (UTC) from an int (ms), a datetime/date or an ISO string.

    Naive datetimes and strings without an offset are taken as UTC. ``"now"`` is the real time.
    """
    if isinstance(value, bool):
        raise ValidationError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s == "now":
            return int(time.time() * 1000)
        if s.lstrip("-").isdigit():
            return int(s)
        try:
            value = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(f"not a time: {value!r} (use ISO 8601, e.g. 2024-01-01T00:00)") from exc
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return round(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000)
    raise ValidationError(f"not a time: {value!r}")


def day_of(ms: int) -> int:
    """Day number since the epoch of a timestamp in ms."""
    return ms // MS_PER_DAY


def ms_to_iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")


class VirtualClock:
    """A clock running ``speed`` times faster than real time from a settable virtual instant.

    Thread-safe: the server runs in one thread while tests may drive the clock from another.
    """

    def __init__(self, start_ms: int, speed: float = 1.0, *, monotonic: Callable[[], float] = time.monotonic):
        if speed < 0 or not math.isfinite(speed):
            raise ValidationError(f"clock speed must be a finite number >= 0, got {speed}")
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._v0 = int(start_ms)
        self._r0 = monotonic()
        self._speed = float(speed)
        self._listeners: list[Callable[[], None]] = []

    @property
    def speed(self) -> float:
        return self._speed

    def now_ms(self) -> int:
        """The current virtual time in ms since the epoch."""
        with self._lock:
            return self._v0 + int((self._monotonic() - self._r0) * 1000.0 * self._speed)

    def set(self, ms: int | str | dt.datetime) -> int:
        """Jump to ``ms`` (any ``to_ms`` input); returns the new virtual time."""
        target = to_ms(ms)
        with self._lock:
            self._v0, self._r0 = target, self._monotonic()
        self._notify()
        return target

    def advance(self, ms: int) -> int:
        """Move the clock forward by ``ms`` virtual milliseconds; returns the new virtual time."""
        with self._lock:
            now = self._v0 + int((self._monotonic() - self._r0) * 1000.0 * self._speed)
            self._v0, self._r0 = now + int(ms), self._monotonic()
            new = self._v0
        self._notify()
        return new

    def set_speed(self, speed: float) -> None:
        """Change the speed factor without moving the virtual time."""
        if speed < 0 or not math.isfinite(speed):
            raise ValidationError(f"clock speed must be a finite number >= 0, got {speed}")
        with self._lock:
            now = self._v0 + int((self._monotonic() - self._r0) * 1000.0 * self._speed)
            self._v0, self._r0, self._speed = now, self._monotonic(), float(speed)
        self._notify()

    def real_seconds(self, virtual_ms: float) -> float:
        """Real seconds that ``virtual_ms`` of virtual time take (``inf`` when frozen)."""
        if virtual_ms <= 0:
            return 0.0
        if self._speed == 0:
            return math.inf
        return virtual_ms / 1000.0 / self._speed

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from the changing thread) whenever the clock is set, advanced or re-sped."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self) -> None:
        for cb in list(self._listeners):
            cb()

    def snapshot(self) -> dict[str, object]:
        now = self.now_ms()
        return {"now": now, "iso": ms_to_iso(now), "speed": self._speed}
