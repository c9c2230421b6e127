"""One live feed (trade type, interval): its configuration, state and counters.

``LiveConfig`` holds what ``lake live`` runs (the CLI's flags, validated). A ``Feed`` bundles the
parts ``lake.live.runner`` drives for one (trade type, interval): the appender (dispatcher's hot
path), the writer, the period book, the websocket pool and the live offsets. ``FeedLock`` makes
sure one process at a time follows a feed of a lake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import TradeType, get_trade_type
from lake.errors import ConfigError, ValidationError
from lake.ingest.rest_client import RestClient
from lake.live.appender import Appender, KlineWriter
from lake.live.offsets import LiveOffsets
from lake.live.period import PeriodBook
from lake.live.ws import WsPool
from lake.store.fs import LakeFS
from lake.transform.offsets import offset_plan

__all__ = ["Feed", "FeedLock", "FeedStats", "LiveConfig", "iso"]


def iso(ms: int | float | None) -> str:
    """Server time in ms as ``YYYY-MM-DDTHH:MM:SSZ`` (``-`` for None), for log lines."""
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LiveConfig:
    """What ``lake live`` runs (the CLI's flags)."""

    trade_types: tuple[str, ...]
    intervals: tuple[str, ...] = ("5m",)
    symbols: tuple[str, ...] | None = None  # whitelist; None: every TRADING symbol of the trade type
    offsets: tuple[str, ...] = ()
    grace_s: float = 10.0  # server seconds after a boundary before missing candles are fetched
    periods: int | None = None  # stop after this many period boundaries
    duration_s: float | None = None  # stop after this many real seconds
    history: int = 1500  # candles fetched for a symbol the lake holds nothing of
    exchange_info_every: int = 1  # refresh exchangeInfo every N periods, at most once a minute (0: never)
    # ... and at most every this many server seconds: a 1s feed would otherwise fetch it every
    # second (spot: weight 20 and a multi-megabyte answer each time)
    exchange_info_min_s: float = 60.0
    writer_threads: int = 8
    compact_every_s: float = 60.0  # real seconds between moves of the tail into the partitions
    tail_grace_s: float = 120.0  # a compacted tail file is deleted this long after (running queries)
    rest_concurrency: int = 16
    health_every_s: float = 30.0
    ws_lifetime_s: float = 23.5 * 3600
    ws_url_streams: int = 200
    ws_subscribe_batch: int = 200
    ws_down_alert_s: float = 60.0
    ws_backoff_cap_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.trade_types:
            raise ValidationError("give at least one --type")
        if not self.intervals:
            raise ValidationError("give an --interval")
        for t in self.trade_types:
            tt = get_trade_type(t)
            for i in self.intervals:
                iv = parse_interval(i, spot=tt.is_spot)
                if iv.ms is None:
                    raise ValidationError("lake live needs a fixed-length interval (not 1M)")
        if self.compact_every_s <= 0 or self.tail_grace_s < 0:
            raise ValidationError("--compact-every must be > 0 and the tail grace >= 0")
        if self.grace_s < 0:
            raise ValidationError("--grace must be >= 0")
        if self.periods is not None and self.periods < 1:
            raise ValidationError("--periods must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValidationError("--duration must be > 0")
        if self.history < 0:
            raise ValidationError("--history must be >= 0")
        if self.exchange_info_every < 0 or self.exchange_info_min_s < 0:
            raise ValidationError("--exchange-info-every and the minimum refresh gap must be >= 0")
        for target in self.offsets:
            self.offset_base(target)  # some live interval must divide every target

    def offset_base(self, target: str) -> str:
        """The live interval a ``--offsets`` target is built from: the coarsest one it is a whole
        multiple of (``lake offsets``' default base too). One base per target: the offsets table
        keeps a target's bins from a single base, so two feeds building it would fight."""
        fits: list[tuple[int, str]] = []
        errors: list[str] = []
        for i in self.intervals:
            try:
                plan = offset_plan(target, i)
            except ValidationError as exc:
                errors.append(str(exc))
                continue
            fits.append((plan.base.ms or 0, i))
        if not fits:
            unique = list(dict.fromkeys(errors))
            raise ValidationError(
                unique[0] if len(unique) == 1 else f"--offsets {target}: " + "; ".join(unique)
            )
        return max(fits)[1]


class FeedLock:
    """One ``lake live`` per feed and lake: an exclusive ``flock`` held for the whole run."""

    def __init__(self, lfs: LakeFS, trade_type: str, interval: str) -> None:
        self.path = Path(lfs.lock_dir) / "live" / trade_type / f"{interval}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise ConfigError(f"another `lake live` is already running this feed (lock {self.path})") from exc
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


@dataclass
class FeedStats:
    periods_checked: int = 0
    periods_complete: int = 0
    rest_repaired: int = 0  # candles stored from REST by the period check
    rest_reconfirmed: int = 0  # of those, given within 30 s of their close and changed when asked again
    rest_absent: int = 0  # (symbol, period) the exchange has no candle for
    catchup_rows: int = 0
    repair_failures: int = 0
    incomplete_alerts: int = 0
    listed: int = 0
    delisted: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))  # receipt → stored (s)
    sources: dict[int, Counter[str]] = field(default_factory=dict)  # period → where its candles came from


class Feed:
    """One (trade type, interval) being kept live."""

    def __init__(
        self,
        lfs: LakeFS,
        config: LiveConfig,
        tt: TradeType,
        iv: Interval,
        clients: Mapping[str, RestClient],
        alert: Callable[[str, str, str], None],
    ) -> None:
        assert iv.ms is not None
        self.tt = tt
        self.iv = iv
        self.iv_ms: int = iv.ms
        self.name = f"{tt.name} {iv.name}"
        self._clients = clients
        self.live: set[str] = set()
        self.appender = Appender(
            tt.name,
            iv.name,
            is_stored=self._is_stored,
            supersedes=self._supersedes,
            latest_close=self.latest_close_ms,
        )
        # candles repaired over REST within seconds of their close, by (symbol, open): a closing
        # event can come ~24 s late (binance.md §6.7), and if REST answered before the exchange's
        # kline was final, that event's values are the right ones; without one, REST is asked
        # again once the candle is 30 s old (LiveRunner._repair fills this, _reconfirm empties it)
        self.recent_rest: dict[tuple[str, int], Sequence[Any]] = {}
        self.reconfirm_failures: dict[tuple[str, int], int] = {}  # checks whose REST request failed
        # recent_rest is also kept in the lake (lake.live.repair.write_provisional) so that a run
        # stopped before asking again leaves the job to the next one: the keys last written, and a
        # sequence so that a write cancelled in its thread never lands over a newer one
        self.provisional_saved: frozenset[tuple[str, int]] = frozenset()
        self.provisional_lock = threading.Lock()
        self.provisional_seq = 0
        self.provisional_written = 0
        self.writer = KlineWriter(lfs, tt.name, iv.name, threads=config.writer_threads)
        self.book: PeriodBook | None = None
        self.pool: WsPool | None = None
        self.stats = FeedStats()
        self.publish_lock = asyncio.Lock()
        self.compact_lock = asyncio.Lock()
        self.compact_wake = asyncio.Event()  # set: compact now (live offsets wait for it)
        self.period_done = asyncio.Event()  # set whenever a period becomes complete
        self.last_compact_s = 0.0  # how long the last compaction took (wall seconds)
        self.check_lock = asyncio.Lock()
        self.published: int | None = None  # the watermark in the file (ms)
        self.closing = False
        self.catchup_done = asyncio.Event()
        self.pending_catchup: dict[str, int] = {}  # symbol → catch-up start not finished yet
        self.pending_lock = asyncio.Lock()
        self.pending_loaded = False
        self.inflight: set[tuple[str, int]] = set()  # (symbol, open) the writer is writing right now
        self.offsets: LiveOffsets | None = None
        targets = tuple(t for t in config.offsets if config.offset_base(t) == iv.name)
        if targets:
            self.offsets = LiveOffsets(
                lfs,
                tt.name,
                iv.name,
                targets,
                on_error=lambda title, text: alert(title, text, f"offsets:{self.name}"),
            )

    @property
    def client(self) -> RestClient:
        return self._clients[self.tt.market_name]

    def clock_tolerance_ms(self) -> float:
        """How far the websocket may put the clock ahead of the REST-sampled estimate."""
        return max(2_000.0, 2 * self.client.clock.uncertainty_ms())

    def latest_close_ms(self) -> int:
        """The latest close time a closed candle can have now (estimate plus tolerance)."""
        return int(self.client.clock.now_ms() + self.clock_tolerance_ms())

    def now_ms(self) -> int:
        """The exchange's time: the REST-sampled clock (offset and rate from the time endpoint),
        raised to what the websocket proves: a closing event stamped ``E`` that arrived ``d``
        seconds ago means the server's clock reads at least ``E + rate·d`` now. Never more than
        the tolerance ahead of the estimate: one message with a wrong ``E`` must not make periods
        look closed before they are (``LiveRunner._check_clock`` re-syncs, then drops it)."""
        clock = self.client.clock
        est = clock.now_ms()
        st = self.appender.stats
        if st.max_event_ms:
            bound = st.max_event_ms + clock.rate * (time.monotonic() - st.max_event_mono) * 1000.0
            if bound > est:
                return int(min(bound, est + self.clock_tolerance_ms()))
        return int(est)

    def _is_stored(self, symbol: str, open_ms: int) -> bool:
        return self.book is not None and self.book.is_stored(symbol, open_ms)

    def _supersedes(self, symbol: str, open_ms: int, row: Sequence[Any]) -> bool:
        """Whether a closing event's ``row`` should replace the stored candle: one REST repaired just
        after its close, with other values."""
        rest = self.recent_rest.pop((symbol, open_ms), None)
        return rest is not None and candle_differs(rest, row)


def candle_differs(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two REST-layout kline rows of one candle differ in any value."""
    return any(float(a[i]) != float(b[i]) for i in (1, 2, 3, 4, 5, 7, 8, 9, 10))
