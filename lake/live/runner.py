"""``lake live``: keep the lake current from websocket kline streams, repaired over REST.

One *feed* per (trade type, interval). Inside one asyncio loop (BMAC's producer/consumer shape):

* producers: the websocket shards (``lake.live.ws``) hand every message to the feed's
  ``Appender``; the *alarm* wakes at each period boundary (server time) and again after the grace
  time; the *REST fetcher* (``lake.live.repair`` over #4's ``RestClient``) answers catch-up and
  repair requests;
* the dispatcher: the feed's writer loop drains the appender's buffer into one partition upsert
  per symbol (``KlineWriter``, in threads), marks the periods stored (``PeriodBook``) and publishes
  the watermark (``lake.live.watermark``) once a period is complete.

Time is the exchange's: the market's ``ServerClock`` (measured offset *and* rate from the time
endpoint, so a simulator running 60× fast is followed) decides boundaries and grace; event times
(``E``) ahead of the estimate trigger a re-sync (a clock jump).

Start-up never wipes anything: each symbol is caught up over REST from its last stored candle (and
any hole after the previous run's watermark). Every period boundary: the period is registered with
the live symbols, exchangeInfo is refreshed (new listings subscribed and caught up, delistings
unsubscribed, the ``exchange_info`` table updated), and after ``grace`` seconds every symbol still
missing is fetched over REST; periods still incomplete are retried and alerted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_market, get_trade_type
from lake.errors import ConfigError, LakeError, NotFoundError, ValidationError
from lake.ingest.backfill import backfill
from lake.ingest.governor import budget_path
from lake.ingest.rest_client import RestClient
from lake.ingest.universe import ExchangeSnapshot, fetch_exchange_info, universe, write_snapshot
from lake.live.alerts import Alerter
from lake.live.feed import Feed, FeedLock, LiveConfig, candle_differs, iso
from lake.live.period import PeriodBook
from lake.live.repair import (
    catchup_start,
    fetch_many,
    last_stored,
    read_pending_catchup,
    read_provisional,
    write_pending_catchup,
    write_provisional,
)
from lake.live.watermark import read_watermark, write_watermark
from lake.live.ws import CAP_MEMORY_TTL_S, CapMemory, ConnectLimiter, WsPool
from lake.settings import Settings
from lake.store.fs import LakeFS
from lake.store.klines import list_series
from lake.store.meta import EmptyRange, add_empty_ranges
from lake.store.tail import ensure_tail

__all__ = ["LiveConfig", "LiveRunner", "run_live", "ws_cap_path"]

log = logging.getLogger("lake.live")

# Periods that closed at least this long ago (server time) are caught up by the start-up backfill,
# whose answers then count as final (#4's ``settle_ms``); younger ones are tracked live.
_SETTLE_MS = 60_000
# A period is repaired over REST only once it closed at least this long ago (server ms).
_CLOSE_MARGIN_MS = 1_000
# An empty REST answer proves a slot has no candle only once the slot closed this long ago (server
# ms): closing events have come ~24 s late (binance.md §6.7) and REST, fed by the same kline engine,
# may lag as much. A slot written off sooner would also drop its late closing event (the book counts
# it done), a hole for good.
_ABSENT_SETTLE_MS = 30_000
_RECONFIRM_TRIES = 5  # period checks that ask again for a young REST candle before giving up
_REPAIR_PAUSE_MAX_S = 60.0  # the longest pause between two repair rounds of an incomplete period
_FULL_GC_EVERY_S = 30.0  # full collections after the catch-up: one at most this often, between bursts


def ws_cap_path(settings: Settings, market: str) -> Path:
    """The file keeping the websocket stream caps learned from ``market``'s servers (``CapMemory``):
    beside the weight budget and the connection attempts (``Settings.budget_dir``), named by Binance
    service like them, so every lake of this user that talks to it starts from what one learned."""
    url = settings.endpoints.ws[market]
    return budget_path(settings.budget_dir(url), f"ws-cap-{market}", url)


def _transient(exc: BaseException) -> bool:
    """Errors a retry can fix: lake errors (upstream failures, incomplete ranges, lock timeouts, a bad
    answer) and Polars read errors (a lazy scan meeting a partition that was replaced between its two
    opens), also when #4's backfill wraps them in an exception group. Not bad settings or input (a
    bucket gone, credentials refused): retrying those forever would only hide them."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_transient(e) for e in exc.exceptions)
    if isinstance(exc, (ConfigError, ValidationError, NotFoundError)):
        return False
    return isinstance(exc, (LakeError, pl.exceptions.PolarsError))


def _torn_read(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_torn_read(e) for e in exc.exceptions)
    return isinstance(exc, pl.exceptions.PolarsError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, pl.exceptions.PolarsError) else str(exc)


_malloc_trim: Any = None  # glibc's malloc_trim, looked up once (False: there is none)


def trim_heap() -> bool:
    """Give the free pages of the C heap back to the system (glibc's ``malloc_trim(0)``); whether
    there is such a call here.

    The writer and compaction threads allocate and free many short-lived buffers of a few hundred
    kB (file bytes, encoded partitions), spread over glibc's per-thread arenas. glibc returns free
    memory to the system only from the top of an arena, so the freed pages stayed resident: in a
    soak of two 1m feeds (235 symbols, --offsets 1h, a simulator at 40x) the RSS went from 480 to
    640 MB in 7.5 simulated hours, still growing at the end, while the Python heap stayed flat;
    with this trim after each full collection it stayed at 375-433 MB. A trim took 3-16 ms."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim  # (the process's own symbols: its libc's)
            _malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(nbytes: int = _MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``nbytes`` (``mallopt(M_MMAP_THRESHOLD)``) unless the user set
    it (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES``); whether it was set here.

    glibc raises the threshold to the largest block freed so far (here the offsets tail's file
    bytes, up to ~9 MB), and every thread arena may then keep a free top chunk of about twice that,
    which ``malloc_trim`` does not give back for arenas other than the main one. In a soak of 53
    symbols, 1m candles, ``--offsets 1h`` at 240x, the arenas held 24 → 105 MB of mostly free
    memory over 5 simulated days; pinned at 1 MB (in a run that also had Polars' jemalloc return
    memory at once) 15-22 MB. Blocks over 1 MB are mapped and unmapped instead, a syscall each."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))


def _full_collect() -> None:
    gc.collect()
    trim_heap()


def _gc_checkpoint() -> tuple[int, int, int]:
    """Exempt every object alive after the catch-up from later full garbage collections.

    A full (generation 2) collection walks every tracked object of the process: with Polars,
    pyarrow, DuckDB and aiohttp loaded that took ~70-100 ms, at whatever moment the allocation
    counters said, and a closing burst caught by one waited for it. Frozen once the catch-up is
    done, that long-lived heap is no longer walked; later full collections only see what was
    allocated since. Unfrozen when the run ends.

    Full collections of what is allocated later still took 20-70 ms (measured in bench.live, one a
    minute or so), so from here on they do not run by the allocation counters: ``_collect_soon``
    runs one between bursts instead (``_FULL_GC_EVERY_S`` at most). Returns the thresholds to put
    back at the end.
    """
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], 1_000_000_000)
    return before


class LiveRunner:
    """Runs ``lake live`` until stopped (``stop()``, ``--periods``, ``--duration``)."""

    def __init__(
        self,
        settings: Settings,
        config: LiveConfig,
        *,
        alerter: Alerter | None = None,
        lfs: LakeFS | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.client_options = dict(client_options or {})
        self.lfs = lfs or LakeFS(settings.root)
        self.alerter = alerter or Alerter(
            settings.webhook_url,
            settings.webhook_kind,
            settings.webhook_secret,
            timeout=settings.http_timeout,
        )
        self.clients: dict[str, RestClient] = {}
        self.feeds: list[Feed] = []
        for t in config.trade_types:
            tt = get_trade_type(t)
            for i in config.intervals:
                iv = parse_interval(i, spot=tt.is_spot)
                self.feeds.append(Feed(self.lfs, config, tt, iv, self.clients, self._alert_keyed))
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._gc_thresholds: tuple[int, int, int] | None = None  # set when the heap is frozen
        self._last_full_gc = float("-inf")
        self._snapshots: dict[str, ExchangeSnapshot] = {}
        self._snapshot_lock: dict[str, asyncio.Lock] = {}
        self._limiters: dict[str, ConnectLimiter] = {}
        self._started_mono = 0.0
        self._ws_alerted: dict[str, float] = {}
        self._ws_refused: dict[str, int] = {}
        self._ws_rejected: set[tuple[str, str]] = set()  # (shard, stream) alerted as refused for good
        self._ws_caps: dict[str, int] = {}  # market → streams per connection now
        self._ws_start_caps: dict[str, int] = {}  # market → streams per connection at the start
        self.stop_reason = ""
        self.failure: BaseException | None = None  # the first task that died: re-raised by run()

    # -- control -----------------------------------------------------------------------------------
    def stop(self, reason: str = "stop requested") -> None:
        """Ask the runner to flush and exit (signal handlers call this)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; returns False when the runner is stopping."""
        if self._stop.is_set():
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._stop.wait()
        return not self._stop.is_set()

    async def _sleep_until(self, feed: Feed, server_ms: int) -> bool:
        """Sleep until the server clock reaches ``server_ms``, re-reading the clock as it is corrected."""
        while True:
            await self._check_clock(feed)
            left = server_ms - feed.now_ms()
            if left <= 0:
                return not self._stop.is_set()
            if not await self._sleep(min(feed.client.clock.real_seconds(left), 0.25)):
                return False

    async def _check_clock(self, feed: Feed) -> None:
        """An event stamped far ahead of the REST-sampled estimate means the server clock jumped (or
        the estimate drifted): re-sync it (``Feed.now_ms`` already follows the events meanwhile)."""
        st = feed.appender.stats
        ahead = max(st.max_event_ms, st.ahead_hint_ms) - feed.client.clock.now_ms()
        st.ahead_hint_ms = 0
        if ahead > feed.clock_tolerance_ms():
            log.info(
                "%s: events are %.1fs ahead of the server clock estimate; re-syncing", feed.name, ahead / 1000
            )
            with contextlib.suppress(LakeError):
                await feed.client.sync_clock()
                await feed.client.sync_clock()
            ahead = st.max_event_ms - feed.client.clock.now_ms()
            if ahead > feed.clock_tolerance_ms():
                # the exchange's clock does not confirm it: a bad event time, not a clock jump
                log.warning(
                    "%s: ignoring websocket event time %.1fs ahead of the exchange's clock",
                    feed.name,
                    ahead / 1000,
                )
                st.max_event_ms = 0
        # After any re-sync: held "future" candles that have closed by now go to the writer, the
        # others are refused (a candle held while the estimate then caught up never stays held).
        if feed.appender.retry_held():
            feed.appender.wake()

    # -- main --------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        """Run until stopped; returns a summary.

        Raises start-up errors (unreachable exchange, no symbols, feed already followed), and, after
        the flush, the exception of any task that died unexpectedly."""
        self._started_mono = time.monotonic()
        fix_mmap_threshold()
        locks = [FeedLock(self.lfs, f.tt.name, f.iv.name) for f in self.feeds]
        acquired: list[FeedLock] = []
        try:
            for lk in locks:
                lk.acquire()
                acquired.append(lk)
            async with contextlib.AsyncExitStack() as stack:
                for market in sorted({f.tt.market_name for f in self.feeds}):
                    client = RestClient.from_settings(self.settings, market, **self.client_options)
                    self.clients[market] = await stack.enter_async_context(client)
                    self._snapshot_lock[market] = asyncio.Lock()
                    # attempts per IP: shared with this user's other lake processes (Settings.budget_dir)
                    self._limiters[market] = ConnectLimiter(
                        250 if market == "spot" else 1000,
                        300.0,
                        state_file=budget_path(
                            self.settings.budget_dir(self.settings.endpoints.ws[market]),
                            f"ws-connects-{market}",
                            self.settings.endpoints.ws[market],
                        ),
                    )
                    stack.callback(self._limiters[market].close)
                    cap = await asyncio.to_thread(self.start_cap, market)
                    self._ws_caps[market] = self._ws_start_caps[market] = cap
                try:
                    await self._check_whitelist()
                    for feed in self.feeds:
                        await self._start_feed(feed)
                    await self._supervise()
                finally:
                    await self._shutdown()
        finally:
            gc.unfreeze()  # (frozen by _gc_checkpoint)
            if self._gc_thresholds is not None:
                gc.set_threshold(*self._gc_thresholds)
            for lk in acquired:
                lk.release()
            await self.alerter.close()
        if self.failure is not None:
            raise self.failure  # flushed and published first; a crash is not a clean exit
        return self.summary()

    async def _start_feed(self, feed: Feed) -> None:
        cfg = self.config
        snap = await self._snapshot(feed.tt.market_name, max_age_ms=0)
        feed.live = self._trading(feed, snap)
        if not feed.live:
            raise NotFoundError(f"{feed.name}: no TRADING symbols to follow")
        feed.appender.symbols.update(feed.live)
        # a --symbols run keeps its own watermark: it says nothing of the symbols it does not follow
        old = await asyncio.to_thread(read_watermark, self.lfs, feed.tt.name, feed.iv.name, cfg.symbols)
        old_wm = old.get("watermark_ms") if old else None
        feed.published = old_wm if isinstance(old_wm, int) else None
        now = feed.now_ms()
        # REST catch-up covers the periods that closed more than _SETTLE_MS ago (their absence from a
        # REST answer is final); later ones are tracked and checked like any live period.
        catch_end = feed.iv.floor(now - _SETTLE_MS)
        last_closed = feed.iv.floor(now) - feed.iv_ms
        feed.book = PeriodBook(feed.iv, catch_end - feed.iv_ms, watermark=feed.published)
        # REST candles a previous run stored before they were final: asked again at the first check
        earlier = await asyncio.to_thread(read_provisional, self.lfs, feed.tt.name, feed.iv.name)
        feed.recent_rest.update(earlier)
        feed.provisional_saved = frozenset(earlier)
        if earlier:
            log.info(
                "%s: %d candle(s) stored early by the last run, to be asked again", feed.name, len(earlier)
            )
        if last_closed >= catch_end:
            feed.book.open_period(last_closed, feed.live)
        log.info(
            "%s: %d symbols live; server time %s; catching up before %s (watermark %s)",
            feed.name,
            len(feed.live),
            iso(now),
            iso(catch_end),
            iso(feed.published),
        )
        # Candles a previous run left in the tail go into their partitions first: the catch-up plans
        # from the partitions.
        await asyncio.to_thread(ensure_tail, self.lfs, feed.tt.name, feed.iv.name)
        await self._compact(feed)
        market = feed.tt.market
        feed.pool = WsPool(
            feed.name,
            self.settings.endpoints.ws[market.name],
            feed.iv.name,
            feed.appender.feed,
            cap=self._ws_caps.get(market.name, market.ws_stream_cap),
            msgs_per_sec=market.ws_msgs_per_sec,
            limiter=self._limiters[market.name],
            on_cap=self._ws_cap_learned,
            lifetime_s=cfg.ws_lifetime_s,
            url_streams=cfg.ws_url_streams,
            subscribe_batch=cfg.ws_subscribe_batch,
            backoff_cap=cfg.ws_backoff_cap_s,
        )
        await feed.pool.start(sorted(feed.live))
        self._spawn(self._writer_loop(feed), f"writer {feed.name}")
        self._spawn(self._compactor(feed), f"compactor {feed.name}")
        if feed.offsets is not None:
            self._spawn(feed.offsets.run(), f"offsets {feed.name}")
        stragglers = await asyncio.to_thread(self._stragglers, feed, feed.published)
        if stragglers:
            log.info(
                "%s: %d symbols stopped trading since the last run, finishing them: %s",
                feed.name,
                len(stragglers),
                ", ".join(stragglers[:10]),
            )
        symbols = sorted(feed.live) + stragglers
        self._spawn(self._initial_catchup(feed, symbols, catch_end, last_closed), f"catch-up {feed.name}")
        self._spawn(self._alarm(feed, feed.iv.floor(now) + feed.iv_ms), f"alarm {feed.name}")

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if self.failure is None:
                self.failure = exc
            # a traceback for a bug; a LakeError (a damaged file, say) is the user's one-line message
            trace = None if isinstance(exc, LakeError) else exc
            log.error("task %s failed: %r", task.get_name(), exc, exc_info=trace)
            self._alert_soon(
                f"lake live task {task.get_name()} failed", repr(exc), key=f"task:{task.get_name()}"
            )
            self.stop(f"task {task.get_name()} failed: {exc!r}")

    def _alert_keyed(self, title: str, text: str, key: str) -> None:
        self._alert_soon(title, text, key=key)

    def _alert_soon(self, title: str, text: str, *, key: str | None = None, level: str = "error") -> None:
        t = asyncio.ensure_future(self.alerter.send(title, text, key=key, level=level))
        t.set_name(f"alert {key or title}")
        self._tasks.append(t)

    async def _supervise(self) -> None:
        cfg = self.config
        last_health = time.monotonic()
        while not self._stop.is_set():
            await self._sleep(0.2)
            now = time.monotonic()
            if cfg.duration_s is not None and now - self._started_mono >= cfg.duration_s:
                self.stop(f"--duration {cfg.duration_s:g}s reached")
            if cfg.periods is not None and all(f.stats.periods_checked >= cfg.periods for f in self.feeds):
                self.stop(f"--periods {cfg.periods} reached")
            for feed in self.feeds:
                self._watch_ws(feed)
            self._tasks = [t for t in self._tasks if not t.done()]  # finished ones were handled
            if now - last_health >= cfg.health_every_s:
                last_health = now
                for feed in self.feeds:
                    log.info("health %s", self.health(feed))

    def start_cap(self, market: str) -> int:
        """Streams per connection the feeds of ``market`` start with: the settings' ``ws_stream_cap``
        if set, else the market's, lowered to what a server of this very endpoint refused less
        than a day ago (``CapMemory``; a damaged file is a warning). Blocking: reads that file."""
        user = self.settings.ws_stream_cap_for(market)
        if user is not None:
            return user
        assumed = get_market(market).ws_stream_cap
        url = self.settings.endpoints.ws[market]
        learned = CapMemory(ws_cap_path(self.settings, market)).recall(url)
        if learned is None or learned.cap >= assumed:
            return assumed
        log.info(
            "%s websocket: at most %d streams per connection (not %d), as the server said %.1f h ago "
            "(%s); retried after %.0f h, or set ws_stream_cap",
            market,
            learned.cap,
            assumed,
            max(0.0, time.time() - learned.at) / 3600,
            learned.said,
            CAP_MEMORY_TTL_S / 3600,
        )
        return learned.cap

    def _ws_cap_learned(self, pool: WsPool, cap: int, said: str) -> None:
        """A feed's server refused a connection for too many streams and its pool lowered its cap: the
        market's other feeds split before their servers refuse them too, the cap is kept for the next
        runs (``CapMemory``), and the lowering is alerted once (a warning: nothing is lost, but
        ``ws_stream_cap`` may want updating)."""
        feed = next((f for f in self.feeds if f.pool is pool), None)
        if feed is None:
            return
        market = feed.tt.market
        started = self._ws_start_caps.get(market.name, market.ws_stream_cap)
        if cap >= self._ws_caps.get(market.name, started):
            return
        self._ws_caps[market.name] = cap
        for other in self.feeds:
            if other.pool is not None and other.pool is not pool and other.tt.market_name == market.name:
                self._spawn(other.pool.lower_cap(cap), f"ws-cap {other.name}")
        url = self.settings.endpoints.ws[market.name]
        memory = CapMemory(ws_cap_path(self.settings, market.name))
        self._spawn(
            asyncio.to_thread(memory.remember, url, cap, assumed=market.ws_stream_cap, said=said),
            f"ws-cap-save {market.name}",
        )
        self._alert_soon(
            f"{market.name} websocket stream cap lowered to {cap}",
            f"{feed.name}: the {market.label} server refused a connection for too many streams ({said}); "
            f"this run started at {started} per connection and now carries at most {cap} on each "
            "(streams dark meanwhile are repaired over REST); runs started within "
            f"{CAP_MEMORY_TTL_S / 3600:.0f} h start at {cap} unless ws_stream_cap is set. Set it in "
            "the settings (or update lake/binance/markets.py) if Binance has lowered its limit for good.",
            key=f"ws-cap:{market.name}:{cap}",
            level="warning",
        )

    def _watch_ws(self, feed: Feed) -> None:
        if feed.pool is None:
            return
        now = time.monotonic()
        for shard in feed.pool.shards:
            refused = shard.stats.refused
            if refused > self._ws_refused.get(shard.name, 0):
                self._ws_refused[shard.name] = refused
                self._alert_soon(
                    f"{feed.name}: websocket {shard.name} subscription refused",
                    f"{refused} refused so far; last: {shard.stats.last_error or '-'}",
                    key=f"ws-refused:{shard.name}",
                    level="warning",
                )
            for stream, said in shard.rejected.items():
                if (shard.name, stream) not in self._ws_rejected:
                    self._ws_rejected.add((shard.name, stream))
                    self._alert_soon(
                        f"{feed.name}: websocket stream {stream} refused by the server",
                        f"{said}; not subscribed again: its candles come from REST at each period check",
                        key=f"ws-rejected:{feed.name}:{stream}",
                    )
            down = shard.stats.down_since
            if down is None or now - down <= self.config.ws_down_alert_s or not shard.desired:
                continue
            if now - self._ws_alerted.get(shard.name, -1e18) >= self.config.ws_down_alert_s:
                self._ws_alerted[shard.name] = now
                self._alert_soon(
                    f"{feed.name}: websocket {shard.name} down",
                    f"down for {time.monotonic() - down:.0f}s; last error: {shard.stats.last_error or '-'}",
                    key=f"ws-down:{shard.name}",
                )

    async def _shutdown(self) -> None:
        for task in self._tasks:
            # (a learned cap being saved is kept for the next run)
            if not task.done() and not task.get_name().startswith(("writer", "alert", "ws-cap-save")):
                task.cancel()
        for feed in self.feeds:
            if feed.pool is not None:
                await feed.pool.stop()
        for feed in self.feeds:
            feed.closing = True
            feed.appender.close()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=60.0)
        for t in self._tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # all already finished or cancelled
        for feed in self.feeds:
            if feed.book is None:  # start-up failed before this feed began
                feed.writer.close()
                continue
            if feed.appender.pending:  # a writer that died: flush what it left
                await self._flush(feed)
            try:
                await self._compact(feed)
            except (LakeError, OSError) as exc:
                # the tail keeps the candles (readers see them); the next start compacts them
                log.error("%s: compaction at shutdown failed: %s", feed.name, exc)
            with contextlib.suppress(LakeError, OSError):
                await self._publish(feed)
            await self._save_provisional(feed, force=True)
            if feed.offsets is not None:
                await feed.offsets.build_pending()
            feed.writer.close()
            log.info("%s: stopped; watermark %s", feed.name, iso(feed.published))
        # alerts raised by the flush above go out before run() closes the alerter's session
        late = [t for t in self._tasks if not t.done()]
        if late:
            await asyncio.wait(late, timeout=self.alerter.timeout + 5.0)

    # -- exchangeInfo ------------------------------------------------------------------------------
    async def _snapshot(self, market: str, max_age_ms: int) -> ExchangeSnapshot:
        async with self._snapshot_lock[market]:
            snap = self._snapshots.get(market)
            client = self.clients[market]
            if snap is None or client.server_now_ms() - snap.server_time_ms > max_age_ms:
                snap = await fetch_exchange_info(client)
                self._snapshots[market] = snap
                tts = [f.tt.name for f in self.feeds if f.tt.market_name == market]
                written = await asyncio.to_thread(write_snapshot, self.lfs, snap, sorted(set(tts)))
                if written:
                    log.info("exchange_info updated for %s", ", ".join(written))
            return snap

    def _trading(self, feed: Feed, snap: ExchangeSnapshot) -> set[str]:
        wanted = self.config.symbols
        if wanted is not None and self._shared_whitelist:
            # one --symbols list for several trade types: each takes the symbols it lists
            # (_check_whitelist has made sure every symbol belongs to one of them)
            wanted = tuple(snap.listed(feed.tt, wanted))
        uni = universe(snap, feed.tt, wanted)
        return {s for s in uni.symbols if uni.info[s].status == "TRADING"}

    @property
    def _shared_whitelist(self) -> bool:
        return len({f.tt.name for f in self.feeds}) > 1

    async def _check_whitelist(self) -> None:
        """With ``--symbols`` and several trade types, a symbol none of them lists is an error (a
        typo), named before anything starts."""
        wanted = self.config.symbols
        if wanted is None or not self._shared_whitelist:
            return
        claimed: set[str] = set()
        for feed in self.feeds:
            snap = await self._snapshot(feed.tt.market_name, max_age_ms=60_000)
            claimed.update(snap.listed(feed.tt, wanted))
        absent = [x for x in wanted if x not in claimed]
        if absent:
            types = ", ".join(sorted({f.tt.name for f in self.feeds}))
            raise NotFoundError(f"unknown {types} symbol(s): {', '.join(absent)}")

    async def _refresh(self, feed: Feed) -> None:
        assert feed.book is not None and feed.pool is not None
        try:
            snap = await self._snapshot(feed.tt.market_name, max_age_ms=feed.iv_ms // 2)
            trading = self._trading(feed, snap)
        except LakeError as exc:
            self._alert_soon(f"{feed.name}: exchangeInfo refresh failed", str(exc), key=f"exinfo:{feed.name}")
            return
        added, removed = sorted(trading - feed.live), sorted(feed.live - trading)
        if not added and not removed:
            return
        if removed:
            feed.live.difference_update(removed)
            feed.stats.delisted += len(removed)
            log.info("%s: no longer trading, unsubscribed: %s", feed.name, ", ".join(removed))
        if added:
            feed.live.update(added)
            feed.appender.symbols.update(added)
            feed.stats.listed += len(added)
            log.info("%s: new symbols, subscribed and catching up: %s", feed.name, ", ".join(added))
        await feed.pool.update(add=added, remove=removed)
        if added:
            # The period that just closed is checked for them too if still pending; their history is
            # caught up to its end, not its start: once complete it is pruned from the book, and a
            # listing that began inside it (any interval above 1m, or exchangeInfo showing it a
            # period late, or a symbol back from a halt) has a candle there whose closing event went
            # out before the subscription.
            last = feed.book.last_opened
            for sym in added:
                feed.book.add_symbol(sym, last)
            self._spawn(self._catchup_new(feed, added, last + feed.iv_ms), f"catch-up new {feed.name}")

    # -- the writer (dispatcher) -------------------------------------------------------------------
    async def _writer_loop(self, feed: Feed) -> None:
        """Drain the appender into tail files. Batches of a local lake are written on the event loop
        itself (``KlineWriter.write``), one after the other; writes that go to a thread (object
        stores, large batches) may run two at a time, so candles arriving while one file is being
        uploaded go into the next file instead of waiting for it."""
        retries: Counter[tuple[str, int]] = Counter()
        slots = asyncio.Semaphore(2)
        running: set[asyncio.Task[None]] = set()
        # A batch task that dies of an unexpected error fails the writer (and so the run), as the
        # writer itself would; it must not vanish with the task.
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None and not failed.done():
                failed.set_exception(task.exception())  # type: ignore[arg-type]

        try:
            while True:
                waiter = asyncio.ensure_future(feed.appender.wait_pending())
                await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
                if failed.done():
                    waiter.cancel()
                    failed.result()
                if not feed.appender.pending:
                    if feed.closing:
                        return
                    continue
                await slots.acquire()
                batch = feed.appender.take()  # everything buffered while waiting for a slot
                if not batch:
                    slots.release()
                    continue
                task = asyncio.ensure_future(self._write_batch(feed, batch, retries, slots))
                running.add(task)
                task.add_done_callback(done)
        finally:
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            if failed.done() and not failed.cancelled():
                failed.exception()  # retrieved (re-raised above when it happened)

    async def _write_batch(
        self,
        feed: Feed,
        batch: dict[tuple[str, int], tuple[tuple[Any, ...], float]],
        retries: Counter[tuple[str, int]],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            rows: dict[str, list[tuple[Any, ...]]] = {}
            recv: dict[str, list[float]] = {}
            for (sym, _t), (row, r) in sorted(batch.items()):
                rows.setdefault(sym, []).append(row)
                recv.setdefault(sym, []).append(r)
            feed.inflight |= batch.keys()
            try:
                out = await self._store(feed, rows, "ws")
            finally:
                feed.inflight -= batch.keys()
        finally:
            slots.release()
        for sym, finished in out.items():
            for r in recv.get(sym, []):
                feed.stats.latencies.append(finished - r)
        failed = {k: v for k, v in batch.items() if k[0] not in out}
        for key in batch.keys() - failed.keys():
            retries.pop(key, None)  # (the counter lives as long as the run: only failures stay in it)
        again = {}
        for key, value in failed.items():
            retries[key] += 1
            if retries[key] <= 3:
                again[key] = value
            else:
                del retries[key]  # given up: the period check fetches it over REST
        if again and not feed.closing:
            await asyncio.sleep(0.2)
            feed.appender.put_back(again)

    async def _compactor(self, feed: Feed) -> None:
        """Compact every ``compact_every_s``, and after each complete period when offsets are live
        (they are built from the partitions).

        A due compaction that could overlap a closing burst (a period still incomplete, or the next
        boundary near) waits for the next period to complete, at most one period: compaction is a
        thread of Python work, and during a burst it takes the GIL from the event loop in 5 ms
        slices, which the burst's candles would wait for.
        """
        while not self._stop.is_set():
            woken = await self._wait_any([feed.compact_wake], seconds=self.config.compact_every_s)
            if not woken and not self._between_bursts(feed):
                feed.period_done.clear()
                await self._wait_any([feed.period_done], seconds=max(1.0, self._real_s(feed, feed.iv_ms)))
            if self._stop.is_set():
                return
            feed.compact_wake.clear()
            try:
                await self._compact(feed)
            except (LakeError, OSError) as exc:
                log.error("%s: compaction failed (retried next time): %s", feed.name, exc)
                self._alert_soon(f"{feed.name}: compaction failed", str(exc), key=f"compact:{feed.name}")

    @staticmethod
    def _real_s(feed: Feed, ms: float) -> float:
        """Real seconds of ``ms`` of exchange time (the simulator's clock may run faster)."""
        return ms / 1000 / max(feed.client.clock.rate, 1e-6)

    def _between_bursts(self, feed: Feed) -> bool:
        """Whether every registered period is complete and a compaction started now would end well
        before the next boundary (twice the last one's duration, and 2 s or a quarter of the period)."""
        book = feed.book
        if book is None or book.pending():
            return False
        now = feed.now_ms()
        margin = max(min(2.0, self._real_s(feed, feed.iv_ms) / 4), 2 * feed.last_compact_s)
        return self._real_s(feed, feed.iv.floor(now) + feed.iv_ms - now) > margin

    async def _wait_any(self, events: list[asyncio.Event], seconds: float) -> bool:
        """Wait for one of ``events`` or the stop, at most ``seconds``; whether one was set."""
        waits = [asyncio.ensure_future(e.wait()) for e in [*events, self._stop]]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return any(e.is_set() for e in events)

    async def _compact(self, feed: Feed) -> None:
        """Move the tail into the partitions; the live offsets of the moved symbols are rebuilt."""
        async with feed.compact_lock:
            t0 = time.monotonic()
            res = await asyncio.to_thread(feed.writer.compact, self.config.tail_grace_s)
            feed.last_compact_s = time.monotonic() - t0
        if res.failed:
            first = next(iter(res.failed.items()))
            self._alert_soon(
                f"{feed.name}: compaction failed for {len(res.failed)} symbols",
                f"{first[0]}: {first[1]}",
                key=f"compact:{feed.name}",
            )
        moved = feed.writer.take_compacted()
        if moved and feed.offsets is not None:
            feed.offsets.note(moved)
        if res.files_compacted:
            log.debug(
                "%s: compacted %d tail files (%d candles, %d symbols), retired %d",
                feed.name,
                res.files_compacted,
                res.rows,
                len(res.symbols),
                res.files_retired,
            )

    async def _flush(self, feed: Feed) -> None:
        batch = feed.appender.take()
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for (sym, _t), (row, _r) in sorted(batch.items()):
            rows.setdefault(sym, []).append(row)
        await self._store(feed, rows, "ws")

    async def _store(self, feed: Feed, rows: dict[str, Any], source: str) -> dict[str, float]:
        """Write rows per symbol, then mark them stored; returns symbol → time written (perf_counter)."""
        if not rows:
            return {}
        assert feed.book is not None
        out = await feed.writer.write(rows, source)
        completed: list[int] = []
        for sym, opens in out.stored.items():
            top = max(opens)
            if top > feed.book.last_opened:
                feed.book.open_period(top, feed.live)  # a closed candle proves its period closed
            for t in opens:
                st = feed.book.state(t)
                if st is not None and not st.complete:  # (a complete period's count is logged and gone)
                    feed.stats.sources.setdefault(t, Counter())[source] += 1
            completed += feed.book.mark_stored(sym, opens)
        for sym, err in out.failed.items():
            self._alert_soon(f"{feed.name}: write failed for {sym}", err, key=f"write:{feed.name}")
        for p in sorted(set(completed)):
            self._period_ready(feed, p)
        if completed and feed.offsets is not None:
            feed.compact_wake.set()
        if completed:
            await self._publish(feed)
        return out.finished

    def _period_ready(self, feed: Feed, p: int) -> None:
        feed.stats.periods_complete += 1
        feed.period_done.set()
        self._collect_soon(feed)
        src = feed.stats.sources.pop(p, Counter())
        lag = (feed.now_ms() - (p + feed.iv_ms)) / 1000
        detail = ", ".join(f"{k} {v}" for k, v in sorted(src.items()))
        st = feed.book.state(p) if feed.book else None
        n = len(st.expected) if st else len(feed.live)
        log.info(
            "%s %s: %d/%d symbols ready (%s) %.1fs after close", feed.name, iso(p), n, n, detail or "-", lag
        )

    def _collect_soon(self, feed: Feed) -> None:
        """A full garbage collection a third of a period after this period completed: between two
        closing bursts of every feed on the same boundaries (see ``_gc_checkpoint``); the C heap's
        free pages are then given back (``trim_heap``)."""
        now = time.monotonic()
        if self._gc_thresholds is None or now - self._last_full_gc < _FULL_GC_EVERY_S:
            return
        self._last_full_gc = now
        asyncio.get_running_loop().call_later(self._real_s(feed, feed.iv_ms) / 3, _full_collect)

    async def _publish(self, feed: Feed) -> None:
        assert feed.book is not None
        async with feed.publish_lock:
            wm = feed.book.watermark()
            if wm is None or (feed.published is not None and wm <= feed.published):
                return
            await asyncio.to_thread(
                write_watermark,
                self.lfs,
                feed.tt.name,
                feed.iv.name,
                wm,
                symbols=len(feed.live),
                updated_at_ms=feed.now_ms(),
                scope=self.config.symbols,
            )
            feed.published = wm

    # -- catch-up ----------------------------------------------------------------------------------
    async def _initial_catchup(self, feed: Feed, symbols: list[str], end: int, last_closed: int) -> None:
        if not await self._catchup(feed, symbols, end):
            return  # stopped before it finished: the watermark must not reach the catch-up's end
        assert feed.book is not None
        if feed.offsets is not None:
            feed.offsets.note(symbols)  # the catch-up wrote through #4's backfill, not the writer
        feed.book.catchup_done()
        feed.catchup_done.set()
        thresholds = _gc_checkpoint()
        if self._gc_thresholds is None:  # the first feed's: a later feed's are already raised
            self._gc_thresholds = thresholds
        await self._publish(feed)
        log.info("%s: catch-up done; watermark %s", feed.name, iso(feed.published))
        if last_closed >= end and not self._stop.is_set():
            await self._check(feed, last_closed)  # periods that closed while we started

    async def _catchup(self, feed: Feed, symbols: list[str], end: int) -> bool:
        """Make every symbol complete before ``end`` over REST (#4's backfill); retries until it is.

        Returns False when the runner stopped first."""
        wm = feed.published
        starts = await asyncio.to_thread(self._catchup_starts, feed, symbols, end, wm)
        groups: dict[int, list[str]] = {}
        for sym, start in starts.items():
            if start is not None:
                groups.setdefault(start, []).append(sym)
                feed.pending_catchup[sym] = start
        await self._save_pending(feed)
        for start, syms in sorted(groups.items()):
            attempt = 0
            while not self._stop.is_set():
                try:
                    report = await backfill(
                        self.lfs,
                        [feed.tt.name],
                        feed.iv.name,
                        start=start,
                        end=end,
                        symbols=sorted(syms),
                        clients={feed.tt.market_name: feed.client},
                        unknown_symbols="skip",
                        write_threads=2,
                        settle_ms=_SETTLE_MS,
                    )
                except Exception as exc:
                    if not _transient(exc):
                        raise
                    attempt += 1
                    text = _describe(exc)
                    if attempt >= 3 or not _torn_read(exc):
                        self._alert_soon(
                            f"{feed.name}: catch-up from {iso(start)} incomplete ({len(syms)} symbols)",
                            text[:1000],
                            key=f"catchup:{feed.name}",
                        )
                    else:
                        log.warning(
                            "%s: catch-up read raced with a write, retrying: %s", feed.name, text[:300]
                        )
                    await self._sleep(min(30.0, 0.5 * 2**attempt))
                    continue
                feed.stats.catchup_rows += report.candles
                for sym in syms:
                    if feed.pending_catchup.get(sym) == start:
                        del feed.pending_catchup[sym]
                await self._save_pending(feed)
                break
            else:
                return False
        log.info("%s: %d symbols complete before %s", feed.name, len(symbols), iso(end))
        return True

    def _stragglers(self, feed: Feed, wm: int | None) -> list[str]:
        """Stored symbols no longer trading that were complete at the last watermark: the previous run
        may have stopped before their last candles (a delisting while nobody was listening)."""
        if wm is None:
            return []
        wanted = set(self.config.symbols) if self.config.symbols else None
        out: list[str] = []
        for tt, iv, sym in list_series(self.lfs):
            if (tt, iv) != (feed.tt.name, feed.iv.name) or sym in feed.live or (wanted and sym not in wanted):
                continue
            last = last_stored(self.lfs, tt, iv, sym)
            if last is not None and last >= wm:
                out.append(sym)
        return sorted(out)

    async def _catchup_new(self, feed: Feed, symbols: list[str], end: int) -> None:
        if await self._catchup(feed, symbols, end) and feed.offsets is not None:
            feed.offsets.note(symbols)

    def _catchup_starts(
        self, feed: Feed, symbols: list[str], end: int, wm: int | None
    ) -> dict[str, int | None]:
        if not feed.pending_loaded:
            # what an earlier run started and never finished; kept for symbols not followed now
            feed.pending_catchup.update(read_pending_catchup(self.lfs, feed.tt.name, feed.iv.name))
            feed.pending_loaded = True
        pending = dict(feed.pending_catchup)
        out: dict[str, int | None] = {}
        for sym in symbols:
            start = catchup_start(
                feed.iv,
                end,
                last=last_stored(self.lfs, feed.tt.name, feed.iv.name, sym),
                watermark=wm,
                history=self.config.history,
            )
            earlier = pending.get(sym)
            if earlier is not None and earlier < end:
                start = earlier if start is None else min(start, earlier)
            out[sym] = start
        return out

    def _record_empty(self, feed: Feed, proven: Mapping[str, list[EmptyRange]]) -> None:
        for sym, ranges in proven.items():
            add_empty_ranges(self.lfs, feed.tt.name, feed.iv.name, sym, ranges)

    async def _save_pending(self, feed: Feed) -> None:
        """Persist the feed's unfinished catch-up starts, so a restart resumes them."""
        async with feed.pending_lock:
            await asyncio.to_thread(
                write_pending_catchup, self.lfs, feed.tt.name, feed.iv.name, dict(feed.pending_catchup)
            )

    async def _save_provisional(self, feed: Feed, *, force: bool = False) -> None:
        """Keep the lake's record of ``feed.recent_rest`` up to date (see ``read_provisional``)."""
        keys = frozenset(feed.recent_rest)
        if keys == feed.provisional_saved and not force:
            return
        feed.provisional_saved = keys
        rows = dict(feed.recent_rest)
        feed.provisional_seq += 1
        seq = feed.provisional_seq

        def write() -> None:
            with feed.provisional_lock:
                if seq <= feed.provisional_written:
                    return  # a newer record is there already
                write_provisional(self.lfs, feed.tt.name, feed.iv.name, rows)
                feed.provisional_written = seq

        try:
            await asyncio.to_thread(write)
        except (LakeError, OSError) as exc:
            feed.provisional_saved = frozenset()  # written again next time
            log.warning("%s: could not record the candles to ask again: %s", feed.name, exc)

    async def _alarm(self, feed: Feed, boundary: int) -> None:
        """At each period boundary (server time): register the period, after the grace time check it,
        then refresh exchangeInfo (``boundary`` is the first one to wait for)."""
        assert feed.book is not None
        cfg = self.config
        n = 0
        min_gap = int(cfg.exchange_info_min_s * 1000)
        refreshed = -min_gap
        while not self._stop.is_set():
            if not await self._sleep_until(feed, boundary):
                return
            now = feed.now_ms()
            if now - boundary >= feed.iv_ms:  # late (a stall or a clock jump): jump to the latest
                skipped = (feed.iv.floor(now) - boundary) // feed.iv_ms
                boundary += skipped * feed.iv_ms
                feed.stats.periods_checked += skipped
            period = boundary - feed.iv_ms
            feed.book.open_period(period, feed.live)
            n += 1
            if not await self._sleep_until(feed, boundary + int(cfg.grace_s * 1000)):
                return
            await self._check(feed, period)
            feed.stats.periods_checked += 1
            # After the check, not at the boundary: fetching and parsing exchangeInfo on the event
            # loop while every symbol's closing candle arrives would delay them all.
            if (
                cfg.exchange_info_every
                and n % cfg.exchange_info_every == 0
                and boundary - refreshed >= min_gap
            ):
                refreshed = boundary
                await self._refresh(feed)
            boundary += feed.iv_ms

    async def _check(self, feed: Feed, period: int) -> None:
        """Repair every incomplete period up to ``period``; retry until complete or the next boundary."""
        async with feed.check_lock:
            await self._check_locked(feed, period)

    def _unresolved(self, feed: Feed, up_to: int) -> dict[str, list[int]]:
        """Missing (symbol, period) ≤ ``up_to`` that the websocket path is not about to write and
        that closed surely before now: an empty REST answer for them proves there is no candle."""
        assert feed.book is not None
        clock = feed.client.clock
        closed_before = feed.now_ms() - max(_CLOSE_MARGIN_MS, 2 * clock.uncertainty_ms())
        out: dict[str, list[int]] = {}
        for sym, opens in feed.book.missing_by_symbol(up_to).items():
            left = [
                t
                for t in opens
                if t + feed.iv_ms <= closed_before
                and not feed.appender.holds(sym, t)
                and (sym, t) not in feed.inflight
            ]
            if left:
                out[sym] = left
        return out

    async def _reconfirm(self, feed: Feed) -> None:
        """Ask REST again for the candles it gave within ``_ABSENT_SETTLE_MS`` of their close, once
        they are that old, unless their closing event replaced them meanwhile; a changed answer is
        written (a later write wins). The reference's advice: close by the clock, then reconcile
        over REST. A failed request (or write) leaves them for the next period check, up to
        ``_RECONFIRM_TRIES`` checks that asked for them.

        Counted in checks that asked, not in periods since the close: a 1s feed (or any feed whose
        grace is longer than its interval) is checked once per several periods, and an age limit
        gave up on most candles before they were ever asked again."""
        failures = feed.reconfirm_failures
        for k in [k for k in failures if k not in feed.recent_rest]:
            del failures[k]  # replaced by its closing event meanwhile
        due_before = feed.now_ms() - _ABSENT_SETTLE_MS - feed.iv_ms  # opens of candles now settled
        due: dict[str, list[int]] = {}
        for sym, t in feed.recent_rest:
            if t <= due_before:
                due.setdefault(sym, []).append(t)
        if not due:
            return
        ranges = {s: (min(ts), max(ts) + feed.iv_ms) for s, ts in due.items()}
        results, errors = await fetch_many(
            feed.client, feed.iv.name, ranges, concurrency=self.config.rest_concurrency
        )
        changed: dict[str, list[list[Any]]] = {}
        for sym, res in results.items():
            for r in res.rows:
                old = feed.recent_rest.get((sym, int(r[0])))
                if old is not None and candle_differs(old, r):
                    changed.setdefault(sym, []).append(r)
        stored: dict[str, float] = {}
        if changed:
            n = sum(len(v) for v in changed.values())
            log.info("%s: %d candle(s) REST gave early changed since; rewritten", feed.name, n)
            stored = await self._store(feed, changed, "rest")
            feed.stats.rest_reconfirmed += sum(len(changed[s]) for s in stored)
        gave_up: list[tuple[str, int]] = []
        for sym, ts in due.items():
            done = sym not in errors and (sym not in changed or sym in stored)
            for t in ts:
                key = (sym, t)
                if key not in feed.recent_rest:  # its closing event came while REST was asked
                    failures.pop(key, None)
                    continue
                if not done:
                    failures[key] = failures.get(key, 0) + 1
                    if failures[key] < _RECONFIRM_TRIES:
                        continue
                    gave_up.append(key)
                del feed.recent_rest[key]
                failures.pop(key, None)
        if gave_up:
            log.warning(
                "%s: REST did not answer again for %d early candle(s) (e.g. %s %s); kept as first given",
                feed.name,
                len(gave_up),
                gave_up[0][0],
                iso(gave_up[0][1]),
            )
        await self._save_provisional(feed)

    async def _check_locked(self, feed: Feed, period: int) -> None:
        assert feed.book is not None
        if feed.recent_rest:
            await self._reconfirm(feed)
        deadline = period + 2 * feed.iv_ms  # the next boundary's check takes over from there
        attempt = 0
        logged = False
        settling: set[tuple[str, int]] = set()  # answered empty, too young to be written off yet
        while True:
            if not feed.book.pending(period) or self._stop.is_set():
                return
            todo = self._unresolved(feed, period)
            summary = feed.book.summary(period)
            if summary is not None and not logged:
                logged = True
                ready, total = summary
                state = feed.book.state(period)
                fetch = sorted(s for s, ts in todo.items() if period in ts)
                writing = len(state.missing) - len(fetch) if state is not None else 0
                log.info(
                    "%s %s: %d/%d symbols ready%s; fetching %d over REST%s",
                    feed.name,
                    iso(period),
                    ready,
                    total,
                    f", {writing} being written" if writing > 0 else "",
                    len(fetch),
                    f" ({', '.join(fetch[:8])}{' …' if len(fetch) > 8 else ''})" if fetch else "",
                )
            ok, settling = await self._repair(feed, todo) if todo else (True, set())
            if not feed.book.pending(period) or self._stop.is_set():
                return
            # only what this round asked for: a candle too young for it a moment ago (closing
            # events may still come) is no failure of the repair, and the next round asks for it
            tried = {(s, t) for s, ts in todo.items() for t in ts}
            still = {
                s: left
                for s, ts in self._unresolved(feed, period).items()
                if (left := [t for t in ts if (s, t) in tried and (s, t) not in settling])
            }
            if still:  # not merely waiting for the writer or for an empty answer to settle
                attempt += 1
                text = ", ".join(f"{s} ({len(p)} periods)" for s, p in sorted(still.items())[:10])
                feed.stats.incomplete_alerts += 1
                self._alert_soon(
                    f"{feed.name}: period {iso(period)} incomplete after repair",
                    f"{len(still)} symbols still missing: {text}" + ("" if ok else " (REST errors)"),
                    key=f"incomplete:{feed.name}",
                )
            if feed.now_ms() >= deadline:
                return
            if still:
                # doubling, but at most a minute (or a quarter period, for short intervals): on 1h
                # and 1d feeds a quarter period alone let an outage's recovery wait 15 min / 6 h
                pause = min(
                    feed.client.clock.real_seconds(feed.iv_ms / 4), _REPAIR_PAUSE_MAX_S, 0.5 * 2**attempt
                )
            elif settling:  # asked again once the first of them is old enough (or its candle came)
                due = min(t for _s, t in settling) + feed.iv_ms + _ABSENT_SETTLE_MS
                pause = max(0.05, feed.client.clock.real_seconds(due - feed.now_ms()))
            else:
                pause = 0.05
            if not await self._sleep(pause):
                return

    async def _repair(self, feed: Feed, missing: dict[str, list[int]]) -> tuple[bool, set[tuple[str, int]]]:
        """Fetch missing (symbol → periods) over REST; store the rows, mark proven-empty slots absent.

        Returns whether every request succeeded, and the (symbol, open) answered empty that closed
        less than ``_ABSENT_SETTLE_MS`` ago (still missing: asked again later)."""
        assert feed.book is not None
        if not missing:
            return True, set()
        ranges = {s: (opens[0], opens[-1] + feed.iv_ms) for s, opens in missing.items()}
        settled = feed.now_ms() - _ABSENT_SETTLE_MS  # as of the requests, not of their answers
        results, errors = await fetch_many(
            feed.client, feed.iv.name, ranges, concurrency=self.config.rest_concurrency
        )
        # candles the websocket delivered while the requests were in flight (stored, buffered or
        # being written) are not written again: a REST row written after them would win over them
        fetched: dict[str, list[list[Any]]] = {}
        for sym, res in results.items():
            rows = [
                r
                for r in res.rows
                if not feed.book.is_stored(sym, int(r[0]))
                and not feed.appender.holds(sym, int(r[0]))
                and (sym, int(r[0])) not in feed.inflight
            ]
            if rows:
                fetched[sym] = rows
        # A closing event that comes late for a candle REST gave soon after its close may carry
        # other (final) values: remembered until _ABSENT_SETTLE_MS after the close (Feed._supersedes).
        # Registered before the store, which marks the candles stored and may then wait (the
        # watermark write): an event arriving meanwhile must find them.
        young = feed.now_ms() - _ABSENT_SETTLE_MS - feed.iv_ms
        for sym, rows in fetched.items():
            for r in rows:
                if int(r[0]) >= young:
                    feed.recent_rest[(sym, int(r[0]))] = r
        # recorded before they are visible: a run killed right after the write leaves them listed
        await self._save_provisional(feed)
        stored = await self._store(feed, fetched, "rest")
        for sym in fetched.keys() - set(stored):  # not written: nothing to supersede
            for r in fetched[sym]:
                feed.recent_rest.pop((sym, int(r[0])), None)
        feed.stats.rest_repaired += sum(len(fetched[s]) for s in stored)
        completed: list[int] = []
        settling: set[tuple[str, int]] = set()
        proven: dict[str, list[EmptyRange]] = {}
        for sym, res in results.items():
            if sym in fetched and sym not in stored:
                continue  # the write failed: stays missing
            empty = res.empty_opens(feed.iv)
            absent = [t for t in missing[sym] if t in empty and t + feed.iv_ms <= settled]
            settling.update((sym, t) for t in missing[sym] if t in empty and t + feed.iv_ms > settled)
            if absent:
                feed.stats.rest_absent += len(absent)
                completed += feed.book.mark_absent(sym, absent)
                proven[sym] = [EmptyRange(t, t + feed.iv_ms) for t in absent]
        if proven:
            # as the backfill does: coverage, status and the next catch-up then know these slots
            # are empty on the exchange, not holes of the lake
            try:
                await asyncio.to_thread(self._record_empty, feed, proven)
            except LakeError as exc:
                log.warning("%s: could not record confirmed-empty slots: %s", feed.name, exc)
        for p in sorted(set(completed)):
            self._period_ready(feed, p)
        if completed:
            await self._publish(feed)
        if errors:
            feed.stats.repair_failures += len(errors)
            log.warning(
                "%s: REST repair failed for %d symbols: %s",
                feed.name,
                len(errors),
                "; ".join(f"{s}: {e}" for s, e in sorted(errors.items())[:3]),
            )
        return not errors, settling

    # -- reporting ---------------------------------------------------------------------------------
    def health(self, feed: Feed) -> dict[str, Any]:
        lat = sorted(feed.stats.latencies)
        pend = feed.book.pending() if feed.book else []
        return {
            "feed": feed.name,
            "live": len(feed.live),
            "ws": feed.pool.health() if feed.pool else {},
            "appender": feed.appender.stats.as_dict(),
            "writes": feed.writer.writes,
            "write_errors": feed.writer.errors,
            "compactions": feed.writer.compactions,
            "partition_writes": feed.writer.partition_writes,
            "tail_files_retired": feed.writer.tail_files_retired,
            "pending_periods": len(pend),
            "watermark": iso(feed.published),
            "server_time": iso(feed.now_ms()),
            "latency_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
            "latency_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
            "rest": feed.client.stats.as_dict(),
            "offsets": dataclasses.asdict(feed.offsets.stats) if feed.offsets else None,
            **{k: v for k, v in dataclasses.asdict(feed.stats).items() if k not in ("latencies", "sources")},
        }

    def summary(self) -> dict[str, Any]:
        return {
            "stop_reason": self.stop_reason,
            "feeds": [self.health(f) for f in self.feeds],
            "alerts": dataclasses.asdict(self.alerter.stats),
        }


async def run_live(settings: Settings, config: LiveConfig, *, install_signals: bool = True) -> dict[str, Any]:
    """Run ``lake live`` in the current event loop; SIGINT/SIGTERM flush and return normally."""
    import signal

    runner = LiveRunner(settings, config)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, runner.stop, f"signal {signal.Signals(sig).name}")
                installed.append(sig)
    try:
        return await runner.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
