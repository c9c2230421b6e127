"""The weight governor: request-weight permits per REST market, in the exchange's own (server) time.

Binance counts ``REQUEST_WEIGHT`` per IP in fixed windows (the server-time UTC minute for the
``1M`` limit). A ``WeightGovernor`` knows each request's weight before it is sent and hands out
permits so that the requests of every ``lake`` process on this machine fill the budget without
exceeding it::

    gov = WeightGovernor("um", limit=2400, clock=clock, state_file=budget_path(state_dir, "um", url))
    permit = await gov.acquire(2)          # waits until 2 more weight fit in the current window
    ...send the request...
    gov.complete(permit, used_weight=int(resp.headers["X-MBX-USED-WEIGHT-1M"]))

How it stays under the limit
----------------------------
* **Server time.** ``ServerClock`` maps the local monotonic clock to server time:
  ``server = anchor_server + rate × (mono − anchor_mono)``. Samples come from the time endpoint
  (``ServerClock.observe``); the rate is measured between the best early and the best recent
  sample, so a simulator whose clock runs 60× faster is handled like the real exchange (rate 1; a
  measured rate consistent with 1 within its error is snapped to exactly 1). Waits are computed in
  server milliseconds and converted to real seconds with the rate. The clock reports its own
  uncertainty (half the round trip of the anchor sample plus rate error × age); the client
  re-syncs it when that grows beyond ``sync_threshold_ms``.
* **Windows a request may land in.** A request sent at estimated server time ``t`` is counted by
  the server somewhere in ``[t − u, t + u + L]`` (``u``: clock uncertainty, ``L``: a high estimate
  of the one-way latency in server ms). Its weight is reserved in *every* window that interval
  touches, so near a boundary it is charged to both windows. A response that arrives later than
  expected charges any window it may have landed in but was not charged to (late charge).
* **Budget.** A permit is granted when, for each of its windows ``W``,
  ``reserved[W] + external[W] + weight ≤ limit − reserve``. ``reserved`` is the weight all lake
  processes reserved for ``W`` (shared through the state file). ``external[W]`` is what other
  programs on this IP are expected to spend in ``W``, learnt from used-weight headers (below).
* **Other programs' weight.** A response that certainly landed in ``W`` shows, in its
  ``X-MBX-USED-WEIGHT-*`` header less all that lake processes had reserved for ``W`` when it came
  back (not when it was sent: requests granted after it may have been counted before it), a lower
  bound of what others had spent in ``W`` by then: ``seen[W]``, the highest such difference (never
  below 0), with the server time it was seen at. That alone comes too late for a program that
  spends all through the minute (a bot polling): lake fills its share at the window's start, and
  the other program's requests later in the window push the IP over the limit (429s, then, as it
  sends on, a 418 ban for the IP). So:

  - ``external[W] = max(seen[W], carry)`` when ``W − 1`` was watched: others are expected to spend
    again, from the window's start, the projected total of ``W − 1`` plus 10% (at most half of what
    that leaves) for the spread of a poller's count from one window to the next. A program that
    stopped is forgotten once a window has been watched without it: the whole budget is back one
    or two windows after it stopped.
  - The projected total of a window where others had spent ``seen`` by ``t`` into it assumes that
    pace goes on to its end (``seen × window / t``), unless that pace exceeds the budget (a burst,
    which is over: it is left what it spent), and takes at most 3/4 of what the others left.
    Without a watched predecessor (a process's first window) ``external[W]`` is ``W``'s own
    projection, with 10% more of the projected rest.
  - A window is only measured to its end if a response comes from near its end. When lake's own
    requests stopped early (its share is used up and a request waits for the next window), the
    waiting governor sends one weight-1 time request (``resync``) in the last ~5% of the window
    that it surely lands in, unless something was seen that late already; at most one per window
    for all processes sharing the state, and it may take one weight of the reserve (a window that
    lake filled to the last weight would never be measured otherwise). Its answer is also a clock
    sample, placed in its window by the server's own time stamp.
  - The observations are in the state (``external``: per window ``seen``, ``at``, ``last``,
    ``probe``), so every process leaves what any of them measured, from its first request on.
* **Across processes.** With ``state_file`` set, reservations, and pauses after a 429/418, live in
  a small JSON file (``budget-<market>-<hash>.json``, the hash of this machine and ``budget_key``:
  every host of one Binance service shares it) under ``Settings.state_path``; each reservation is
  a read-modify-write under an ``fcntl`` lock. The file is rewritten in place (the lock is on the file itself); a torn file reads as empty state,
  entries that are not lake's are dropped. It also keeps the limit in use and the server clock's
  measured rate, which a process starting later checks its first requests against. Keys a process
  does not know are written back as they were (an older lake keeps ``external`` and ignores it).
* **429 / 418.** ``pause(seconds)`` stops every permit (in all processes sharing the file) until
  the given server time; the client calls it with ``Retry-After``.

Waiters are served first-come first-served; concurrency is the caller's business (the governor
only decides *when*).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "GovernorStats",
    "Permit",
    "ServerClock",
    "StateFile",
    "WeightGovernor",
    "budget_key",
    "budget_path",
]

log = logging.getLogger("lake.ingest.governor")

MINUTE_MS = 60_000

# Other programs' weight (module docs, "Other programs' weight")
EXTERNAL_MARGIN = 0.1  # added to the previous window's projected total (at most half of what it leaves)
_PROBE_LEAD = 0.05  # the measuring time request goes in this last fraction of a window
_MIN_POSITION = 0.02  # an observation earlier in its window is projected as if made this far in
_MAX_PROJECTED = 0.75  # a projection takes at most this fraction of what the others left


# ----------------------------------------------------------------------------------------------
# Server clock
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sample:
    mono: float  # local monotonic seconds at the request's midpoint
    server_ms: float
    err_s: float  # half the round trip: the server stamp lies within mono ± err_s


class ServerClock:
    """Local monotonic clock → exchange server time (ms), with a measured rate and an error bound.

    ``observe(sent, received, server_ms)`` adds a sample from a time request (``sent``/``received``
    are ``time.monotonic()`` values around it). Until a sample exists the clock reads local wall
    time. ``rate`` is server milliseconds per real millisecond (1 for Binance; e.g. 60 for a
    simulator running 60× faster).
    """

    def __init__(self, *, max_samples: int = 64, slack_s: float = 0.002) -> None:
        self._samples: deque[_Sample] = deque(maxlen=max_samples)
        self.rate: float = 1.0
        self.rate_rel_err: float = math.inf
        self._anchor: _Sample | None = None
        self.slack_s = slack_s
        self.last_sync_mono: float = -math.inf
        self.jumps = 0
        self.prior_rel_err = 0.0  # relative error of a rate given before the first sample

    # -- samples ---------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return self._anchor is not None

    @property
    def samples(self) -> int:
        return len(self._samples)

    def observe(self, sent_mono: float, recv_mono: float, server_ms: float) -> None:
        """Add one time-endpoint sample taken between ``sent_mono`` and ``recv_mono``."""
        recv_mono = max(recv_mono, sent_mono)
        s = _Sample((sent_mono + recv_mono) / 2, float(server_ms), (recv_mono - sent_mono) / 2)
        # (only once the rate is measured: before, a sample off the prediction is as likely to show
        # the rate is not the prior's, and starting again from it would never measure the rate)
        if self._anchor is not None and self.samples >= 2 and not math.isinf(self.rate_rel_err):
            predicted = self.now_ms(s.mono)
            tolerance = 3 * self.uncertainty_ms(s.mono) + self.rate * 1000.0 * (s.err_s + 0.05) + 5.0
            if abs(s.server_ms - predicted) > tolerance:
                # the server clock jumped (a simulator's clock was set): start a new fit from here,
                # keeping the rate measured so far as the prior
                log.debug("server clock jumped by %.0f ms; re-anchoring", s.server_ms - predicted)
                self._samples.clear()
                self.jumps += 1
        self._samples.append(s)
        self.last_sync_mono = recv_mono
        self._refit()

    def _refit(self) -> None:
        samples = list(self._samples)
        if len(samples) >= 2:
            span = samples[-1].mono - samples[0].mono
            early = [x for x in samples if x.mono - samples[0].mono <= span / 2]
            late = [x for x in samples[-8:] if x.mono - samples[0].mono > span / 2] or samples[-1:]
            a = min(early, key=lambda x: x.err_s)
            b = min(late, key=lambda x: x.err_s)
            if b.mono - a.mono > 0:
                base = b.mono - a.mono
                measured = (b.server_ms - a.server_ms) / (base * 1000.0)
                rel_err = (a.err_s + b.err_s + 0.0005) / base
                if b.server_ms - a.server_ms <= 1.0 and base >= 0.05:
                    # a frozen (simulator) clock: it only moves when someone moves it
                    self.rate, self.rate_rel_err = max(measured, 1e-6), rel_err
                elif rel_err > 0.1 and abs(measured - self.rate) <= 3 * rel_err * max(measured, self.rate):
                    # baseline too short for the round trips to tell the rate from the prior: keep
                    # the prior (but a measurement that rules it out, such as a simulator running
                    # 20x timed by slow round trips on a loaded machine, is taken, with its error:
                    # the prior of real time would misplace every window by more each second)
                    pass
                else:
                    if abs(measured - 1.0) <= 3 * rel_err * max(measured, 1.0) + 0.02:
                        self.rate, self.rate_rel_err = 1.0, min(rel_err, 1.0)
                    else:
                        self.rate, self.rate_rel_err = measured, rel_err
        # anchor: the recent sample whose projection to now is most trustworthy
        recent = list(self._samples)[-4:]
        now = time.monotonic()
        rel = 0.0 if math.isinf(self.rate_rel_err) else self.rate_rel_err
        self._anchor = min(recent, key=lambda x: x.err_s + rel * max(0.0, now - x.mono))

    # -- reading ---------------------------------------------------------------------------------
    def now_ms(self, mono: float | None = None) -> float:
        """Estimated server time (ms) at local monotonic time ``mono`` (default: now)."""
        m = time.monotonic() if mono is None else mono
        if self._anchor is None:
            return time.time() * 1000.0 - (time.monotonic() - m) * 1000.0
        return self._anchor.server_ms + self.rate * (m - self._anchor.mono) * 1000.0

    def uncertainty_ms(self, mono: float | None = None) -> float:
        """A bound on |estimated − true| server time, in server ms."""
        if self._anchor is None:
            return 5_000.0
        m = time.monotonic() if mono is None else mono
        rel = 0.0 if self.samples < 2 or math.isinf(self.rate_rel_err) else self.rate_rel_err
        if self.samples < 2:
            # single sample: rate assumed 1 (drift is caught by the next sync), or taken from
            # another process's clock (``WeightGovernor.adopt_shared_clock_rate``) with its error
            rel = self.prior_rel_err
        age = max(0.0, m - self._anchor.mono)
        return self.rate * 1000.0 * (self._anchor.err_s + self.slack_s + rel * age)

    def best_uncertainty_ms(self) -> float:
        """The smallest uncertainty a fresh sample could give (the sync threshold's floor)."""
        if not self._samples:
            return 0.0
        return self.rate * 1000.0 * (min(s.err_s for s in self._samples) + self.slack_s)

    def real_seconds(self, server_ms: float) -> float:
        """Real seconds that ``server_ms`` of server time take."""
        return max(0.0, server_ms) / (self.rate * 1000.0)

    def needs_sync(self, threshold_ms: float, *, max_age_s: float = 30.0, min_gap_s: float = 0.05) -> bool:
        """Whether a fresh time sample would be worth its weight now."""
        if self.samples < 2:
            return True
        now = time.monotonic()
        if now - self.last_sync_mono < min_gap_s:
            return False
        if now - self.last_sync_mono > max_age_s:
            return True
        return self.uncertainty_ms(now) > max(threshold_ms, 2 * self.best_uncertainty_ms())


# ----------------------------------------------------------------------------------------------
# Budget state (shared across processes through a locked file)
# ----------------------------------------------------------------------------------------------


# Binance's alternative hosts of one service: the exchange counts weight and connection attempts per
# IP, so a process on api1.binance.com and one on api.binance.com spend one budget. (Whether the
# market-data-only hosts share spot's is UNVERIFIED: sharing is the side that cannot earn a ban.)
_SAME_BUDGET = {
    **dict.fromkeys(
        ("api.binance.com", "api1.binance.com", "api2.binance.com", "api3.binance.com",
         "api4.binance.com", "api-gcp.binance.com", "data-api.binance.vision"),
        "binance-spot-rest",
    ),
    **dict.fromkeys(("stream.binance.com", "data-stream.binance.vision"), "binance-spot-ws"),
    "fapi.binance.com": "binance-um-rest",
    "fstream.binance.com": "binance-um-ws",
    "dapi.binance.com": "binance-cm-rest",
    "dstream.binance.com": "binance-cm-ws",
}  # fmt: skip


def budget_key(base_url: str) -> str:
    """What a budget is shared by: the Binance service behind ``base_url`` (any of its hosts, ports,
    schemes and paths), else the URL itself (a simulator, a proxy)."""
    url = base_url.strip().rstrip("/")
    host = (urlsplit(url).hostname or "").lower()
    return _SAME_BUDGET.get(host, url)


def budget_path(state_dir: str | os.PathLike[str], name: str, base_url: str) -> Path:
    """``<state_dir>/budget-<name>-<hash>.json``; the hash covers this host and ``budget_key(base_url)``.

    Processes on one machine talking to the same service share a budget (the exchange counts per
    IP), whichever of its hosts each uses; a different service or URL (e.g. a simulator) gets its
    own file.
    """
    digest = hashlib.sha256(f"{socket.gethostname()}|{budget_key(base_url)}".encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return Path(state_dir) / f"budget-{safe}-{digest}.json"


LEARNED_TTL_S = 86_400.0  # how long a limit learned from a 429 overrides exchangeInfo
_MAX_PAUSE_S = 3 * 86_400.0  # Binance's longest ban; a pause said to last longer is not one lake wrote


def _sanitise(state: dict[str, Any]) -> None:
    """Make a parsed state usable: a file that parses but is not what lake writes (another program's,
    hand-edited, damaged) must not make every lake process on the host fail, or wait for ever, on it."""
    windows = state.get("windows")
    state["windows"] = (
        {
            k: int(v)
            for k, v in windows.items()
            if isinstance(k, str)
            and k.lstrip("-").isdigit()
            and isinstance(v, (int, float))
            and math.isfinite(v)
        }
        if isinstance(windows, dict)
        else {}
    )
    paused = state.get("paused_until", 0.0)
    ok = isinstance(paused, (int, float)) and math.isfinite(paused) and paused - time.time() <= _MAX_PAUSE_S
    state["paused_until"] = float(paused) if ok else 0.0
    # (fields of an entry are read one by one (``_observed``): a newer lake's extra fields survive)
    external = state.get("external")
    state["external"] = (
        {
            k: v
            for k, v in external.items()
            if isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, dict)
        }
        if isinstance(external, dict)
        else {}
    )


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _observed(entry: Any) -> tuple[float, float, float] | None:
    """``(seen, at, last)`` of a window's entry under ``external`` if anything was observed in it:
    the most weight others had spent (by server ms ``at`` into the window), and the latest
    observation (ms into the window)."""
    if not isinstance(entry, dict):
        return None
    seen, at, last = _num(entry.get("seen")), _num(entry.get("at")), _num(entry.get("last"))
    if seen is None or at is None or last is None:
        return None
    return max(0.0, seen), max(0.0, at), max(0.0, last)


def _fresh_limit(state: dict[str, Any], key: str, window_ms: int) -> int | None:
    """The limit recorded under ``key`` (``limit``: adopted by a process; ``enforced_limit``: shown
    by a 429) for windows of ``window_ms``, if recorded within ``LEARNED_TTL_S``."""
    got = state.get(key)
    if not isinstance(got, dict) or got.get("window_ms") != window_ms:
        return None
    at, limit = got.get("at"), got.get("limit")
    fresh = isinstance(at, (int, float)) and time.time() - at < LEARNED_TTL_S
    return limit if fresh and isinstance(limit, int) and limit > 0 else None


class StateFile:
    """A small JSON document shared by processes, in memory or in a locked file: the governor's window
    reservations and pause, the websocket connection attempts (``lake.live.ws.ConnectLimiter``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mem: dict[str, Any] = {"windows": {}, "paused_until": 0.0, "external": {}}  # (wall-clock s)
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Yield the state for a read-modify-write; written back when the block exits."""
        if self._fd is None:
            yield self._mem
            return
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(fd, 1 << 16, 0)
            try:
                state = json.loads(raw) if raw else {}
                if not isinstance(state, dict):
                    state = {}
            except ValueError:
                state = {}
            _sanitise(state)
            before = json.dumps(state, sort_keys=True)
            yield state
            after = json.dumps(state, sort_keys=True)
            if after != before:
                data = after.encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------
# Governor
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Permit:
    """One granted reservation: ``weight`` charged to the server windows ``windows``.

    ``reserved_after`` is the total reserved in each of those windows right after this permit.
    """

    weight: int
    windows: tuple[int, ...]
    sent_mono: float
    granted_server_ms: float
    reserved_after: tuple[int, ...] = ()


@dataclass
class GovernorStats:
    """Counters for progress displays and benchmarks."""

    permits: int = 0
    weight: int = 0
    waited_s: float = 0.0
    late_charges: int = 0
    pauses: int = 0
    max_observed: int = 0  # highest used-weight header seen
    probes: int = 0  # time requests sent near a window's end to measure others' use of it
    observed: dict[int, int] = field(default_factory=dict)  # window → highest header seen
    started_server_ms: float | None = None
    last_server_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "permits": self.permits,
            "weight": self.weight,
            "waited_s": round(self.waited_s, 3),
            "late_charges": self.late_charges,
            "pauses": self.pauses,
            "max_observed": self.max_observed,
            "probes": self.probes,
        }


class WeightGovernor:
    """Permits for one weight budget (one REST market, or a special per-endpoint limit).

    ``limit`` per ``window_ms`` of server time, minus ``reserve`` (an absolute weight, or a fraction
    of the limit when < 1) kept free for traffic the governor cannot see coming. ``clock`` is shared
    with the client that feeds it samples. ``latency_s`` is the initial guess of one-way latency;
    it adapts to observed round trips.
    """

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        window_ms: int = MINUTE_MS,
        reserve: float = 0.01,
        clock: ServerClock | None = None,
        state_file: str | os.PathLike[str] | None = None,
        latency_s: float = 0.05,
    ) -> None:
        self.name = name
        self.clock = clock or ServerClock()
        self.window_ms = int(window_ms)
        self.limit = int(limit)
        self.reserve = reserve
        self._state = StateFile(Path(state_file) if state_file is not None else None)
        self._fifo = asyncio.Lock()
        self._rtt_avg = 2 * latency_s
        self._rtt_dev = latency_s
        self._paused_cache = 0.0  # wall-clock (time.time()) deadline of the last pause seen
        self._last_resync_try = -math.inf
        self.stats = GovernorStats()
        # Set by the client: a time request sent outside the permit queue (the governor reserves its
        # weight of 1 first) when a wait has lasted ``resync_after_s`` real seconds without a fresh
        # clock sample.
        self.resync: Callable[[], Awaitable[object]] | None = None
        self.resync_after_s = 1.0
        self.max_sleep_s = 1.0
        # Until its own exchangeInfo answer, a process joining others on the state file checks its
        # requests against the limit they adopted (``set_limit``), not the built-in default.
        with self._state.edit() as st:
            known = _fresh_limit(st, "limit", self.window_ms)
            learned = _fresh_limit(st, "enforced_limit", self.window_ms)
        if known is not None:
            self.limit = known
        if learned is not None and learned < self.limit:
            self.limit = learned

    # -- configuration ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path | None:
        return self._state.path

    @property
    def budget(self) -> int:
        """The most weight the governor lets all processes use in one window."""
        res = self.reserve * self.limit if self.reserve < 1 else self.reserve
        return max(1, self.limit - math.ceil(res))

    def set_limit(self, limit: int, window_ms: int | None = None) -> None:
        """Adopt the limit read from exchangeInfo ``rateLimits``, unless a 429 showed (in any process
        sharing the state, within ``LEARNED_TTL_S``) that the server enforces less (``learn_limit``)."""
        if limit <= 0:
            raise ValueError(f"weight limit must be positive, got {limit}")
        with self._state.edit() as st:  # (one locked read-modify-write)
            learned = _fresh_limit(st, "enforced_limit", window_ms or self.window_ms)
            if learned is not None and learned < limit:
                log.info(
                    "%s: exchangeInfo says %d weight per window, a 429 showed %d: keeping %d",
                    self.name,
                    limit,
                    learned,
                    learned,
                )
                limit = learned
            if limit != self.limit or (window_ms and window_ms != self.window_ms):
                log.debug("%s: weight limit %s per %s ms", self.name, limit, window_ms or self.window_ms)
            self.limit = int(limit)
            if window_ms:
                self.window_ms = int(window_ms)
            if self._state.path is not None:
                # for processes that start later: they check their first requests against it
                st["limit"] = {"limit": self.limit, "window_ms": self.window_ms, "at": time.time()}

    def learn_limit(self, limit: int) -> None:
        """Adopt ``limit``, which the server enforces (its 429 said so) below what exchangeInfo
        advertised (COIN-M's documented limit is 6000 in one place and 2400 in another), and record
        it in the shared state, so that other processes and later runs start from it."""
        with self._state.edit() as st:
            st["enforced_limit"] = {"limit": int(limit), "window_ms": self.window_ms, "at": time.time()}
        self.set_limit(limit)

    def adopt_shared_clock_rate(self) -> None:
        """Give a clock without samples the rate (and its error) a process sharing the state measured
        lately: with one sample of its own it would extrapolate at real time (and a process joining
        others while a window is full would wait for a simulator's window as if it lasted a minute)."""
        with self._state.edit() as st:
            got = st.get("clock_rate")
        if self.clock.synced or not isinstance(got, dict):
            return
        try:
            rate, rel_err, at = float(got["rate"]), float(got["rel_err"]), float(got["at"])
        except (KeyError, TypeError, ValueError):
            return
        if 0 < rate < math.inf and 0 <= rel_err <= 0.1 and time.time() - at < LEARNED_TTL_S:
            self.clock.rate, self.clock.prior_rel_err = rate, rel_err

    def share_clock_rate(self) -> None:
        """Record the clock's rate for processes that start later, once it is measured."""
        c = self.clock
        if self._state.path is not None and c.rate_rel_err <= 0.1:
            with self._state.edit() as st:
                st["clock_rate"] = {"rate": c.rate, "rel_err": c.rate_rel_err, "at": time.time()}

    def close(self) -> None:
        self._state.close()

    # -- time helpers ----------------------------------------------------------------------------
    def window_of(self, server_ms: float) -> int:
        return int(server_ms // self.window_ms)

    def latency_ms(self) -> float:
        """A high estimate of one-way latency, in server ms."""
        one_way_s = min(2.0, (self._rtt_avg + 4 * self._rtt_dev) / 2 + 0.001)
        return self.clock.rate * 1000.0 * one_way_s

    def _span(self, now: float, u: float) -> tuple[int, ...]:
        lo = self.window_of(now - u)
        hi = self.window_of(now + u + self.latency_ms())
        return tuple(range(lo, hi + 1))

    # -- permits ---------------------------------------------------------------------------------
    async def acquire(self, weight: int) -> Permit:
        """Wait until ``weight`` fits in every window the request may land in; reserve it there."""
        if weight <= 0:
            raise ValueError(f"weight must be positive, got {weight}")
        weight = min(weight, self.budget)  # a request heavier than the budget still goes, alone
        t0 = time.monotonic()
        async with self._fifo:
            while True:
                mono = time.monotonic()
                now = self.clock.now_ms(mono)
                u = self.clock.uncertainty_ms(mono)
                windows = self._span(now, u)
                granted, resume_at, after = self._try_reserve(windows, weight, now, u)
                if granted:
                    if self.stats.started_server_ms is None:
                        self.stats.started_server_ms = now
                    self.stats.permits += 1
                    self.stats.weight += weight
                    self.stats.waited_s += time.monotonic() - t0
                    return Permit(weight, windows, time.monotonic(), now, after)
                delay = self.clock.real_seconds(resume_at - now)
                if self.resync is not None and self.paused_for() <= 0:
                    probe = self._probe(now, u)
                    if probe is not None and probe[0]:
                        self.stats.weight += 1
                        self.stats.probes += 1
                        self._last_resync_try = time.monotonic()
                        await self._resync_now()
                        continue
                    if probe is not None:
                        delay = min(delay, self.clock.real_seconds(probe[1] - now))
                mono = time.monotonic()
                if (
                    self.resync is not None
                    and self.paused_for() <= 0
                    and mono - self.clock.last_sync_mono > self.resync_after_s
                    and mono - self._last_resync_try > self.resync_after_s
                    and mono - t0 > self.resync_after_s
                ):
                    self._last_resync_try = mono
                    # Waiting long on an extrapolated clock (a frozen or jumped simulator clock, a
                    # sleeping laptop): look at the server's clock again before trusting it. The
                    # time request weighs 1 and needs room like any other: most long waits are for
                    # a full window to end, and requests sent into it earn 429s, then a 418 ban.
                    now = self.clock.now_ms()
                    u = self.clock.uncertainty_ms()
                    if not self._try_reserve(self._span(now, u), 1, now, u)[0]:
                        await asyncio.sleep(min(max(delay, 0.0005), self.max_sleep_s))
                        continue
                    self.stats.weight += 1
                    await self._resync_now()
                    continue
                await asyncio.sleep(min(max(delay, 0.0005), self.max_sleep_s))

    async def _resync_now(self) -> None:
        assert self.resync is not None
        try:
            await self.resync()
        except Exception as exc:  # the wait goes on; the request path reports errors
            log.debug("%s: time request while waiting failed: %r", self.name, exc)

    def _try_reserve(
        self, windows: tuple[int, ...], weight: int, now: float, u: float
    ) -> tuple[bool, float, tuple[int, ...]]:
        """Reserve ``weight`` in ``windows`` if it fits; else say when to try again (server ms)."""
        budget = self.budget
        with self._state.edit() as st:
            paused = float(st.get("paused_until", 0.0))
            self._paused_cache = paused
            left = paused - time.time()
            if left > 0:
                # the pause is a real-time deadline (shared by every process on this host)
                return False, now + left * 1000.0 * self.clock.rate, ()
            res: dict[str, int] = st["windows"]
            ext = st["external"]
            for w in windows:
                used = int(res.get(str(w), 0)) + self._expected(ext, w)
                if used + weight > budget:
                    # the request may land in a full window: wait until it certainly cannot
                    return False, (w + 1) * self.window_ms + u + 1.0, ()
            after = []
            for w in windows:
                res[str(w)] = int(res.get(str(w), 0)) + weight
                after.append(res[str(w)])
            if self.clock.synced:
                # (not before the first clock sample: the windows are then the LOCAL clock's, which
                # may be days ahead of the server's, and this would drop every other process's
                # reservations of the server's current window)
                oldest = windows[0] - 2
                for key in [k for k in res if int(k) < oldest]:
                    del res[key]
        return True, now, tuple(after)

    def charge(self, weight: int) -> None:
        """Add ``weight`` to the current window without asking (for unguarded requests)."""
        now = self.clock.now_ms()
        u = self.clock.uncertainty_ms()
        with self._state.edit() as st:
            res = st["windows"]
            for w in self._span(now, u):
                res[str(w)] = int(res.get(str(w), 0)) + weight
        self.stats.weight += weight

    def complete(self, permit: Permit, used_weight: int | None = None) -> None:
        """Record a finished request: its round trip, and the used-weight header if it had one."""
        recv = time.monotonic()
        rtt = recv - permit.sent_mono
        self._rtt_avg += 0.1 * (rtt - self._rtt_avg)
        self._rtt_dev += 0.1 * (abs(rtt - self._rtt_avg) - self._rtt_dev)
        sent_server = permit.granted_server_ms
        recv_server = self.clock.now_ms(recv)
        u = self.clock.uncertainty_ms(recv)
        lo, hi = self.window_of(sent_server - u), self.window_of(recv_server + u)
        missing = [w for w in range(lo, hi + 1) if w not in permit.windows and w > permit.windows[-1]]
        if missing:
            # slower than expected: it may have landed in a window it was not charged to
            self.stats.late_charges += 1
            with self._state.edit() as st:
                res = st["windows"]
                for w in missing:
                    res[str(w)] = int(res.get(str(w), 0)) + permit.weight
        self.stats.last_server_ms = recv_server
        if used_weight is None:
            return
        self.stats.max_observed = max(self.stats.max_observed, used_weight)
        if lo == hi and self.clock.synced:
            prev = self.stats.observed.get(lo, 0)
            self.stats.observed[lo] = max(prev, used_weight)
            # (counted at sent − u at the earliest: an early time projects the others' pace high)
            self._note_external(lo, used_weight, sent_server - u - lo * self.window_ms)

    def observe(self, used_weight: int, server_ms: float | None = None) -> None:
        """Record a used-weight header not tied to a permit (e.g. the answer to a bare time request).

        ``server_ms``: the server's time stamp in that answer, which places it in its window exactly;
        without it the clock places it, and it counts only if it certainly fell in one window."""
        self.stats.max_observed = max(self.stats.max_observed, used_weight)
        if not self.clock.synced:
            return
        if server_ms is not None:
            w = self.window_of(server_ms)
            at = server_ms - w * self.window_ms
        else:
            now, u = self.clock.now_ms(), self.clock.uncertainty_ms()
            w = self.window_of(now - u)
            if w != self.window_of(now + u):
                return
            at = now - u - w * self.window_ms
        self._note_external(w, used_weight, at)

    # -- other programs' weight ------------------------------------------------------------------
    def _note_external(self, window: int, used_weight: int, at: float) -> None:
        """The IP had used ``used_weight`` of ``window`` by ``at`` server ms into it."""
        at = round(min(max(0.0, at), float(self.window_ms)))
        current = self.window_of(self.clock.now_ms())
        with self._state.edit() as st:
            # Less what lake reserved there by now, not by the request's permit: requests granted
            # after it may have been counted before it, and taken for others' weight that spurious
            # excess would be projected over the window and carried into the next one.
            base = int(st["windows"].get(str(window), 0))
            ext = st["external"]
            entry = ext.setdefault(str(window), {})
            value = max(0, int(used_weight) - base)
            old = _observed(entry)
            if old is None or value > old[0]:
                entry["seen"], entry["at"] = value, at
            elif value == old[0] and at > old[1]:
                entry["at"] = at  # (as much, later: a slower pace)
            entry["last"] = max(int(old[2]) if old else 0, at)
            for key in [k for k in ext if not current - 3 <= int(k) <= current + 2]:
                del ext[key]

    def _projected(self, seen: float, at: float, margin: float = 0.0) -> float:
        """Others' total in a window of which they had spent ``seen`` by ``at`` ms into it, if their
        pace so far goes on (plus ``margin`` of the rest) to the window's end."""
        wms = self.window_ms
        at = max(at, _MIN_POSITION * wms)
        if seen <= 0 or at >= wms:
            return seen
        rest = seen * (wms - at) / at
        left = self.budget - seen
        if seen + rest > self.budget:
            # no program can keep up a pace beyond the limit: that was a burst, and it is over (also
            # what another program spending much at a window's start looks like: it is left what it
            # spent, not its pace)
            return seen
        return seen + min((1.0 + margin) * rest, _MAX_PROJECTED * left)

    def _expected(self, ext: dict[str, Any], window: int) -> int:
        """Weight other programs are expected to use in ``window`` (module docs)."""
        cur = _observed(ext.get(str(window)))
        seen = cur[0] if cur is not None else 0.0
        prev = _observed(ext.get(str(window - 1)))
        if prev is not None:
            # they spend from the window's start: leave them what they spent in the last one
            total = self._projected(prev[0], prev[1])
            total += min(EXTERNAL_MARGIN * total, max(0.0, self.budget - total) / 2)
        elif cur is not None:
            total = self._projected(cur[0], cur[1], EXTERNAL_MARGIN)
        else:
            return 0
        return math.ceil(max(seen, total) - 1e-9)

    def external(self, window: int | None = None) -> int:
        """Weight other programs on the IP are expected to use in ``window`` (default: current)."""
        w = self.window_of(self.clock.now_ms()) if window is None else window
        with self._state.edit() as st:
            return self._expected(st["external"], w)

    def _probe(self, now: float, u: float) -> tuple[bool, float] | None:
        """The time request that measures others' use of the current window to its end, for a waiter
        (module docs): None when none is wanted; ``(False, t)`` to wake up at server ms ``t`` for it;
        ``(True, now)`` when it is claimed (for every process sharing the state) and its weight
        reserved, to be sent at once."""
        wms = self.window_ms
        w = self.window_of(now)
        start = w * wms
        latest = start + wms - u - self.latency_ms() - 1.0  # it lands in ``w`` for certain until then
        earliest = latest - _PROBE_LEAD * wms
        if self.clock.samples < 2 or latest - start < wms / 2 or now > latest:
            return None  # (a clock too uncertain to place it late in the window for certain)
        # it may take one weight of the reserve: were it to wait for room, a window that lake's
        # requests fill to the last weight (no external use, or as much as expected) was never seen
        cap = self.budget + (1 if self.limit > self.budget else 0)
        with self._state.edit() as st:
            ext = st["external"]
            entry = ext.get(str(w))
            if isinstance(entry, dict):
                got = _observed(entry)
                if _num(entry.get("probe")) is not None or (got is not None and got[2] >= earliest - start):
                    return None  # measured (or being measured) late enough already
            if now < earliest:
                return False, earliest
            res = st["windows"]
            if int(res.get(str(w), 0)) + self._expected(ext, w) + 1 > cap:
                return None
            for x in self._span(now, u):
                res[str(x)] = int(res.get(str(x), 0)) + 1
            ext.setdefault(str(w), {})["probe"] = round(now - start)
        return True, now

    def pause(self, seconds: float, reason: str = "") -> float:
        """Stop granting permits (in every process sharing the state) for ``seconds`` of REAL time.

        The deadline is kept in wall-clock time (the state file is per host), so it survives clock
        re-syncs and jumps. Returns the deadline (``time.time()`` seconds). Pauses never shorten an
        existing pause.
        """
        until = time.time() + max(0.0, seconds)
        with self._state.edit() as st:
            until = max(until, float(st.get("paused_until", 0.0)))
            st["paused_until"] = until
        self._paused_cache = until
        self.stats.pauses += 1
        log.debug("%s: paused %.2fs (%s)", self.name, seconds, reason)
        return until

    def paused_for(self) -> float:
        """Real seconds until permits resume (0 when not paused), from the last state read."""
        return max(0.0, self._paused_cache - time.time())

    def reserved(self, window: int | None = None) -> int:
        """Weight reserved (by all processes sharing the state) in ``window`` (default: current)."""
        w = self.window_of(self.clock.now_ms()) if window is None else window
        with self._state.edit() as st:
            return int(st["windows"].get(str(w), 0))

    def used_now(self) -> int:
        """Best knowledge of the weight used in the current window."""
        w = self.window_of(self.clock.now_ms())
        with self._state.edit() as st:
            return int(st["windows"].get(str(w), 0)) + self._expected(st["external"], w)
