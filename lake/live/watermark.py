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

A run that follows a subset (``lake live --symbols …``) says nothing about the other symbols, so it
never touches the feed's file: it keeps its own, keyed by the sorted symbol list, with the list in
the document (``"scope": ["BTCUSDT", "ETHUSDT"]``; the feed-wide file has ``"scope": "all"``)::

    _meta/live/<trade_type>/subsets/<interval>-<sha256 of the list, 16 hex>.json

The ``watermark`` view and ``wait_ready`` without ``symbols`` read feed-wide files only;
``wait_ready(…, symbols=[…])`` also accepts any subset watermark whose list holds those symbols.

    await wait_ready(root, "usdt_perp", "5m", period_open, timeout=60)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from lake.binance.intervals import parse_interval
from lake.binance.markets import TRADE_TYPES, get_trade_type
from lake.binance.symbols import validate_symbols
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


def _scope(symbols: Sequence[str] | None) -> list[str] | None:
    return None if symbols is None else sorted(set(validate_symbols(list(symbols))))


def watermark_path(trade_type: str, interval: str, symbols: Sequence[str] | None = None) -> str:
    """``_meta/live/<trade_type>/<interval>.json`` for the feed, or the file of a run that follows only
    ``symbols`` (see the module doc). Every component is validated before it touches a path."""
    tt = get_trade_type(trade_type)
    iv = parse_interval(interval, spot=tt.is_spot)
    scope = _scope(symbols)
    if scope is None:
        return f"{WATERMARK_DIR}/{tt.name}/{iv.name}.json"
    key = hashlib.sha256(",".join(scope).encode()).hexdigest()[:16]
    # the archive name (1mo) keeps 1m and 1M apart on case-insensitive file systems
    return f"{WATERMARK_DIR}/{tt.name}/subsets/{iv.archive_name}-{key}.json"


def read_watermark(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    symbols: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """The watermark document of one feed (of a run following only ``symbols``, if given), or
    ``None`` if it never completed a period."""
    try:
        doc = read_json(_lfs(root), watermark_path(trade_type, interval, symbols))
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
    scope: Sequence[str] | None = None,
) -> bool:
    """Publish ``watermark_ms`` unless the stored watermark is already at or past it.

    ``scope``: the symbols a ``--symbols`` run follows (its own file); ``None``: the whole feed.
    Returns whether the file was written. The single live writer of a feed holds its feed lock, so
    read-compare-write does not race.
    """
    lfs = _lfs(root)
    iv = parse_interval(interval)
    old = read_watermark(lfs, trade_type, interval, scope)
    if old is not None and isinstance(old.get("watermark_ms"), int) and old["watermark_ms"] >= watermark_ms:
        return False
    doc = {
        "trade_type": trade_type,
        "interval": iv.name,
        "watermark": _iso(watermark_ms),
        "watermark_ms": int(watermark_ms),
        "next_open": _iso(iv.next_open(watermark_ms)),
        "symbols": int(symbols),
        "scope": _scope(scope) or "all",
        "updated_at": _iso(updated_at_ms),
        "updated_at_ms": int(updated_at_ms),
        "pid": os.getpid(),
    }
    write_json(lfs, watermark_path(trade_type, interval, scope), doc)
    return True


def read_watermarks(lfs: str | os.PathLike[str] | LakeFS, *, subsets: bool = False) -> list[dict[str, Any]]:
    """Every feed's watermark: dicts with ``trade_type``, ``interval``, ``watermark`` (ISO or None), …

    Sorted by (trade type, interval). With ``subsets`` also the watermarks of ``--symbols`` runs
    (their ``scope`` is the symbol list). Used by ``lake status``.
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
        if subsets:
            out.extend(_subset_docs(fs, tt))
    return out


def _subset_docs(fs: LakeFS, tt: str, interval: str | None = None) -> list[dict[str, Any]]:
    """The valid subset watermark documents of a trade type (of one interval if given)."""
    out = []
    for name in fs.listdir(f"{WATERMARK_DIR}/{tt}/subsets"):
        if not name.endswith(".json"):
            continue
        try:
            doc = read_json(fs, f"{WATERMARK_DIR}/{tt}/subsets/{name}")
        except ValueError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("scope"), list):
            continue
        try:
            iv = parse_interval(str(doc.get("interval")), spot=TRADE_TYPES[tt].is_spot)
            scope = _scope([str(x) for x in doc["scope"]])
        except ValidationError:
            continue
        # a copied or renamed file is not trusted: it must sit at the path its content names
        if (interval is not None and iv.name != interval) or name != watermark_path(
            tt, iv.name, scope
        ).rsplit("/", 1)[-1]:
            continue
        out.append({**doc, "trade_type": tt, "interval": iv.name, "scope": scope})
    return out


async def wait_ready(
    root: str | os.PathLike[str] | LakeFS,
    trade_type: str,
    interval: str,
    period_open: int | dt.datetime,
    timeout: float | None = None,  # noqa: ASYNC109 (the documented consumer API)
    *,
    symbols: Sequence[str] | None = None,
    poll: float = 0.05,
) -> dt.datetime:
    """Wait until the feed's watermark reaches ``period_open`` (the candle's open time, ms or UTC datetime).

    With ``symbols``, a watermark of a ``lake live --symbols`` run whose list holds all of them also
    counts (as does the feed-wide one). Returns the watermark (UTC datetime) at that moment; raises
    ``TimeoutError`` after ``timeout`` real seconds. The files are polled (``poll`` seconds) off the
    event loop, so this works across processes and on any lake root.
    """
    lfs = _lfs(root)
    target = _to_ms(period_open)
    watermark_path(trade_type, interval, symbols)  # validate now, not after the first poll
    wanted = set(_scope(symbols) or ())
    iv_name = parse_interval(interval, spot=get_trade_type(trade_type).is_spot).name
    deadline = None if timeout is None else time.monotonic() + timeout

    def best() -> int | None:
        docs = [read_watermark(lfs, trade_type, interval) or {}]
        if wanted:
            docs += [d for d in _subset_docs(lfs, trade_type, iv_name) if wanted <= set(d["scope"])]
        marks = [d.get("watermark_ms") for d in docs]
        return max((m for m in marks if isinstance(m, int)), default=None)

    while True:
        wm = await asyncio.to_thread(best)
        if wm is not None and wm >= target:
            return dt.datetime.fromtimestamp(wm / 1000, tz=dt.UTC)
        if deadline is not None and time.monotonic() >= deadline:
            have = _iso(wm) if wm is not None else "none"
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
