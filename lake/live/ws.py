"""Websocket side of the live appender: kline streams sharded over connections, kept alive.

Client library: ``websockets`` (asyncio implementation, ≥ 14). It answers the server's pings by
itself (Binance drops a client that does not pong), sends its own keepalive pings to notice a dead
peer, makes ``recv`` cancellation-safe and applies back-pressure through a bounded frame queue;
aiohttp's client would also do, but ``websockets`` keeps the REST session and the streams apart
and is what BMAC used.

* **Shards.** A feed's streams (``btcusdt@kline_5m``) are split over connections of at most the
  market's stream cap (1024; COIN-M 200; lower if the server says so, see *Stream cap*). A
  connection opens the combined endpoint ``<ws_base>/stream?streams=a/b/…`` with the first
  ``url_streams`` streams in the URL and subscribes the rest with ``SUBSCRIBE`` messages
  (≤ ``subscribe_batch`` streams each), paced under the market's incoming-message limit (5/s
  spot, 10/s futures, counting pings).
* **Changes.** New listings are subscribed on a connection with room (else a new one); delisted
  symbols are unsubscribed. Each shard keeps the set it *should* carry, so a reconnect restores it.
* **Reconnects.** A dropped connection reconnects after a capped, jittered exponential backoff,
  reset only by a connection that delivered data and stayed up ``stable_s`` (a server that accepts
  and soon closes again is not hammered); a handshake refused with 429/418 waits its
  ``Retry-After`` (at least a minute). Connection attempts per market are limited (300 per 5 min
  per IP on spot) in a file of the state directory, shared by the processes using it. Before the 24 h connection lifetime ends, a connection is replaced
  proactively: the new one is opened and subscribed, then the old one is read for ``overlap_s``
  more before it is closed, so nothing is missed (duplicates are dropped by the appender). A ``serverShutdown`` event (spot sends it before
  the server goes away) triggers the same replacement at once; the event is not passed on.
  Whatever is lost while disconnected is repaired over REST by the period check.
* **Refusals.** Every control message is remembered until its reply (matched by ``id``; an error
  reply without one, the shape of the spot docs' examples, answers the oldest request still
  unanswered on its connection: the server answers in order). A ``SUBSCRIBE`` refused for naming an
  invalid stream (``Invalid request: invalid stream``) is split in halves, each subscribed on its own
  (now, and on every new connection until accepted; never in the URL), down to the one stream the
  server refuses, which is then dropped from the shard and logged as an error (``rejected``), while
  the shard's other streams stay live. Binance accepts a well-formed stream of an unknown symbol, so
  such a stream is one the server cannot parse and asking again changes nothing. Any other refusal
  (too many streams, which also lowers the cap, see below; an unknown method, …) is logged as an
  error naming the request and the server's words, and the shard reconnects with the backoff; so
  does a connection the server closed with a policy code (1008), and neither resets the backoff
  however long the connection lived.
* **Stream cap.** Binance has changed its per-connection cap before (200 → 1024 on 2025-07-02) and
  COIN-M's 200 is from a mirrored page: the server may allow fewer streams than the plan assumes.
  How it says so is UNVERIFIED, so both shapes count: a 1008 close whose reason speaks of too many
  streams, and a refused ``SUBSCRIBE`` that says so. A 1008 about anything else (``too many
  requests`` is the message rate, a pacing matter) never lowers the cap. From the refused
  connection's peak stream count the shard reports what should fit, ``max(taken, peak // 2)``
  (taken: the URL's streams and those of acknowledged SUBSCRIBEs, once the server answered anything;
  always below the peak), to its pool, which lowers its cap for the rest of the run, logs the new cap
  once as a warning and moves the streams of every connection over it to new connections of
  near-equal size, leaving the others alone; the refused shard then reconnects (with the backoff
  above) carrying its share. Halving reaches any real cap in a few rounds of a few connection
  attempts each; what is dark meanwhile is repaired over REST. A shard without a pool only backs off.
* **Learned caps across runs.** A ``CapMemory`` keeps each lowering in a small JSON file of the
  state directory (``lake.live.runner.ws_cap_path``: named like the REST weight budget's, per market
  and Binance service), per websocket URL, so the next run starts at it instead of being refused
  again until it re-learns it. An entry is forgotten after ``CAP_MEMORY_TTL_S`` (a day): Binance
  raises caps too (200 → 1024), and a day-old cap costs a few refused attempts to learn again, while
  one kept for good would hold every later run below the server's real cap. It is used only for the
  URL it was learned from (another endpoint may allow more), never above the cap lake assumes, and
  not at all when the user sets one (``ws_stream_cap`` in the settings). A file that cannot be read
  or is not lake's is ignored with a warning; one that cannot be written only costs the next run
  its re-learning.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from lake.ingest.governor import StateFile
from lake.net import proxy_from_env
from lake.store.fs import write_file_atomic

__all__ = [
    "CAP_MEMORY_TTL_S",
    "CapMemory",
    "ConnectLimiter",
    "LearnedCap",
    "ShardPlan",
    "ShardStats",
    "WsPool",
    "WsShard",
    "about_stream_cap",
    "backoff_delay",
    "stream_name",
]

log = logging.getLogger("lake.live.ws")

OnMessage = Callable[[str | bytes, float], object]

# The server's words for a connection over its stream cap (a close reason or a refusal): UNVERIFIED,
# so anything that speaks of too many streams or subscriptions, a stream limit or a maximum of them.
# Not "too many requests" (the message rate) nor "invalid stream" (one bad name).
_CAP_WORDS = re.compile(
    r"too many (?:streams|subscriptions)|(?:stream|subscription)s? (?:limit|cap)"
    r"|(?:exceed|max)\w*\b.*\b(?:streams|subscriptions)\b",
    re.IGNORECASE,
)


def about_stream_cap(said: str) -> bool:
    """Whether the server's words (a 1008 close reason, a refusal) say a connection has too many streams."""
    return _CAP_WORDS.search(said) is not None


def stream_name(symbol: str, interval: str) -> str:
    """Binance kline stream name: ``btcusdt@kline_5m`` (symbols are lower case in stream names)."""
    return f"{symbol.lower()}@kline_{interval}"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with jitter: uniform in [d/2, d], d = min(cap, base·2^(attempt−1))."""
    d = min(cap, base * (2 ** max(0, attempt - 1)))
    r = rng or random
    return d / 2 + r.random() * d / 2


class ShardPlan:
    """Which streams each connection should carry (pure bookkeeping, no I/O).

    ``add`` fills existing shards up to ``cap`` before opening new ones; ``remove`` drops streams
    from whichever shard holds them. Both return ``{shard index: [streams]}`` to (un)subscribe.
    """

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("stream cap must be >= 1")
        self.cap = cap
        self.shards: list[set[str]] = []

    @classmethod
    def initial(cls, streams: Iterable[str], cap: int) -> ShardPlan:
        """Balanced shards: ceil(n/cap) connections of near-equal size."""
        plan = cls(cap)
        ordered = sorted(set(streams))
        if not ordered:
            return plan
        n = -(-len(ordered) // cap)
        size = -(-len(ordered) // n)
        plan.shards = [set(ordered[i : i + size]) for i in range(0, len(ordered), size)]
        return plan

    @property
    def streams(self) -> set[str]:
        return set().union(*self.shards) if self.shards else set()

    def where(self, stream: str) -> int | None:
        for i, s in enumerate(self.shards):
            if stream in s:
                return i
        return None

    def add(self, streams: Iterable[str]) -> dict[int, list[str]]:
        have = self.streams
        out: dict[int, list[str]] = {}
        for s in sorted(set(streams) - have):
            idx = next((i for i, sh in enumerate(self.shards) if len(sh) < self.cap), None)
            if idx is None:
                self.shards.append(set())
                idx = len(self.shards) - 1
            self.shards[idx].add(s)
            out.setdefault(idx, []).append(s)
        return out

    def remove(self, streams: Iterable[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for s in sorted(set(streams)):
            idx = self.where(s)
            if idx is not None:
                self.shards[idx].discard(s)
                out.setdefault(idx, []).append(s)
        return out


class ConnectLimiter:
    """At most ``limit`` connection attempts per ``window_s`` (shared by a market's shards).

    With ``state_file`` the attempts are counted in that file (wall-clock times; a
    ``lake.ingest.governor.StateFile``, like the REST weight budget), so every process using it
    shares the limit: the exchange counts attempts per IP (300 per 5 min on spot), and two
    ``lake live`` processes (one per interval, say) would otherwise each allow the full limit. A
    file that cannot be used (another user's, a full disk) falls back to counting in this process.
    """

    def __init__(self, limit: int = 250, window_s: float = 300.0, state_file: Path | None = None) -> None:
        self.limit = limit
        self.window_s = window_s
        self.state_file = state_file
        self._times: deque[float] = deque()
        self._shared: StateFile | None = None
        if state_file is not None:
            try:
                self._shared = StateFile(state_file)
            except OSError as exc:
                self._unusable(exc)

    def _unusable(self, exc: OSError) -> None:
        log.warning(
            "websocket attempt counter %s unusable (%s); counting in this process", self.state_file, exc
        )
        self.state_file = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()

    async def acquire(self) -> None:
        while True:
            if self._shared is None:
                wait = self._try()
            else:
                try:
                    wait = await asyncio.to_thread(self._try_shared, self._shared)
                except OSError as exc:
                    self._unusable(exc)
                    continue
            if wait <= 0:
                return
            log.warning("websocket connection attempts at the limit; waiting %.1fs", wait)
            await asyncio.sleep(wait)

    def _try(self) -> float:
        """Take an attempt (→ 0) or say how long to wait."""
        now = time.monotonic()
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        if len(self._times) < self.limit:
            self._times.append(now)
            return 0.0
        return self.window_s - (now - self._times[0]) + 0.01

    def _try_shared(self, shared: StateFile) -> float:
        with shared.edit() as st:
            now = time.time()
            got = st.get("ws_attempts")
            times = sorted(
                float(t)
                for t in (got if isinstance(got, list) else [])
                if isinstance(t, int | float) and now - t <= self.window_s
            )
            st["ws_attempts"] = times
            if len(times) >= self.limit:
                return self.window_s - (now - times[0]) + 0.01
            times.append(now)
            return 0.0


CAP_MEMORY_TTL_S = 86_400.0  # how long a stream cap learned from a server outlives its run
# An entry dated further ahead than this was not written by this machine's clock as it is now (the
# clock was set back, a copied file): trusting it would keep the cap for longer than a day.
_CAP_CLOCK_SLACK_S = 600.0


@dataclass(frozen=True)
class LearnedCap:
    """A stream cap a server taught (``at``: wall-clock seconds; ``said``: its words)."""

    cap: int
    at: float
    said: str


def _learned(entry: object) -> LearnedCap | None:
    if not isinstance(entry, dict):
        return None
    cap, at, said = entry.get("cap"), entry.get("at"), entry.get("said", "")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        return None
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        return None
    return LearnedCap(cap, float(at), str(said))


class CapMemory:
    """Stream caps learned from servers, kept across runs in one small JSON file
    (``{"caps": {ws_url: {"cap", "at", "assumed", "said"}}}``; module docstring, *Learned caps
    across runs*). Blocking: call it from a thread in async code.

    The file is replaced whole (atomically) under an exclusive lock on a sibling ``.lock`` file,
    so processes learning at once keep each other's entries; readers take no lock (they see the
    old file or the new one)."""

    def __init__(self, path: Path, ttl_s: float = CAP_MEMORY_TTL_S) -> None:
        self.path = path
        self.ttl_s = ttl_s

    def _caps(self) -> dict[str, object]:
        doc = json.loads(self.path.read_bytes())
        caps = doc.get("caps") if isinstance(doc, dict) else None
        if not isinstance(caps, dict):
            raise ValueError("not a lake stream cap file")
        return caps

    def _fresh(self, learned: LearnedCap, now: float) -> bool:
        return -_CAP_CLOCK_SLACK_S <= now - learned.at < self.ttl_s

    def recall(self, url: str, now: float | None = None) -> LearnedCap | None:
        """The cap learned from ``url`` less than ``ttl_s`` ago, if any; a file that cannot be read
        or is not lake's is a warning, and nothing learned."""
        now = time.time() if now is None else now
        try:
            entry = self._caps().get(url)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("websocket stream cap file %s unusable (%s); ignored", self.path, exc)
            return None
        if entry is None:
            return None
        learned = _learned(entry)
        if learned is None:
            log.warning(
                "websocket stream cap file %s: the entry of %s is not lake's; ignored", self.path, url
            )
            return None
        return learned if self._fresh(learned, now) else None

    def remember(self, url: str, cap: int, *, assumed: int, said: str, now: float | None = None) -> bool:
        """Keep ``cap`` as learned from ``url`` now (entries of other URLs kept while fresh); whether
        it was written. A file that cannot be written is a warning."""
        now = time.time() if now is None else now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # (released by the close)
                try:
                    old = self._caps()
                except (OSError, ValueError):  # (none yet, or damaged: replaced by this one)
                    old = {}
                caps: dict[str, object] = {
                    u: e for u, e in old.items() if (got := _learned(e)) is not None and self._fresh(got, now)
                }
                caps[url] = {"cap": cap, "at": round(now, 3), "assumed": assumed, "said": said[:200]}
                data = json.dumps({"caps": caps}, indent=1, sort_keys=True) + "\n"
                write_file_atomic(self.path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning(
                "cannot keep the learned websocket stream cap in %s (%s); the next run learns it again",
                self.path,
                exc,
            )
            return False
        return True


@dataclass
class _Load:
    """What one connection was asked to carry, and what the server took of it (for a refusal over the
    stream cap)."""

    url: int  # streams in the URL
    asked: int  # streams in the URL and SUBSCRIBEs, less UNSUBSCRIBEs
    peak: int  # the most ``asked`` ever was: the count the server may have refused
    acked: int = 0  # streams of SUBSCRIBEs the server accepted
    answered: bool = False  # the server replied to something: the URL's streams were taken


@dataclass
class ShardStats:
    connects: int = 0
    drops: int = 0  # connections lost (not closed by us)
    rotations: int = 0  # proactive replacements (before the lifetime limit, on serverShutdown)
    shutdowns: int = 0  # serverShutdown events received
    failures: int = 0  # failed connection attempts
    refused: int = 0  # error replies to our SUBSCRIBE / UNSUBSCRIBE
    cap_refusals: int = 0  # connections refused for carrying too many streams
    rejected: int = 0  # streams dropped because the server refuses them
    messages: int = 0
    subscribe_msgs: int = 0
    last_error: str = ""
    connected_since: float | None = None
    down_since: float | None = field(default_factory=time.monotonic)


class WsShard:
    """One websocket connection carrying a set of streams, reconnecting until ``stop``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        streams: Iterable[str],
        on_message: OnMessage,
        *,
        msgs_per_sec: int = 5,
        url_streams: int = 200,
        subscribe_batch: int = 200,
        lifetime_s: float = 23.5 * 3600,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        stable_s: float = 1.0,
        overlap_s: float = 2.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        limiter: ConnectLimiter | None = None,
        on_cap: Callable[[WsShard, int, int, str], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.desired: set[str] = set(streams)
        self.on_message = on_message
        # room for two more messages a second: our keepalive ping and a pong to the server's ping
        # can fall in the same second as a burst of SUBSCRIBEs (all count against the limit)
        self.msg_gap = 1.0 / max(1.0, msgs_per_sec - 2)
        self.url_streams = max(1, url_streams)
        self.subscribe_batch = max(1, subscribe_batch)
        self.lifetime_s = lifetime_s
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_s = stable_s
        self.overlap_s = overlap_s
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.limiter = limiter or ConnectLimiter()
        self.stats = ShardStats()
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self._last_send = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._carried: dict[ClientConnection, set[str]] = {}  # streams a new connection was opened with
        # control requests not answered yet: id → (connection, method, streams), in the order sent
        self._sent: dict[int, tuple[ClientConnection, str, tuple[str, ...]]] = {}
        # streams of a refused SUBSCRIBE, split in groups each subscribed on its own until accepted
        self._isolated: list[frozenset[str]] = []
        self.rejected: dict[str, str] = {}  # stream → the server's refusal; not subscribed again
        self._policy_closed = False  # the last connection was closed with a policy code (1008)
        # told (awaited) the stream count to fit under after a refusal for too many streams, before
        # the reconnect, so that it opens with the share the pool leaves this shard
        self.on_cap = on_cap
        self._load: dict[ClientConnection, _Load] = {}
        # (streams that should fit, the refused connection's peak, the server's words)
        self._cap_hint: tuple[int, int, str] | None = None

    def _refused_since(self, before: int) -> bool:
        """A connection that got messages but had a control message refused (or was closed with a
        policy code) still backs off: a server that refuses every SUBSCRIBE must not be reconnected
        to in a tight loop."""
        return self.stats.refused > before or self._policy_closed

    def __repr__(self) -> str:
        return f"WsShard({self.name}, {len(self.desired)} streams)"

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"ws-{self.name}")
        return self._task

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ws, self._ws = self._ws, None
        if ws is not None:
            await _close_quietly(ws)

    async def wait_connected(self, within: float | None = None) -> bool:
        try:
            async with asyncio.timeout(within):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    def drop(self) -> None:
        """Close the current connection abruptly (tests, forced resubscription); it reconnects."""
        ws = self._ws
        if ws is not None:
            ws.transport.abort()

    async def run(self) -> None:
        attempt = 0
        ready: ClientConnection | None = None
        while not self._stopping:
            if not self.desired:
                await asyncio.sleep(0.5)
                continue
            ws = ready
            ready = None
            if ws is None:
                try:
                    ws = await self._open()
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                    attempt += 1
                    self.stats.failures += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    delay = max(
                        backoff_delay(attempt, self.backoff_base, self.backoff_cap), _told_to_wait(exc)
                    )
                    log.warning(
                        "ws %s: connect failed (%s); retry %d in %.2fs",
                        self.name,
                        self.stats.last_error,
                        attempt,
                        delay,
                    )
                    await self._report_cap()
                    await asyncio.sleep(delay)
                    continue
            self._ws = ws
            carried = self._carried.pop(ws, set())
            self.stats.connected_since = time.monotonic()
            down = self.stats.down_since
            self.stats.down_since = None
            self._connected.set()
            if down is not None and self.stats.connects > 1:
                log.info("ws %s: reconnected after %.2fs down", self.name, time.monotonic() - down)
            got_before = self.stats.messages
            refused_before = self.stats.refused
            self._policy_closed = False
            try:
                with contextlib.suppress(ConnectionClosed):  # (_read delivers what came before)
                    await self._resync(ws, carried)
                ready = await self._read(ws, self.stats.connected_since + self.lifetime_s)
                if ready is None and not self._stopping:
                    self.stats.drops += 1
                    if ws.close_code is not None:  # (else we leave it after a refusal, logged already)
                        self._note_close(ws, f"closed by the server ({ws.close_reason or ws.close_code})")
            except ConnectionClosed as exc:
                self.stats.drops += 1
                self._note_close(ws, f"{type(exc).__name__}: {exc}")
            finally:
                if self._ws is ws:
                    self._ws = None
                    self._connected.clear()
                    self.stats.down_since = time.monotonic()
                self._forget(ws)
                await _close_quietly(ws)
            await self._report_cap()
            if ready is not None:
                self.stats.rotations += 1
                attempt = 0
                continue
            up = time.monotonic() - (self.stats.connected_since or 0.0)
            if (
                self.stats.messages > got_before
                and up >= self.stable_s
                and not self._refused_since(refused_before)
            ):
                attempt = 0
            if self._stopping:
                break
            attempt += 1
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            await asyncio.sleep(delay)

    def _note_close(self, ws: ClientConnection, what: str) -> None:
        """Log a connection the server ended; a policy close (1008: too many streams or messages,
        say) is an error, and the backoff is not reset by it."""
        self.stats.last_error = what[:300]
        if ws.close_code == 1008:
            self._policy_closed = True
            self._over_cap(ws, ws.close_reason or "")
            log.error("ws %s: connection refused by the server's policy (1008): %s", self.name, what)
        else:
            log.warning("ws %s: connection lost: %s", self.name, what)

    def _forget(self, ws: ClientConnection) -> None:
        """Drop the unanswered requests of a connection that is gone."""
        for rid in [rid for rid, (conn, _m, _s) in self._sent.items() if conn is ws]:
            del self._sent[rid]
        self._load.pop(ws, None)

    def _over_cap(self, ws: ClientConnection, said: str) -> None:
        """If ``said`` (a 1008 close reason, a refusal) is about too many streams, note how many
        should fit on one connection: what the server took of ``ws``, or half what it was asked to
        carry if that is more; below the peak either way."""
        load = self._load.get(ws)
        if load is None or not about_stream_cap(said):
            return
        self.stats.cap_refusals += 1
        if load.peak <= 1:  # (one stream refused as too many: nothing smaller to try)
            return
        taken = load.url + load.acked if load.answered else 0
        fits = min(load.peak - 1, max(taken, load.peak // 2))
        if self._cap_hint is None or load.peak < self._cap_hint[1]:
            self._cap_hint = (fits, load.peak, said)

    async def _report_cap(self) -> None:
        """Tell the pool how many streams fit (after a connection refused for too many): it lowers
        its cap and moves this shard's excess elsewhere before the shard reconnects."""
        hint, self._cap_hint = self._cap_hint, None
        if hint is not None and self.on_cap is not None and not self._stopping:
            await self.on_cap(self, *hint)

    def _batches(self, streams: Sequence[str]) -> list[list[str]]:
        """``streams`` in SUBSCRIBE-sized batches, the groups a refusal isolated each on its own."""
        want = set(streams)
        held = [sorted(g & want) for g in self._isolated]
        held = [g for g in held if g]
        alone = {s for g in held for s in g}
        plain = [s for s in streams if s not in alone]
        out = [plain[i : i + self.subscribe_batch] for i in range(0, len(plain), self.subscribe_batch)]
        return out + held

    async def _open(self) -> ClientConnection:
        await self.limiter.acquire()
        streams = sorted(self.desired)
        alone = set().union(*self._isolated) if self._isolated else set()
        plain = [s for s in streams if s not in alone]  # (a suspect group never goes in the URL)
        first = plain[: self.url_streams]
        rest = [s for s in streams if s not in set(first)]
        url = f"{self.base_url}/stream" + (f"?streams={'/'.join(first)}" if first else "")
        self.stats.connects += 1
        ws = await connect(
            url,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            close_timeout=2.0,
            max_queue=1024,
            compression=None,
            proxy=True if proxy_from_env(url) else None,  # (lake.net)
        )
        self._load[ws] = _Load(url=len(first), asked=len(first), peak=len(first))
        try:
            for batch in self._batches(rest):
                await self._send(ws, "SUBSCRIBE", batch)
        except ConnectionClosed:
            await self._harvest(ws)  # closed after refusing one, say: learn from its reply
            if ws.close_code == 1008:
                self._over_cap(ws, ws.close_reason or "")
            self._forget(ws)
            await _close_quietly(ws)
            raise
        except BaseException:
            self._forget(ws)
            await _close_quietly(ws)
            raise
        self._carried[ws] = set(streams)
        return ws

    async def _harvest(self, ws: ClientConnection) -> None:
        """Deliver what a connection the server closed while it was being opened had received: the
        reply to a refused SUBSCRIBE (its streams are then narrowed down on the next connection)
        and any events."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(self.open_timeout):  # (the close handshake is under way)
                async for msg in ws:
                    self.stats.messages += 1
                    self.on_message(msg, time.perf_counter())
                    if _maybe_reply(msg):
                        await self._on_reply(ws, msg)

    async def _resync(self, ws: ClientConnection, carried: set[str]) -> None:
        """Streams (un)subscribed while ``ws`` was being opened went nowhere (``_change`` had no
        connection, or the one being replaced): bring ``ws`` to the desired set. Called once ``ws``
        is the current connection, so later changes reach it directly."""
        extra = sorted(self.desired - carried)
        gone = sorted(carried - self.desired - self.rejected.keys())  # (a rejected one was never taken)
        for batch in self._batches(extra):
            await self._send(ws, "SUBSCRIBE", batch)
        for i in range(0, len(gone), self.subscribe_batch):
            await self._send(ws, "UNSUBSCRIBE", gone[i : i + self.subscribe_batch])

    async def _read(self, ws: ClientConnection, deadline: float) -> ClientConnection | None:
        """Deliver messages until the connection closes (→ None) or it is rotated (→ the new one):
        before the lifetime limit, or at once when the server announces its shutdown."""
        shutdown = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or shutdown:
                try:
                    new = await self._open()
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    log.warning(
                        "ws %s: proactive reconnect failed (%s); keeping the old connection", self.name, exc
                    )
                    await self._report_cap()  # (refused for too many streams: the next one carries fewer)
                    if not shutdown:
                        deadline = time.monotonic() + 60.0
                    shutdown = False
                    continue
                why = "the server announced its shutdown" if shutdown else "the connection lifetime limit"
                log.info("ws %s: replaced before %s", self.name, why)
                try:
                    await self._drain(ws)
                except BaseException:  # stopped meanwhile: the new connection is nobody's
                    self._carried.pop(new, None)
                    self._forget(new)
                    await _close_quietly(new)
                    raise
                return new
            try:
                async with asyncio.timeout(remaining):
                    async for msg in ws:
                        self.stats.messages += 1
                        if _maybe_shutdown(msg) and _is_shutdown(msg):
                            self.stats.shutdowns += 1
                            shutdown = True
                            break
                        self.on_message(msg, time.perf_counter())
                        if _maybe_reply(msg) and await self._on_reply(ws, msg):
                            return None
                    else:
                        return None
            except TimeoutError:
                continue

    async def _drain(self, ws: ClientConnection) -> None:
        """Deliver what the replaced connection still carries for ``overlap_s`` (or until the server
        closes it): the new one's streams beyond the URL start only once their SUBSCRIBE is
        processed, and events already buffered here would otherwise be dropped with it. The new
        connection's events wait meanwhile; duplicates are dropped by the appender."""
        try:
            # (a quarter of the lifetime at most: tests rotate every second or two)
            async with asyncio.timeout(min(self.overlap_s, self.lifetime_s / 4)):
                async for msg in ws:
                    self.stats.messages += 1
                    if _maybe_shutdown(msg) and _is_shutdown(msg):
                        continue
                    self.on_message(msg, time.perf_counter())
        except (TimeoutError, ConnectionClosed):
            pass

    async def _on_reply(self, ws: ClientConnection, msg: str | bytes) -> bool:
        """Handle a reply to one of our control messages; True: reconnect (a refusal that is not
        about one stream). A SUBSCRIBE refused for an invalid stream is narrowed down instead."""
        reply = _control_reply(msg)
        if reply is None:
            return False
        ok, rid, said = reply
        request = self._sent.pop(rid, None) if rid is not None else None
        if request is None and rid is None and not ok:  # answered in order: the oldest one left
            rid = next((r for r, (conn, _m, _s) in self._sent.items() if conn is ws), None)
            request = self._sent.pop(rid) if rid is not None else None
        method, streams = (request[1], request[2]) if request is not None else ("", ())
        load = self._load.get(ws)
        if load is not None:
            load.answered = True
            if ok and method == "SUBSCRIBE":
                load.acked += len(streams)
        if ok:
            if method == "SUBSCRIBE" and frozenset(streams) in self._isolated:
                self._isolated.remove(frozenset(streams))  # a suspect group the server took
            return False
        self.stats.refused += 1
        what = f"{method} of {_sample(streams)}" if method else "a control message"
        self.stats.last_error = f"{what} refused: {said}"[:300]
        if method == "SUBSCRIBE" and "invalid stream" in said.lower():
            await self._narrow(ws, streams, said)
            return False
        if method == "SUBSCRIBE":
            self._over_cap(ws, said)
        log.error("ws %s: %s refused by the server: %s; reconnecting", self.name, what, said)
        return True

    async def _narrow(self, ws: ClientConnection, streams: Sequence[str], said: str) -> None:
        """One of ``streams`` is refused: drop it if it is alone, else subscribe each half on its own
        (also on the next connections, until accepted), so the others are not held up by it."""
        live = sorted(set(streams) & self.desired)
        self._isolated = [g for g in self._isolated if not g & set(streams)]
        if len(live) == 1:
            (stream,) = live
            self.desired.discard(stream)
            self.rejected[stream] = said
            self.stats.rejected += 1
            log.error(
                "ws %s: the server refuses stream %s (%s); not subscribed again", self.name, stream, said
            )
            return
        if not live:
            return
        log.warning(
            "ws %s: SUBSCRIBE of %d streams refused (%s); subscribing them in halves to find the one",
            self.name,
            len(live),
            said,
        )
        halves = [live[: len(live) // 2], live[len(live) // 2 :]]
        self._isolated += [frozenset(h) for h in halves]
        for half in halves:
            await self._send(ws, "SUBSCRIBE", half)

    # -- subscriptions -----------------------------------------------------------------------------
    async def _send(self, ws: ClientConnection, method: str, params: Sequence[str]) -> None:
        async with self._send_lock:
            wait = self._last_send + self.msg_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            rid = next(self._ids)
            self._sent[rid] = (ws, method, tuple(params))
            load = self._load.get(ws)
            if load is not None:
                load.asked = max(0, load.asked + (len(params) if method == "SUBSCRIBE" else -len(params)))
                load.peak = max(load.peak, load.asked)
            await ws.send(json.dumps({"method": method, "params": list(params), "id": rid}))
            self._last_send = time.monotonic()
            self.stats.subscribe_msgs += 1

    async def subscribe(self, streams: Sequence[str]) -> None:
        """Add streams to this shard (sent now if connected; restored on every reconnect)."""
        for s in streams:
            self.rejected.pop(s, None)  # asked again (a listing back, say): the server decides again
        self.desired.update(streams)
        await self._change("SUBSCRIBE", streams)

    async def unsubscribe(self, streams: Sequence[str]) -> None:
        self.desired.difference_update(streams)
        taken = [s for s in streams if self.rejected.pop(s, None) is None]  # (a rejected one never was)
        await self._change("UNSUBSCRIBE", taken)

    async def _change(self, method: str, streams: Sequence[str]) -> None:
        ws = self._ws
        if ws is None or not streams:
            return
        try:
            batches = (
                self._batches(list(streams))
                if method == "SUBSCRIBE"
                else [
                    list(streams[i : i + self.subscribe_batch])
                    for i in range(0, len(streams), self.subscribe_batch)
                ]
            )
            for batch in batches:
                await self._send(ws, method, batch)
        except ConnectionClosed:
            pass  # the reconnect subscribes the desired set


def _maybe_shutdown(msg: str | bytes) -> bool:
    """A cheap pre-check on the hot path (every kline event passes here)."""
    return ("serverShutdown" in msg) if isinstance(msg, str) else (b"serverShutdown" in msg)


def _maybe_reply(msg: str | bytes) -> bool:
    """A cheap pre-check on the hot path: kline events hold none of these keys."""
    if isinstance(msg, str):
        return '"result"' in msg or '"error"' in msg or '"code"' in msg
    return b'"result"' in msg or b'"error"' in msg or b'"code"' in msg


def _control_reply(msg: str | bytes) -> tuple[bool, int | None, str] | None:
    """A reply to a control message as (accepted, its id if an int, the server's words for a
    refusal); None for anything else. Refusals: ``{"error": {"code", "msg"}, "id": N}`` as Binance
    sends them, or the flat ``{"code", "msg"[, "id"]}`` of its API docs' examples (often without
    an id)."""
    try:
        doc = json.loads(msg)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or "stream" in doc:
        return None
    rid = doc.get("id")
    rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else None
    if "result" in doc and "id" in doc and "error" not in doc:
        return True, rid, ""
    err = doc.get("error") if "error" in doc else (doc if "code" in doc and "msg" in doc else None)
    if err is None:
        return None
    said = f"code {err.get('code')}: {err.get('msg')}" if isinstance(err, dict) else str(err)
    return False, rid, said[:200].encode("unicode_escape").decode("ascii")  # (one log line)


def _sample(streams: Sequence[str], n: int = 3) -> str:
    """``a, b, c and 7 more`` (for log lines)."""
    head = ", ".join(streams[:n])
    return f"{head} and {len(streams) - n} more" if len(streams) > n else head or "no streams"


def _told_to_wait(exc: BaseException) -> float:
    """Seconds a refused handshake asks us to wait: HTTP 429 (too many connection attempts) or 418
    (banned) with their ``Retry-After``, at least a minute; 0 for other failures."""
    if not isinstance(exc, InvalidStatus) or exc.response.status_code not in (418, 429):
        return 0.0
    raw = exc.response.headers.get("Retry-After", "")
    try:
        return max(60.0, float(raw))
    except ValueError:
        return 60.0


def _is_shutdown(msg: str | bytes) -> bool:
    """Whether a message is the ``serverShutdown`` event: raw ``{"e": "serverShutdown", "E": …}``,
    inside a combined-stream envelope (``{"stream", "data"}``) or the WebSocket API's ``{"event"}``."""
    try:
        doc = json.loads(msg)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    for inner in (doc, doc.get("data"), doc.get("event")):
        if isinstance(inner, dict) and inner.get("e") == "serverShutdown":
            return True
    return False


async def _close_quietly(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()


class WsPool:
    """All connections of one feed: sharded by the market's stream cap, updated as symbols change.

    The cap is lowered when the server refuses a connection for too many streams (see the module
    docstring); ``on_cap(pool, cap, said)`` is called once per lowering learned from the server (not
    for ``lower_cap``, which applies a cap learned elsewhere)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        interval: str,
        on_message: OnMessage,
        *,
        cap: int,
        msgs_per_sec: int,
        limiter: ConnectLimiter | None = None,
        on_cap: Callable[[WsPool, int, str], object] | None = None,
        **shard_kwargs: object,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.interval = interval
        self.on_message = on_message
        self.plan = ShardPlan(cap)
        self.assumed_cap = cap
        self.msgs_per_sec = msgs_per_sec
        self.limiter = limiter or ConnectLimiter()
        self.on_cap = on_cap
        self.shard_kwargs = shard_kwargs
        self.shards: list[WsShard] = []
        # one change of the plan at a time: a listing, or a split after a refusal (several shards
        # refused at once each report, and each would otherwise split from the same stale plan)
        self._lock = asyncio.Lock()
        self._stopping = False

    def _new_shard(self, streams: Iterable[str]) -> WsShard:
        shard = WsShard(
            f"{self.name}#{len(self.shards)}",
            self.base_url,
            streams,
            self.on_message,
            msgs_per_sec=self.msgs_per_sec,
            limiter=self.limiter,
            on_cap=self._cap_refused,
            **self.shard_kwargs,  # type: ignore[arg-type]
        )
        self.shards.append(shard)
        shard.start()
        return shard

    async def start(self, symbols: Iterable[str]) -> None:
        self.plan = ShardPlan.initial((stream_name(s, self.interval) for s in symbols), self.plan.cap)
        for streams in self.plan.shards:
            self._new_shard(streams)

    async def update(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Subscribe new symbols and unsubscribe removed ones."""
        async with self._lock:
            for idx, streams in self.plan.remove(stream_name(s, self.interval) for s in remove).items():
                await self.shards[idx].unsubscribe(streams)
            for idx, streams in self.plan.add(stream_name(s, self.interval) for s in add).items():
                if idx < len(self.shards):
                    await self.shards[idx].subscribe(streams)
                else:
                    self._new_shard(streams)

    async def _cap_refused(self, shard: WsShard, fits: int, peak: int, said: str) -> None:
        """``shard``'s connection was refused for too many streams at ``peak`` of them and ``fits``
        should fit: lower the cap and split whatever is over it. A connection that carried more than
        the current cap was refused for what an earlier report already taught (the shards refused
        in one round each report): it is only split, else each report would halve the cap again."""
        async with self._lock:
            if self._stopping:
                return
            if peak <= self.plan.cap and fits < self.plan.cap:
                self.plan.cap = fits
                log.warning(
                    "ws %s: the server refused %s for too many streams (%s): it allows fewer than the "
                    "%d per connection assumed; carrying at most %d per connection for the rest of the run",
                    self.name,
                    shard.name,
                    said,
                    self.assumed_cap,
                    fits,
                )
                if self.on_cap is not None:
                    self.on_cap(self, fits, said)
            await self._split()

    async def lower_cap(self, cap: int) -> bool:
        """Apply a stream cap learned elsewhere (another feed of the market); whether it was lower."""
        async with self._lock:
            if self._stopping or cap >= self.plan.cap:
                return False
            self.plan.cap = max(1, cap)
            await self._split()
            return True

    async def _split(self) -> None:
        """Move the streams of every shard over the cap to new shards, all of near-equal size: the
        shards within it keep their connections untouched. New shards first, so a stream leaving a
        live connection is subscribed elsewhere before it is unsubscribed (duplicates are dropped
        by the appender)."""
        cap = self.plan.cap
        over = [i for i, sh in enumerate(self.shards) if len(sh.desired) > cap]
        if not over:
            return
        n = sum(len(self.shards[i].desired) for i in over)
        size = -(-n // -(-n // cap))
        moved: dict[int, list[str]] = {}
        for i in over:
            moved[i] = sorted(self.shards[i].desired)[size:]
            self.plan.shards[i].difference_update(moved[i])
        spill = [s for i in over for s in moved[i]]
        for j in range(0, len(spill), size):
            chunk = spill[j : j + size]
            self.plan.shards.append(set(chunk))
            self._new_shard(chunk)
        log.info(
            "ws %s: %d streams of %d connections over the cap of %d moved to %d new ones; %d connections",
            self.name,
            len(spill),
            len(over),
            cap,
            -(-len(spill) // size),
            len(self.shards),
        )
        for i in over:
            await self.shards[i].unsubscribe(moved[i])

    async def stop(self) -> None:
        self._stopping = True
        stopped = 0
        while stopped < len(self.shards):  # (a split under way may still add one)
            batch = self.shards[stopped:]
            stopped = len(self.shards)
            await asyncio.gather(*(s.stop() for s in batch))

    async def wait_connected(self, within: float) -> bool:
        results = await asyncio.gather(*(s.wait_connected(within) for s in self.shards))
        return all(results)

    def drop_all(self) -> None:
        for s in self.shards:
            s.drop()

    def health(self) -> dict[str, object]:
        return {
            "connections": len(self.shards),
            "cap": self.plan.cap,
            "connected": sum(1 for s in self.shards if s.connected),
            "streams": sum(len(s.desired) for s in self.shards),
            "connects": sum(s.stats.connects for s in self.shards),
            "drops": sum(s.stats.drops for s in self.shards),
            "rotations": sum(s.stats.rotations for s in self.shards),
            "shutdowns": sum(s.stats.shutdowns for s in self.shards),
            "failures": sum(s.stats.failures for s in self.shards),
            "refused": sum(s.stats.refused for s in self.shards),
            "cap_refusals": sum(s.stats.cap_refusals for s in self.shards),
            "rejected": sorted(r for s in self.shards for r in s.rejected),
        }
