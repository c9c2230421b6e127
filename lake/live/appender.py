"""The dispatcher's hot path: websocket messages → closed candles buffered per period → batched writes.

``Appender.feed(raw, recv)`` runs on the event loop for every message of one feed (trade type,
interval). It parses the JSON (combined ``{"stream", "data"}`` envelope or a raw event), ignores
in-progress updates (``x: false``) and buffers each *closed* candle (``x: true``) once, keyed by
(symbol, open time). Anything else is counted by reason and never written:

    json          not JSON / not an object        unknown_symbol  symbol not in the live set
    not_kline     another event type              interval        another interval
    malformed     a kline that does not parse     misaligned      open/close times off the grid
    non_finite    NaN/inf prices or volumes       error           an error reply to SUBSCRIBE…

``take()`` hands the buffer to the writer; ``KlineWriter.write`` turns a batch of any number of
symbols into one new tail file (``lake.store.tail``), off the event loop: a thousand symbols that close
at once are readable after one small write, not a thousand partition rewrites. ``KlineWriter.compact``
later upserts the tail into each symbol's partition (``append_klines``, else ``write_klines``), one
partition write per symbol per compaction.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from lake.binance.intervals import parse_interval
from lake.binance.klines import REST_FLOAT_FIELDS, parse_ws_kline
from lake.binance.markets import get_trade_type
from lake.errors import DataError, LakeError, ValidationError
from lake.schema import KLINE_COLUMNS, KLINE_SCHEMA, SOURCES
from lake.store.fs import LakeFS
from lake.store.klines import day_prints, encode_parquet, read_partition, write_klines
from lake.store.paths import PartitionKey, series_dir
from lake.store.tail import CompactResult, compact_tail, encode_tail_rows, write_tail_bytes

__all__ = ["Appender", "AppenderStats", "KlineWriter", "PartitionCache", "WriteOutcome", "append_klines"]

log = logging.getLogger("lake.live.appender")

_NUMERIC_FIELDS = tuple(REST_FLOAT_FIELDS.values())
_INLINE_ROWS = 5_000  # ~7 ms of encoding and I/O: longer batches (catch-up) are written in a thread
_LOG_FIRST = 5  # bad messages logged in full per reason; the rest only counted


@dataclass
class AppenderStats:
    messages: int = 0
    updates: int = 0  # x: false
    closed: int = 0  # x: true accepted into the buffer
    duplicates: int = 0  # x: true for a candle already buffered or stored
    superseded: int = 0  # x: true that replaces a just-repaired REST candle with other values
    control: int = 0  # replies to SUBSCRIBE / UNSUBSCRIBE
    bad: Counter[str] = field(default_factory=Counter)
    max_event_ms: int = 0  # highest event time (E) seen: server time at send
    max_event_mono: float = 0.0  # time.monotonic() when that event arrived
    ahead_hint_ms: int = 0  # highest time of a refused "future" candle (asks for a clock re-sync)
    last_message_mono: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "updates": self.updates,
            "closed": self.closed,
            "duplicates": self.duplicates,
            "superseded": self.superseded,
            "control": self.control,
            "bad": dict(self.bad),
        }


class Appender:
    """Parses one feed's messages and buffers its closed candles until the writer takes them.

    ``symbols`` is the live set (upper case); ``is_stored(symbol, open_ms)`` tells whether a candle
    is already in the lake (a late ``x: true`` after a REST repair is then a duplicate).
    """

    def __init__(
        self,
        trade_type: str,
        interval: str,
        symbols: Iterable[str] = (),
        *,
        is_stored: Callable[[str, int], bool] | None = None,
        supersedes: Callable[[str, int, Sequence[Any]], bool] | None = None,
        latest_close: Callable[[], int] | None = None,
    ) -> None:
        self.trade_type = get_trade_type(trade_type).name
        self.interval = parse_interval(interval, spot=get_trade_type(trade_type).is_spot)
        if self.interval.ms is None:
            raise DataError("live feeds need a fixed-length interval (not 1M)")
        self._iv_ms: int = self.interval.ms
        # 0 for every grid but the week's (Mondays): (t - anchor) % ms is 0 exactly at an open
        self._anchor: int = self.interval.floor(0) % self._iv_ms
        self.symbols: set[str] = set(symbols)
        self._is_stored = is_stored or (lambda s, t: False)
        self._supersedes = supersedes or (lambda s, t, row: False)
        # the latest close time a candle can have by the exchange's clock (plus its uncertainty)
        self._latest_close = latest_close
        self._held: list[tuple[str | bytes, float]] = []
        self._buffer: dict[tuple[str, int], tuple[tuple[Any, ...], float]] = {}
        self.stats = AppenderStats()
        self._pending = asyncio.Event()
        self._closed = False
        self.control_errors: deque[str] = deque(maxlen=20)

    # -- feeding -----------------------------------------------------------------------------------
    def _bad(self, reason: str, raw: str | bytes, detail: str = "") -> None:
        n = self.stats.bad[reason] = self.stats.bad[reason] + 1
        if n <= _LOG_FIRST:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            # (one line: a message's own newlines or control characters must not forge log lines)
            text = text[:200].encode("unicode_escape").decode("ascii")
            more = " (further ones only counted)" if n == _LOG_FIRST else ""
            log.warning(
                "%s %s: bad message (%s%s)%s: %.200s",
                self.trade_type,
                self.interval.name,
                reason,
                f": {detail}" if detail else "",
                more,
                text,
            )

    def wake(self) -> None:
        """Tell the writer that candles are waiting."""
        self._pending.set()

    def retry_held(self) -> int:
        """Feed again the candles held as "closed in the future" (after a clock re-sync): those that
        have closed by the corrected clock are buffered, the rest refused. Returns how many were."""
        held, self._held = self._held, []
        return sum(self.feed(raw, recv, retry=True) for raw, recv in held)

    def feed(self, raw: str | bytes, recv: float | None = None, *, retry: bool = False) -> bool:
        """Handle one message; returns whether a closed candle was buffered."""
        st = self.stats
        recv = time.perf_counter() if recv is None else recv
        if not retry:  # a held message fed again is no new traffic
            st.messages += 1
            st.last_message_mono = recv
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._bad("json", raw)
            return False
        if not isinstance(msg, dict):
            self._bad("json", raw, "not an object")
            return False
        data = msg.get("data", msg) if "stream" in msg else msg
        if not isinstance(data, dict):
            self._bad("not_kline", raw)
            return False
        if data.get("e") != "kline":
            if "result" in data and "id" in data:
                st.control += 1
                return False
            # An error reply to a control message: {"error": {"code", "msg"}, "id"} (websocket streams)
            # or flat {"code", "msg", "id"} (spot's documented shape).
            if "error" in data or ("code" in data and "msg" in data):
                self.control_errors.append(str(data.get("error", data))[:200])
                self._bad("error", raw)
                return False
            self._bad("not_kline", raw)
            return False
        k = data.get("k")
        if not isinstance(k, dict):
            self._bad("malformed", raw, "no 'k' object")
            return False
        x = k.get("x")
        if x is False:
            st.updates += 1
            return False
        try:
            wk = parse_ws_kline(data)
        except DataError as exc:
            self._bad("malformed", raw, str(exc))
            return False
        if wk.interval != self.interval.name:
            self._bad("interval", raw, wk.interval)
            return False
        symbol = wk.symbol
        if symbol not in self.symbols:
            self._bad("unknown_symbol", raw, symbol)
            return False
        row = wk.row
        t = row[0]
        if (t - self._anchor) % self._iv_ms or row[6] != t + self._iv_ms - 1:
            self._bad("misaligned", raw)
            return False
        for i in _NUMERIC_FIELDS:
            if not math.isfinite(float(row[i])):
                self._bad("non_finite", raw)
                return False
        if self._latest_close is not None and row[6] > self._latest_close():
            # "closed" after the exchange's time as we know it: not stored nor taken as a clock
            # reading yet, but a reason to re-sync the clock (LiveRunner._check_clock), after
            # which it is fed again (retry_held)
            e = data.get("E")
            st.ahead_hint_ms = max(st.ahead_hint_ms, e if isinstance(e, int) else row[6])
            if retry or len(self._held) >= _MAX_HELD:
                self._bad("future", raw)
            else:  # held until the clock is re-synced (retry_held), then stored or refused
                self._held.append((raw, recv))
            return False
        # Only a valid closing event, sent after its candle closed, may move the clock (Feed.now_ms)
        e = data.get("E")
        if isinstance(e, int) and e > st.max_event_ms and e >= row[6]:
            st.max_event_ms = e
            st.max_event_mono = time.monotonic()
        key = (symbol, t)
        if key in self._buffer:
            st.duplicates += 1
            return False
        if self._is_stored(symbol, t):
            if not self._supersedes(symbol, t, row):
                st.duplicates += 1
                return False
            st.superseded += 1  # written again: the later tail file wins
        self._buffer[key] = (row, recv)
        st.closed += 1
        self._pending.set()
        return True

    # -- draining ----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._buffer)

    def holds(self, symbol: str, open_ms: int) -> bool:
        """Whether this closed candle is buffered, waiting for the writer."""
        return (symbol, open_ms) in self._buffer

    async def wait_pending(self) -> None:
        """Return once at least one closed candle is buffered (or ``close()`` was called)."""
        while not self._buffer and not self._closed:
            self._pending.clear()
            await self._pending.wait()

    def close(self) -> None:
        """Wake the writer for a last flush: ``wait_pending`` returns from now on."""
        self._closed = True
        self._pending.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def take(self) -> dict[tuple[str, int], tuple[tuple[Any, ...], float]]:
        """Hand over everything buffered: ``{(symbol, open_ms): (rest_row, recv_time)}``."""
        out, self._buffer = self._buffer, {}
        self._pending.clear()
        return out

    def put_back(self, items: Mapping[tuple[str, int], tuple[tuple[Any, ...], float]]) -> None:
        """Return unwritten candles to the buffer (a failed write); newer buffered ones win."""
        for key, value in items.items():
            self._buffer.setdefault(key, value)
        if self._buffer:
            self._pending.set()


@dataclass
class WriteOutcome:
    """What one batch write did, per symbol."""

    stored: dict[str, list[int]] = field(default_factory=dict)  # symbol → open times now in the lake
    failed: dict[str, str] = field(default_factory=dict)  # symbol → error
    rows: int = 0
    seconds: float = 0.0
    finished: dict[str, float] = field(default_factory=dict)  # symbol → perf_counter() when written


class KlineWriter:
    """Stores batches of candles: each batch as one tail file, compacted into partitions later.

    Only the writer touches the disk for its feeds (the dispatcher rule): websocket rows, REST
    repairs and catch-up all come through ``write``. A batch of any number of symbols is one new
    file in the tail (``lake.store.tail``), readable at once through ``scan_klines`` and the
    ``klines`` view; ``compact`` later upserts the tail into the symbols' partitions, in a thread,
    off the latency path.
    """

    def __init__(self, lfs: LakeFS, trade_type: str, interval: str, *, threads: int = 8) -> None:
        self.lfs = lfs
        self.trade_type = trade_type
        self.interval = interval
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="lake-live-write")
        self.writes = 0  # tail files written
        self.rows = 0
        self.errors = 0
        self.busy_s = 0.0  # wall seconds spent in write() calls
        self.compactions = 0
        self.compacted_rows = 0
        self.partition_writes = 0
        self.tail_files_retired = 0
        self.cache = PartitionCache()
        self._moved: set[str] = set()  # symbols compacted since take_compacted()
        self._moved_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def write_partition(self, symbol: str, df: pl.DataFrame) -> None:
        """Upsert one symbol's rows into its partitions (the compaction step)."""
        if not append_klines(self.lfs, self.trade_type, self.interval, symbol, df, self.cache):
            write_klines(self.lfs, self.trade_type, self.interval, symbol, df)
        self.partition_writes += 1

    def _write_bytes(self, data: bytes) -> float:
        write_tail_bytes(self.lfs, self.trade_type, self.interval, data)
        return time.perf_counter()

    def _write_rows(self, rows_by_symbol: Mapping[str, Any], source: str) -> float | None:
        data = encode_tail_rows(rows_by_symbol, source)
        return None if data is None else self._write_bytes(data)

    async def write(
        self, rows_by_symbol: Mapping[str, list[tuple[Any, ...]] | list[list[Any]]], source: str
    ) -> WriteOutcome:
        """Store each symbol's rows (REST-shaped) with ``source`` in one tail file; a symbol with bad
        rows fails alone, a failed file write fails the batch (the caller retries it)."""
        out = WriteOutcome()
        if not rows_by_symbol:
            return out
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        good = dict(rows_by_symbol)
        n_rows = sum(len(rs) for rs in good.values())
        try:
            if n_rows <= _INLINE_ROWS and self.lfs.is_local:  # (an object store's PUT: in a thread)
                # A burst's batches are encoded and written right here, on the event loop: ~1.5 ms
                # of encoding and ~1 ms of file I/O per batch. In a thread the same work took
                # 5-25 ms: every return from an Arrow call or a syscall needs the GIL back, and
                # while the loop parses the rest of the burst each hand-back waits up to the
                # interpreter's 5 ms switch interval. Blocking the loop that long costs less: the
                # messages wait in the socket meanwhile and are parsed right after.
                data = encode_tail_rows(good, source)
                finished = None if data is None else self._write_bytes(data)
            else:  # a catch-up page of many symbols: too long to hold the loop for
                finished = await loop.run_in_executor(self._pool, self._write_rows, good, source)
        except (DataError, ValidationError):  # a bad row somewhere: check per symbol so only its symbol fails
            for sym, rs in rows_by_symbol.items():
                try:
                    encode_tail_rows({sym: rs}, source)
                except (DataError, ValidationError) as exc:
                    self.errors += 1
                    out.failed[sym] = f"{type(exc).__name__}: {exc}"
                    del good[sym]
            if not good:
                return out
            try:
                finished = await loop.run_in_executor(self._pool, self._write_rows, good, source)
            except (LakeError, OSError) as exc:
                return self._failed(out, rows_by_symbol, exc)
        except (LakeError, OSError) as exc:
            return self._failed(out, rows_by_symbol, exc)
        if finished is None:
            return out  # no rows at all
        self.writes += 1
        for sym, rs in good.items():
            opens = [int(r[0]) for r in rs]
            out.stored[sym] = opens
            out.finished[sym] = finished
            out.rows += len(opens)
        self.rows += out.rows
        out.seconds = time.perf_counter() - t0
        self.busy_s += out.seconds
        return out

    def _failed(self, out: WriteOutcome, rows_by_symbol: Mapping[str, Any], exc: Exception) -> WriteOutcome:
        self.errors += 1
        log.error("%s %s: tail write failed: %s", self.trade_type, self.interval, exc)
        for sym in rows_by_symbol:
            if sym not in out.failed:
                out.failed[sym] = f"{type(exc).__name__}: {exc}"
        return out

    def compact(self, grace_s: float) -> CompactResult:
        """Move the tail into the partitions (blocking: run it in a thread)."""
        res = compact_tail(
            self.lfs, self.trade_type, self.interval, grace_s=grace_s, write=self.write_partition
        )
        self.compactions += 1
        self.compacted_rows += res.rows
        self.tail_files_retired += res.files_retired
        with self._moved_lock:
            self._moved.update(res.symbols)
        return res

    def take_compacted(self) -> set[str]:
        """Symbols whose partitions compaction changed since the last call (also by a compaction whose
        caller was cancelled while its thread finished the job)."""
        with self._moved_lock:
            out, self._moved = self._moved, set()
        return out


_MAX_HELD = 20_000  # "future" candles kept for a re-check after a clock re-sync
_FLOAT_COLUMNS = [c for c, t in KLINE_SCHEMA.items() if t == pl.Float64()]


def _opens_ms(df: pl.DataFrame) -> list[int]:
    """Open times in ms (numpy, not a Polars expression: this runs once per write)."""
    return df["candle_begin_time"].to_numpy().astype("datetime64[ms]").astype(np.int64).tolist()


class PartitionCache:
    """The last content this process wrote to each partition, with the file's change token.

    Lets ``append_klines`` skip re-reading a partition it wrote itself: under the series lock the
    token (mtime + size) is compared with the file's; any other writer changes it. Bounded by rows
    as well as entries, least recently written first out: a day of 1s candles is 86,400 rows
    (~8 MB), so a whole spot market followed at 1s would otherwise hold gigabytes by the evening.
    One partition per series (the one last written): live candles go to a series' newest partition,
    and yesterday's day file (last month's, for 3m-30m) kept until the row cap pushed it out made a
    1m feed's memory grow for days (~80 bytes a row, up to ~320 MB a feed).
    """

    def __init__(self, max_entries: int = 4096, max_rows: int = 4_000_000) -> None:
        self.max_entries = max_entries
        self.max_rows = max_rows
        self._d: dict[str, tuple[str, pl.DataFrame]] = {}
        self._series: dict[str, str] = {}  # series directory → its cached partition
        self.rows = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    @staticmethod
    def _series_of(rel: str) -> str:
        return rel.rsplit("/", 2)[0]  # (<series>/date=…/data.parquet)

    def _drop(self, rel: str) -> None:
        entry = self._d.pop(rel, None)
        if entry is not None:
            self.rows -= entry[1].height
            if self._series.get(self._series_of(rel)) == rel:
                del self._series[self._series_of(rel)]

    def get(self, lfs: LakeFS, rel: str) -> pl.DataFrame | None:
        entry = self._d.get(rel)
        if entry is None:
            return None
        token, df = entry
        if lfs.mtime_key(rel) == token:
            self.hits += 1
            return df
        self.misses += 1
        self._drop(rel)
        return None

    def put(self, lfs: LakeFS, rel: str, df: pl.DataFrame) -> None:
        self._drop(rel)  # re-inserted last: the order is the order of writes
        previous = self._series.get(self._series_of(rel))
        if previous is not None:  # the series moved on (a new day): live candles go to one partition
            self._drop(previous)
        token = lfs.mtime_key(rel)
        if token is None or df.height > self.max_rows:
            return
        while self._d and (len(self._d) >= self.max_entries or self.rows + df.height > self.max_rows):
            self._drop(next(iter(self._d)))
        self._d[rel] = (token, df)
        self._series[self._series_of(rel)] = rel
        self.rows += df.height


def append_klines(
    lfs: LakeFS,
    trade_type: str,
    interval: str,
    symbol: str,
    df: pl.DataFrame,
    cache: PartitionCache | None = None,
) -> bool:
    """The live fast path of ``write_klines``: append rows after the end of one existing partition.

    Live rows almost always come after everything stored, in the newest partition; merging them
    then needs no dedupe or sort. Under the same series lock, with the same encoding and the same
    atomic write as ``lake.store.klines``, the partition is rewritten as ``old + new``: what
    ``write_klines`` would have written, at a fraction of the CPU. Returns False (nothing written)
    whenever that is not the case (new partition, overlap, several partitions, unusual rows); the
    caller then uses ``write_klines``, the general upsert.
    """
    if df.height == 0 or list(df.columns) != KLINE_COLUMNS or dict(df.schema) != KLINE_SCHEMA:
        return False
    opens = _opens_ms(df)
    if any(b <= a for a, b in itertools.pairwise(opens)):
        return False  # not strictly increasing: let the general upsert sort and dedupe
    first, last = opens[0], opens[-1]
    key = PartitionKey.for_candle("klines", trade_type, interval, symbol, first)
    if not key.start_ms <= last < key.end_ms:
        return False
    if not set(df["source"].to_list()) <= set(SOURCES):
        return False
    if not all(np.isfinite(df[c].to_numpy()).all() for c in _FLOAT_COLUMNS):
        return False
    with lfs.lock(series_dir("klines", trade_type, interval, symbol)):
        old = cache.get(lfs, key.path) if cache is not None else None
        if old is None:
            old = read_partition(lfs, key)
        if old is None or old.height == 0 or list(old.columns) != KLINE_COLUMNS:
            return False
        stored_last = old["candle_begin_time"][-1]
        if stored_last is None or int(stored_last.timestamp() * 1000) >= first:
            return False
        # one chunk, not one more per append: the cached frame lives as long as its partition (a
        # month of 3m: ~14,880 appends at 1x), and a chunk of its columns costs ~2 KB beyond
        # the rows. (The encoder needs contiguous columns anyway: no extra copy.)
        merged = pl.concat([old, df], how="vertical", rechunk=True)
        iv = parse_interval(interval, spot=get_trade_type(trade_type).is_spot)
        lfs.write_atomic(key.path, encode_parquet(merged, prints=day_prints(iv)))
        if cache is not None:
            cache.put(lfs, key.path, merged)
    return True
