"""Watermark file: layout, monotonic writes, read_watermarks for `lake status`, wait_ready."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from lake.errors import ValidationError
from lake.live.watermark import read_watermark, read_watermarks, wait_ready, watermark_path, write_watermark
from lake.store.fs import LakeFS

T = 1_700_000_100_000 - 1_700_000_100_000 % 300_000


def test_layout_and_content(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    assert watermark_path("usdt_perp", "5m") == "_meta/live/usdt_perp/5m.json"
    assert write_watermark(lfs, "usdt_perp", "5m", T, symbols=3, updated_at_ms=T + 305_000)
    doc = json.loads((tmp_path / "_meta/live/usdt_perp/5m.json").read_text())
    assert doc["watermark_ms"] == T
    assert dt.datetime.fromisoformat(doc["watermark"]) == dt.datetime.fromtimestamp(T / 1000, tz=dt.UTC)
    assert doc["next_open"] == dt.datetime.fromtimestamp((T + 300_000) / 1000, tz=dt.UTC).isoformat()
    assert doc["symbols"] == 3


def test_never_moves_backwards(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_watermark(lfs, "usdt_perp", "5m", T, symbols=1, updated_at_ms=T)
    assert not write_watermark(lfs, "usdt_perp", "5m", T - 300_000, symbols=1, updated_at_ms=T)
    assert not write_watermark(lfs, "usdt_perp", "5m", T, symbols=1, updated_at_ms=T)
    assert read_watermark(lfs, "usdt_perp", "5m")["watermark_ms"] == T  # type: ignore[index]


def test_read_watermarks_lists_every_feed_and_skips_junk(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_watermark(lfs, "usdt_spot", "1m", T, symbols=1, updated_at_ms=T)
    write_watermark(lfs, "usdt_perp", "5m", T, symbols=1, updated_at_ms=T)
    (tmp_path / "_meta/live/usdt_perp/junk.json").write_text("{}")
    (tmp_path / "_meta/live/nope").mkdir()
    (tmp_path / "_meta/live/usdt_perp/1h.json").write_text("not json")
    rows = read_watermarks(lfs)
    assert [(r["trade_type"], r["interval"]) for r in rows] == [
        ("usdt_perp", "1h"),
        ("usdt_perp", "5m"),
        ("usdt_spot", "1m"),
    ]
    assert rows[0]["watermark"] is None
    assert rows[1]["watermark"].startswith("20")
    assert read_watermarks(LakeFS(tmp_path / "empty")) == []


def test_path_components_validated() -> None:
    with pytest.raises(ValidationError):
        watermark_path("../x", "5m")
    with pytest.raises(ValidationError):
        watermark_path("usdt_perp", "7m")


async def test_wait_ready_returns_when_published(tmp_path) -> None:
    lfs = LakeFS(tmp_path)

    async def publish() -> None:
        await asyncio.sleep(0.1)
        write_watermark(lfs, "usdt_perp", "5m", T - 300_000, symbols=1, updated_at_ms=T)
        await asyncio.sleep(0.1)
        write_watermark(lfs, "usdt_perp", "5m", T, symbols=1, updated_at_ms=T)

    task = asyncio.create_task(publish())
    got = await wait_ready(
        tmp_path, "usdt_perp", "5m", dt.datetime.fromtimestamp(T / 1000, tz=dt.UTC), timeout=5
    )
    await task
    assert got == dt.datetime.fromtimestamp(T / 1000, tz=dt.UTC)


async def test_wait_ready_times_out(tmp_path) -> None:
    with pytest.raises(TimeoutError, match="not ready"):
        await wait_ready(tmp_path, "usdt_perp", "5m", T, timeout=0.15)


def test_a_symbols_run_keeps_its_own_watermark(tmp_path) -> None:
    # `lake live --symbols BTCUSDT` says nothing of ETHUSDT: it must not advance the feed's watermark
    # (the view, lake status' feed line, wait_ready without symbols), only its own.
    lfs = LakeFS(tmp_path)
    write_watermark(lfs, "usdt_perp", "5m", T - 300_000, symbols=2, updated_at_ms=T)
    assert write_watermark(lfs, "usdt_perp", "5m", T + 600_000, symbols=1, updated_at_ms=T, scope=["BTCUSDT"])
    assert read_watermark(lfs, "usdt_perp", "5m")["watermark_ms"] == T - 300_000  # type: ignore[index]
    sub = read_watermark(lfs, "usdt_perp", "5m", ["BTCUSDT"])
    assert sub is not None and sub["watermark_ms"] == T + 600_000 and sub["scope"] == ["BTCUSDT"]
    path = watermark_path("usdt_perp", "5m", ["BTCUSDT"])
    assert path.startswith("_meta/live/usdt_perp/subsets/5m-") and path == watermark_path(
        "usdt_perp", "5m", ("BTCUSDT",)
    )
    assert watermark_path("usdt_spot", "1M", ["BTCUSDT"]) != watermark_path("usdt_spot", "1m", ["BTCUSDT"])
    assert [r.get("scope") for r in read_watermarks(lfs)] == ["all"]
    rows = read_watermarks(lfs, subsets=True)
    assert [(r["watermark_ms"], r["scope"]) for r in rows] == [
        (T - 300_000, "all"),
        (T + 600_000, ["BTCUSDT"]),
    ]


async def test_wait_ready_for_symbols_accepts_a_subset_watermark_that_holds_them(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_watermark(lfs, "usdt_perp", "5m", T - 300_000, symbols=3, updated_at_ms=T)
    write_watermark(lfs, "usdt_perp", "5m", T, symbols=2, updated_at_ms=T, scope=["BTCUSDT", "ETHUSDT"])
    target = dt.datetime.fromtimestamp(T / 1000, tz=dt.UTC)
    assert await wait_ready(tmp_path, "usdt_perp", "5m", target, timeout=1, symbols=["ETHUSDT"]) == target
    with pytest.raises(TimeoutError):  # SOLUSDT is not in that run's list
        await wait_ready(tmp_path, "usdt_perp", "5m", target, timeout=0.2, symbols=["ETHUSDT", "SOLUSDT"])
    with pytest.raises(TimeoutError):  # the whole feed is not there yet
        await wait_ready(tmp_path, "usdt_perp", "5m", target, timeout=0.2)
    # a subset file copied under another list's name is not trusted
    other = tmp_path / watermark_path("usdt_perp", "5m", ["SOLUSDT"])
    other.write_bytes((tmp_path / watermark_path("usdt_perp", "5m", ["BTCUSDT", "ETHUSDT"])).read_bytes())
    assert len(read_watermarks(lfs, subsets=True)) == 2
