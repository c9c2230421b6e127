"""Small JSON state kept in the lake next to the data, written atomically under the series lock.

* ``_meta/empty/<series>.json``: ranges the exchange confirmed to have no candles (maintenance,
  no trading). Backfills record them so later runs do not refetch them forever; coverage reports
  holes inside them as exchange holes rather than missing data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from lake.errors import UnreadableJsonError
from lake.store.fs import LakeFS
from lake.store.paths import series_dir

log = logging.getLogger("lake.store")

__all__ = [
    "EmptyRange",
    "add_empty_ranges",
    "clear_empty_ranges",
    "read_empty_ranges",
    "read_json",
    "write_json",
]


@dataclass(frozen=True, slots=True, order=True)
class EmptyRange:
    """Half-open ``[start_ms, end_ms)`` in which the exchange has no candles for the series."""

    start_ms: int
    end_ms: int


def read_json(lfs: LakeFS, rel: str) -> object | None:
    """The document at ``rel``, ``None`` if there is none; ``UnreadableJsonError`` names a damaged one."""
    data = lfs.read_bytes_or_none(rel)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise UnreadableJsonError(f"{rel} in the lake is not valid JSON ({exc})") from exc


def write_json(lfs: LakeFS, rel: str, obj: object) -> None:
    lfs.write_atomic(rel, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _empty_path(trade_type: str, interval: str, symbol: str) -> str:
    return f"_meta/empty/{series_dir('klines', trade_type, interval, symbol)}.json"


def _normalise(ranges: list[EmptyRange]) -> list[EmptyRange]:
    out: list[EmptyRange] = []
    for r in sorted(ranges):
        if r.end_ms <= r.start_ms:
            continue
        if out and r.start_ms <= out[-1].end_ms:
            out[-1] = EmptyRange(out[-1].start_ms, max(out[-1].end_ms, r.end_ms))
        else:
            out.append(r)
    return out


def read_empty_ranges(
    root: LakeFS | str | os.PathLike[str], trade_type: str, interval: str, symbol: str
) -> list[EmptyRange]:
    lfs = root if isinstance(root, LakeFS) else LakeFS(root)
    rel = _empty_path(trade_type, interval, symbol)
    try:
        doc = read_json(lfs, rel)
        if not isinstance(doc, list):
            return []
        # sorted and merged: lake's writers merge, but a file edited by hand or by another tool may
        # hold overlapping ranges, which coverage and planning would count twice
        return _normalise([EmptyRange(int(a), int(b)) for a, b in doc])
    except (UnreadableJsonError, TypeError, ValueError) as exc:
        # Only a cache of what the exchange answered: without it those slots are asked again (and
        # the file rewritten), never wrongly reported complete.
        log.warning("ignoring damaged confirmed-empty record %s: %s", rel, exc)
        return []


def add_empty_ranges(
    root: LakeFS | str | os.PathLike[str],
    trade_type: str,
    interval: str,
    symbol: str,
    ranges: list[EmptyRange],
) -> None:
    """Record ranges as confirmed empty (merged with those already recorded)."""
    if not ranges:
        return
    lfs = root if isinstance(root, LakeFS) else LakeFS(root)
    with lfs.lock(series_dir("klines", trade_type, interval, symbol)):
        merged = _normalise(read_empty_ranges(lfs, trade_type, interval, symbol) + list(ranges))
        write_json(lfs, _empty_path(trade_type, interval, symbol), [[r.start_ms, r.end_ms] for r in merged])


def clear_empty_ranges(
    root: LakeFS | str | os.PathLike[str], trade_type: str, interval: str, symbol: str
) -> None:
    """Forget recorded empty ranges (``--recheck``)."""
    lfs = root if isinstance(root, LakeFS) else LakeFS(root)
    with lfs.lock(series_dir("klines", trade_type, interval, symbol)):
        lfs.remove(_empty_path(trade_type, interval, symbol))
