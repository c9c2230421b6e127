"""Readiness for consumers: one small JSON watermark file per live feed (trade type, interval).

Layout (relative to the lake root, written atomically with ``lake.store.meta.write_json``)::

    _meta/live/<trade_type>/<interval>.json

    {"trade_type": "usdt_perp", "interval": "5m",
     "watermark": "2024-07-23T06:40:00+00:00",     # open time of the last complete period
     "watermark_ms": 1721716800000,
     "next_open": "2024-07-23T06:45:00+00:00",     # first period not yet guaranteed
     "symbols": 262,                               # live symbols when it was written
     "updated_at": "2024-07-23T06:45:05.120000+00:00",  # server time of the update
     "updated_at_ms": 1721717105120, "pid": 4242}

``watermark`` is the ``candle_begin_time`` of the last period for which every live symbol's candle
is stored (or confirmed absent by the exchange), and every earlier period since the feed started:
a consumer may read all candles with ``candle_begin_time <= watermark`` knowing none will be added
by this feed. It only moves forward and is written after the data it covers.

    await wait_ready(root, "usdt_perp", "5m", period_open, timeout=60)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from importlib import resources
from typing import Any

from lake.binance.intervals import parse_interval
from lake.binance.markets import TRADE_TYPES, get_trade_type
from lake.errors import ValidationError
from lake.store.fs import LakeFS
from lake.store.meta import read_json, write_json

__all__ = [
    "WATERMARK_DIR",
    "WATERMARK_VIEW_SQL",
    "read_watermark",
    "read_watermarks",
    "register_watermark_view",
    "wait_ready",
    "watermark_path",
    "write_watermark",
]

WATERMARK_DIR = "_meta/live"


def _lfs(root: str | os.PathLike[str] | LakeFS) -> LakeFS:
    return root if isinstance(root, LakeFS) else LakeFS(root)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


def _to_ms(t: int | dt.datetime) -> int:
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            raise ValueError(f"naive datetime {t!r}: pass a timezone-aware (UTC) datetime")
        return round(t.timestamp() * 1000)
    return int(t)


def watermark_path(trade_type: str, interval: str) -> str:
    """``_meta/live/<trade_type>/<interval>.json`` (both validated before they touch a path)."""
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    return f"{WATERMARK_DIR}/{tt.name}/{iv.name}.json"


def read_watermark(
    root: str | os.PathLike[str] | LakeFS, trade_type: str, interval: str
) -> dict[str, Any] | None:
    """The watermark document of one feed, or ``None`` if that feed never completed a period."""
    try:
        doc = read_json(_lfs(root), watermark_path(trade_type, interval))
    except ValueError:  # unreadable JSON (a foreign file): treat as absent
        return None
    return doc if isinstance(doc, dict) else None


def write_watermark(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    watermark_ms: int,
    *,
    symbols: int,
    updated_at_ms: int,
) -> bool:
    """Publish ``watermark_ms`` unless the stored watermark is already at or past it.

    Returns whether the file was written. The single live writer of a feed holds its feed lock, so
    read-compare-write does not race.
    """
    lfs = _lfs(root)
    iv = parse_interval(interval)
    old = read_watermark(lfs, trade_type, interval)
    if old is not None and isinstance(old.get("watermark_ms"), int) and old["watermark_ms"] >= watermark_ms:
        return False
    doc = {
        "trade_type": trade_type,
        "interval": iv.name,
        "watermark": _iso(watermark_ms),
        "watermark_ms": int(watermark_ms),
        "next_open": _iso(iv.next_open(watermark_ms)),
        "symbols": int(symbols),
        "updated_at": _iso(updated_at_ms),
        "updated_at_ms": int(updated_at_ms),
        "pid": os.getpid(),
    }
    write_json(lfs, watermark_path(trade_type, interval), doc)
    return True


def read_watermarks(lfs: str | os.PathLike[str] | LakeFS) -> list[dict[str, Any]]:
    """Every feed's watermark: dicts with ``trade_type``, ``interval``, ``watermark`` (ISO or None), …

    Sorted by (trade type, interval). Used by ``lake status``.
    """
    fs = _lfs(lfs)
    out: list[dict[str, Any]] = []
    for tt in fs.listdir(WATERMARK_DIR):
        if tt not in TRADE_TYPES:
            continue
        for name in fs.listdir(f"{WATERMARK_DIR}/{tt}"):
            if not name.endswith(".json"):
                continue
            try:
                iv = parse_interval(name[: -len(".json")], spot=TRADE_TYPES[tt].is_spot)
            except ValidationError:
                continue
            doc = read_watermark(fs, tt, iv.name) or {}
            out.append({**doc, "trade_type": tt, "interval": iv.name, "watermark": doc.get("watermark")})
    return out


async def wait_ready(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    period_open: int | dt.datetime,
    timeout: float | None = None,  # noqa: ASYNC109 (the documented consumer API)
    *,
    poll: float = 0.05,
) -> dt.datetime:
    """Wait until the feed's watermark reaches ``period_open`` (the candle's open time, ms or UTC datetime).

    Returns the watermark (UTC datetime) at that moment; raises ``TimeoutError`` after ``timeout``
    real seconds. The file is polled (``poll`` seconds) off the event loop, so this works across
    processes and on any lake root.
    """
    lfs = _lfs(root)
    target = _to_ms(period_open)
    watermark_path(trade_type, interval)  # validate now, not after the first poll
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        doc = await asyncio.to_thread(read_watermark, lfs, trade_type, interval)
        wm = doc.get("watermark_ms") if doc else None
        if isinstance(wm, int) and wm >= target:
            return dt.datetime.fromtimestamp(wm / 1000, tz=dt.UTC)
        if deadline is not None and time.monotonic() >= deadline:
            have = _iso(wm) if isinstance(wm, int) else "none"
            raise TimeoutError(
                f"{trade_type} {interval}: period {_iso(target)} not ready after {timeout}s (watermark {have})"
            )
        delay = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        await asyncio.sleep(delay)


# The DuckDB view over the watermark files: sql/watermark.sql (shipped as lake/sql/watermark.sql and
# registered by lake.query.connect). ``register_watermark_view`` adds it to any connection whose
# ``lake_root`` variable is bound.
WATERMARK_VIEW_SQL = (resources.files("lake") / "sql" / "watermark.sql").read_text(encoding="utf-8")

_EMPTY_VIEW_SQL = (
    'CREATE OR REPLACE VIEW watermark AS SELECT NULL::VARCHAR AS trade_type, NULL::VARCHAR AS "interval", '
    "NULL::TIMESTAMPTZ AS watermark, NULL::TIMESTAMPTZ AS next_open, NULL::BIGINT AS symbols, "
    "NULL::TIMESTAMPTZ AS updated_at, NULL::BIGINT AS watermark_ms WHERE false"
)


def register_watermark_view(con: Any, root: str | os.PathLike[str] | LakeFS) -> bool:
    """Create the ``watermark`` view on a DuckDB connection whose ``lake_root`` variable is bound
    (``lake.query.connect``); an empty stand-in while no feed has a watermark. Returns whether any
    watermark file exists."""
    if read_watermarks(root):
        con.execute(WATERMARK_VIEW_SQL)
        return True
    con.execute(_EMPTY_VIEW_SQL)
    return False
