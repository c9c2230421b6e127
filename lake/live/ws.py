"""Websocket side of the live appender: kline streams sharded over connections, kept alive.

Client library: ``websockets`` (asyncio implementation, ≥ 14). It answers the server's pings by
itself (Binance drops a client that does not pong), sends its own keepalive pings to notice a dead
peer, makes ``recv`` cancellation-safe and applies back-pressure through a bounded frame queue;
aiohttp's client would also do, but ``websockets`` keeps the REST session and the streams apart
and is what BMAC used.

* **Shards.** A feed's streams (``btcusdt@kline_5m``) are split over connections of at most the
  market's stream cap (1024; COIN-M 200). A connection opens the combined endpoint
  ``<ws_base>/stream?streams=a/b/…`` with the first ``url_streams`` streams in the URL and
  subscribes the rest with ``SUBSCRIBE`` messages (≤ ``subscribe_batch`` streams each), paced
  under the market's incoming-message limit (5/s spot, 10/s futures, counting pings).
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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from lake.ingest.governor import StateFile
from lake.net import proxy_from_env

__all__ = [
    "ConnectLimiter",
    "ShardPlan",
    "ShardStats",
    "WsPool",
    "WsShard",
    "backoff_delay",
    "stream_name",
]

log = logging.getLogger("lake.live.ws")

OnMessage = Callable[[str | bytes, float], object]


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


@dataclass
class ShardStats:
    connects: int = 0
    drops: int = 0  # connections lost (not closed by us)
    rotations: int = 0  # proactive replacements (before the lifetime limit, on serverShutdown)
    shutdowns: int = 0  # serverShutdown events received
    failures: int = 0  # failed connection attempts
    refused: int = 0  # error replies to our SUBSCRIBE / UNSUBSCRIBE (each costs a reconnect)
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
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.desired: set[str] = set(streams)
        self.on_message = on_message
        self.msg_gap = 1.0 / max(1.0, msgs_per_sec - 1)  # leave room for pongs
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

    def _refused_since(self, before: int) -> bool:
        """A connection that got messages but had a control message refused still backs off: a
        server that refuses every SUBSCRIBE must not be reconnected to in a tight loop."""
        return self.stats.refused > before

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
            try:
                await self._resync(ws, carried)
                ready = await self._read(ws, self.stats.connected_since + self.lifetime_s)
                if ready is None and not self._stopping:
                    self.stats.drops += 1
                    log.warning(
                        "ws %s: connection closed by the server (%s)",
                        self.name,
                        ws.close_reason or ws.close_code,
                    )
            except ConnectionClosed as exc:
                self.stats.drops += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("ws %s: connection lost: %s", self.name, self.stats.last_error)
            finally:
                if self._ws is ws:
                    self._ws = None
                    self._connected.clear()
                    self.stats.down_since = time.monotonic()
                await _close_quietly(ws)
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

    async def _open(self) -> ClientConnection:
        await self.limiter.acquire()
        streams = sorted(self.desired)
        first, rest = streams[: self.url_streams], streams[self.url_streams :]
        url = f"{self.base_url}/stream?streams={'/'.join(first)}"
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
        try:
            for i in range(0, len(rest), self.subscribe_batch):
                await self._send(ws, "SUBSCRIBE", rest[i : i + self.subscribe_batch])
        except BaseException:
            await _close_quietly(ws)
            raise
        self._carried[ws] = set(streams)
        return ws

    async def _resync(self, ws: ClientConnection, carried: set[str]) -> None:
        """Streams (un)subscribed while ``ws`` was being opened went nowhere (``_change`` had no
        connection, or the one being replaced): bring ``ws`` to the desired set. Called once ``ws``
        is the current connection, so later changes reach it directly."""
        extra, gone = sorted(self.desired - carried), sorted(carried - self.desired)
        for method, streams in (("SUBSCRIBE", extra), ("UNSUBSCRIBE", gone)):
            for i in range(0, len(streams), self.subscribe_batch):
                await self._send(ws, method, streams[i : i + self.subscribe_batch])

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
                        if _maybe_error(msg) and _is_error_reply(msg):
                            # A refused SUBSCRIBE would leave its streams silent for the connection's
                            # life (the period check then fetches them over REST every period): start
                            # over on a new connection, which subscribes the whole desired set.
                            self.stats.refused += 1
                            self.stats.last_error = f"control message refused: {str(msg)[:200]}"
                            log.warning("ws %s: %s; reconnecting", self.name, self.stats.last_error)
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

    # -- subscriptions -----------------------------------------------------------------------------
    async def _send(self, ws: ClientConnection, method: str, params: Sequence[str]) -> None:
        async with self._send_lock:
            wait = self._last_send + self.msg_gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await ws.send(json.dumps({"method": method, "params": list(params), "id": next(self._ids)}))
            self._last_send = time.monotonic()
            self.stats.subscribe_msgs += 1

    async def subscribe(self, streams: Sequence[str]) -> None:
        """Add streams to this shard (sent now if connected; restored on every reconnect)."""
        self.desired.update(streams)
        await self._change("SUBSCRIBE", streams)

    async def unsubscribe(self, streams: Sequence[str]) -> None:
        self.desired.difference_update(streams)
        await self._change("UNSUBSCRIBE", streams)

    async def _change(self, method: str, streams: Sequence[str]) -> None:
        ws = self._ws
        if ws is None or not streams:
            return
        try:
            for i in range(0, len(streams), self.subscribe_batch):
                await self._send(ws, method, streams[i : i + self.subscribe_batch])
        except ConnectionClosed:
            pass  # the reconnect subscribes the desired set


def _maybe_shutdown(msg: str | bytes) -> bool:
    """A cheap pre-check on the hot path (every kline event passes here)."""
    return ("serverShutdown" in msg) if isinstance(msg, str) else (b"serverShutdown" in msg)


def _maybe_error(msg: str | bytes) -> bool:
    """A cheap pre-check on the hot path: kline events hold neither key."""
    if isinstance(msg, str):
        return '"error"' in msg or '"code"' in msg
    return b'"error"' in msg or b'"code"' in msg


def _is_error_reply(msg: str | bytes) -> bool:
    """Whether a message is an error reply to a control message: ``{"error": {"code", "msg"},
    "id": N}`` as Binance sends it, or the flat ``{"code", "msg", "id"}`` of its API docs' examples."""
    try:
        doc = json.loads(msg)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict) or "id" not in doc or "stream" in doc:
        return False
    return "error" in doc or ("code" in doc and "msg" in doc and "result" not in doc)


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
    """All connections of one feed: sharded by the market's stream cap, updated as symbols change."""

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
        **shard_kwargs: object,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.interval = interval
        self.on_message = on_message
        self.plan = ShardPlan(cap)
        self.msgs_per_sec = msgs_per_sec
        self.limiter = limiter or ConnectLimiter()
        self.shard_kwargs = shard_kwargs
        self.shards: list[WsShard] = []

    def _new_shard(self, streams: Iterable[str]) -> WsShard:
        shard = WsShard(
            f"{self.name}#{len(self.shards)}",
            self.base_url,
            streams,
            self.on_message,
            msgs_per_sec=self.msgs_per_sec,
            limiter=self.limiter,
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
        for idx, streams in self.plan.remove(stream_name(s, self.interval) for s in remove).items():
            await self.shards[idx].unsubscribe(streams)
        for idx, streams in self.plan.add(stream_name(s, self.interval) for s in add).items():
            if idx < len(self.shards):
                await self.shards[idx].subscribe(streams)
            else:
                self._new_shard(streams)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.shards))

    async def wait_connected(self, within: float) -> bool:
        results = await asyncio.gather(*(s.wait_connected(within) for s in self.shards))
        return all(results)

    def drop_all(self) -> None:
        for s in self.shards:
            s.drop()

    def health(self) -> dict[str, object]:
        return {
            "connections": len(self.shards),
            "connected": sum(1 for s in self.shards if s.connected),
            "streams": sum(len(s.desired) for s in self.shards),
            "connects": sum(s.stats.connects for s in self.shards),
            "drops": sum(s.stats.drops for s in self.shards),
            "rotations": sum(s.stats.rotations for s in self.shards),
            "shutdowns": sum(s.stats.shutdowns for s in self.shards),
            "failures": sum(s.stats.failures for s in self.shards),
            "refused": sum(s.stats.refused for s in self.shards),
        }
