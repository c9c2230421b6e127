"""The dispatcher's message handling: only well-formed closed candles of live symbols are buffered;
everything else is counted by reason and never written. The writer does one upsert per symbol."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from lake.binance.klines import klines_from_rest
from lake.live.appender import Appender, KlineWriter, PartitionCache, append_klines
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, write_klines
from lake.store.tail import tail_files

M = 60_000
T = 1_700_000_040_000 - 1_700_000_040_000 % M


def event(
    sym: str = "BTCUSDT", t: int = T, *, x: bool = True, i: str = "1m", close: str = "0.0020", **k: Any
) -> dict:
    body = {
        "t": t, "T": t + M - 1, "s": sym, "i": i, "f": 100, "L": 200, "o": "0.0010", "c": close,
        "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": x, "q": "1.0000", "V": "500",
        "Q": "0.500", "B": "123456",
    }  # fmt: skip
    body.update(k)
    return {"e": "kline", "E": t + M + 5, "s": sym, "k": body}


def combined(ev: dict) -> str:
    return json.dumps({"stream": f"{ev['s'].lower()}@kline_{ev['k']['i']}", "data": ev})


def make(stored: set[tuple[str, int]] | None = None) -> Appender:
    have = stored or set()
    return Appender("usdt_perp", "1m", {"BTCUSDT", "ETHUSDT"}, is_stored=lambda s, t: (s, t) in have)


def test_closed_candle_buffered_once_updates_ignored() -> None:
    ap = make()
    assert not ap.feed(combined(event(x=False)))
    assert ap.feed(combined(event()))
    assert not ap.feed(combined(event()))  # the same closing event again (a reconnect replay)
    assert ap.feed(json.dumps(event("ETHUSDT")))  # raw stream (no envelope)
    assert ap.stats.updates == 1 and ap.stats.closed == 2 and ap.stats.duplicates == 1
    batch = ap.take()
    assert set(batch) == {("BTCUSDT", T), ("ETHUSDT", T)}
    assert batch[("BTCUSDT", T)][0][4] == "0.0020"
    assert ap.pending == 0
    assert ap.stats.max_event_ms == T + M + 5


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "json"),
        (b"\xff\xfe", "json"),
        ("[1, 2]", "json"),
        (json.dumps({"stream": "x", "data": [1]}), "not_kline"),
        (json.dumps({"e": "trade", "s": "BTCUSDT"}), "not_kline"),
        (json.dumps({"e": "kline", "s": "BTCUSDT"}), "malformed"),
        (combined(event(o="abc")), "malformed"),
        (combined({**event(), "k": {**event()["k"], "x": "true"}}), "malformed"),
        (combined(event("DOGEUSDT")), "unknown_symbol"),
        (combined(event(i="5m")), "interval"),
        (combined(event(t=T + 1)), "misaligned"),
        (combined(event(T=T + 2 * M)), "misaligned"),
        (combined(event(c="nan")), "non_finite"),
        (combined(event(v="inf")), "non_finite"),
        (json.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": 3}), "error"),
        (json.dumps({"code": -1121, "msg": "Invalid symbol.", "id": 4}), "error"),
    ],
)
def test_bad_messages_counted_never_buffered(raw: str | bytes, reason: str) -> None:
    ap = make()
    assert not ap.feed(raw)
    assert ap.stats.bad == {reason: 1}
    assert ap.pending == 0


def test_control_replies_and_already_stored() -> None:
    ap = make(stored={("BTCUSDT", T)})
    assert not ap.feed(json.dumps({"result": None, "id": 1}))
    assert not ap.feed(combined(event()))
    assert ap.stats.control == 1 and ap.stats.duplicates == 1 and not ap.stats.bad


def test_bad_messages_logged_a_few_times_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    ap = make()
    for _ in range(50):
        ap.feed("garbage")
    assert ap.stats.bad["json"] == 50
    assert caplog.text.count("bad message") == 5


def test_a_bad_message_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    # a hostile server's newlines must not forge log lines
    make().feed("not json\n2026-01-01T00:00:00 ERROR lake: forged\r\x1b[2J")
    logged = [r.getMessage() for r in caplog.records if "bad message" in r.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0] and "\x1b" not in logged[0]
    assert "forged" in logged[0]


async def test_writer_one_upsert_per_symbol_and_put_back(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    ap = make()
    for k in range(3):
        ap.feed(combined(event("BTCUSDT", T + k * M)))
    ap.feed(combined(event("ETHUSDT", T)))
    batch = ap.take()
    rows: dict[str, list[Any]] = {}
    for (sym, _t), (row, _r) in sorted(batch.items()):
        rows.setdefault(sym, []).append(row)
    writer = KlineWriter(lfs, "usdt_perp", "1m", threads=2)
    try:
        out = await writer.write(rows, "ws")
    finally:
        writer.close()
    assert out.stored == {"BTCUSDT": [T, T + M, T + 2 * M], "ETHUSDT": [T]}
    # one tail file for the whole batch, readable at once
    assert not out.failed and writer.writes == 1 and out.rows == 4
    assert len(tail_files(lfs, "usdt_perp", "1m")) == 1
    df = scan_klines(lfs, "usdt_perp", "1m").collect().sort("symbol", "candle_begin_time")
    assert df.height == 4
    assert df["source"].unique().to_list() == ["ws"]
    assert df.filter(pl.col("symbol") == "BTCUSDT")["close"].to_list() == [0.002] * 3
    # compaction: one partition write per symbol; the candles are read once while in both places
    res = writer.compact(grace_s=3600)
    assert res.files_compacted == 1 and sorted(res.symbols) == ["BTCUSDT", "ETHUSDT"] and res.rows == 4
    assert writer.partition_writes == 2
    assert scan_klines(lfs, "usdt_perp", "1m", tail=False).collect().height == 4
    assert scan_klines(lfs, "usdt_perp", "1m").collect().sort("symbol", "candle_begin_time").equals(df)
    ap.put_back(batch)
    assert ap.pending == 4


async def test_writer_failure_is_reported_per_symbol(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    writer = KlineWriter(lfs, "usdt_perp", "1m", threads=1)
    good = [T, "1", "2", "0.5", "1.5", "10", T + M - 1, "15", 3, "5", "7", "0"]
    try:
        (tmp_path / "klines_tail").write_text("a file where a directory must go")
        out = await writer.write({"BTCUSDT": [good]}, "ws")
    finally:
        writer.close()
    assert "BTCUSDT" in out.failed and not out.stored


async def test_writer_isolates_a_bad_row(tmp_path) -> None:
    writer = KlineWriter(LakeFS(tmp_path), "usdt_perp", "1m", threads=1)
    good = [T, "1", "2", "0.5", "1.5", "10", T + M - 1, "15", 3, "5", "7", "0"]
    bad = [T, "x", "2", "0.5", "1.5", "10", T + M - 1, "15", 3, "5", "7", "0"]
    try:
        out = await writer.write({"BTCUSDT": [good], "ETHUSDT": [bad]}, "rest")
    finally:
        writer.close()
    assert list(out.stored) == ["BTCUSDT"] and list(out.failed) == ["ETHUSDT"]


def test_partition_cache_appends_like_the_upsert_and_stays_within_its_rows(tmp_path) -> None:
    """Compaction's fast path (append to the partition this process last wrote, from memory) leaves
    the same partitions as the general upsert, and its cache never holds more rows than allowed."""

    def rows(t0: int, n: int) -> list[list[Any]]:
        return [
            [t, str(1 + k), str(2 + k), "0.5", "1.5", "10", t + M - 1, "15", k, "5", "7", "0"]
            for k, t in enumerate(range(t0, t0 + n * M, M))
        ]

    day0 = T - T % 86_400_000
    fast, slow = LakeFS(tmp_path / "fast"), LakeFS(tmp_path / "slow")
    cache = PartitionCache(max_rows=250)
    symbols = [f"S{k}USDT" for k in range(4)]
    for step in range(6):  # 6 compactions of 30 new candles per symbol, each past the stored end
        for sym in symbols:
            df = klines_from_rest(rows(day0 + step * 30 * M, 30), "ws")
            if not append_klines(fast, "usdt_perp", "1m", sym, df, cache):
                write_klines(fast, "usdt_perp", "1m", sym, df)
            write_klines(slow, "usdt_perp", "1m", sym, df)
            assert cache.rows <= 250 and cache.rows == sum(d.height for _t, d in cache._d.values())
    assert cache.hits > 0  # the fast path ran from memory, not only from re-reads
    assert len(cache) == 1  # 180 rows per partition: only the last write fits in 250 rows
    for sym in symbols:
        a = scan_klines(fast, "usdt_perp", "1m", [sym]).collect()
        b = scan_klines(slow, "usdt_perp", "1m", [sym]).collect()
        assert a.height == 180 and a.equals(b)
    # a partition changed by another writer is re-read, not appended to from a stale copy
    write_klines(fast, "usdt_perp", "1m", symbols[-1], klines_from_rest(rows(day0, 1), "rest"))
    assert append_klines(
        fast, "usdt_perp", "1m", symbols[-1], klines_from_rest(rows(day0 + 180 * M, 1), "ws"), cache
    )
    got = scan_klines(fast, "usdt_perp", "1m", [symbols[-1]]).collect()
    assert got.height == 181 and got["source"].to_list()[:2] == ["rest", "ws"]


def test_weekly_candles_open_on_mondays() -> None:
    """1w candles open on Monday 00:00 UTC, not on the epoch's Thursday grid; 3d is epoch-aligned."""
    W, D = 7 * 86_400_000, 86_400_000
    monday = 1_748_822_400_000  # 2025-06-02, a Monday
    ap = Appender("usdt_perp", "1w", {"BTCUSDT"})
    assert ap.feed(combined(event(t=monday, i="1w", T=monday + W - 1)))
    assert not ap.feed(combined(event(t=monday + D, i="1w", T=monday + D + W - 1)))  # a Tuesday
    assert ap.stats.bad == {"misaligned": 1} and ap.pending == 1
    ap3 = Appender("usdt_perp", "3d", {"BTCUSDT"})
    t3 = monday - monday % (3 * D)
    assert ap3.feed(combined(event(t=t3, i="3d", T=t3 + 3 * D - 1)))
    assert not ap3.feed(combined(event(t=t3 + D, i="3d", T=t3 + 4 * D - 1)))


def test_event_times_count_only_from_valid_closing_events() -> None:
    """A message's ``E`` moves the feed's clock only when the message is a valid closing event sent
    after its candle closed; a candle "closed" after the exchange's time is refused."""
    latest = {"close": T + M - 1}
    ap = Appender("usdt_perp", "1m", {"BTCUSDT"}, latest_close=lambda: latest["close"])
    future_e = T + 3_600_000

    def at(ev: dict, e: int) -> str:
        return combined({**ev, "E": e})

    no_k = {"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": future_e, "s": "BTCUSDT"}}
    assert not ap.feed(json.dumps(no_k))
    assert ap.stats.bad == {"malformed": 1} and ap.stats.max_event_ms == 0
    assert not ap.feed(at(event(t=T + M), future_e))  # closes after the exchange's now: held
    assert ap.stats.bad == {"malformed": 1} and ap.stats.ahead_hint_ms == future_e
    assert ap.retry_held() == 0  # the re-synced clock does not confirm it: refused
    assert ap.stats.bad == {"malformed": 1, "future": 1} and ap.stats.max_event_ms == 0
    assert not ap.feed(at(event(t=T + 2 * M), T + 3 * M + 5))
    latest["close"] += 2 * M  # the clock was behind: after the re-sync the candle has closed
    assert ap.retry_held() == 1 and ap.pending == 1 and ap.stats.bad["future"] == 1
    latest["close"] -= 2 * M
    assert ap.feed(at(event(t=T), T + M + 5))
    assert ap.stats.max_event_ms == T + 3 * M + 5  # from the held candle accepted above
    latest["close"] += M
    assert ap.feed(at(event(t=T + M), T + M - 10))  # stored, but an E before its close moves no clock
    assert ap.stats.max_event_ms == T + 3 * M + 5 and ap.pending == 3
