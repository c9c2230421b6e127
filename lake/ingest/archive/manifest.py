"""The archive manifest: which archive files were ingested into the lake, verified against what.

One JSON document per series, kept in the lake next to the data::

    _meta/archive/<market>/<archive interval>/<SYMBOL>.json
    {"version": 1,
     "files": {"BTCUSDT-1m-2024-01.zip": {
         "sha256": "9f2c…", "zip_version": "<ETag>|<Last-Modified>|<Size>",
         "checksum_version": "<same for the .CHECKSUM>", "etag": "…", "last_modified": "…",
         "rows": 44640, "start_ms": 1704067200000, "end_ms": 1706745600000,
         "ingested_at": "2024-02-05T09:12:01Z"}}}

A daily file's record also has ``vouched_end_ms``, the end of its last candle: the monthly file of
its month writes nothing before it on that day, and its rows after it stand (``plan``).

The archive interval name (``1mo``) is used in the path so ``1m`` and ``1M`` never collide on a
case-insensitive file system. A record is written only after the file's rows are in the lake, so a
crash between the two re-ingests the file next time (an idempotent upsert) and never skips it.
A record only lets a later run skip a file while the lake still holds at least its ``rows`` in the
file's period (``runner`` checks), so deleting partitions by hand never leaves a silent gap.

Kept ranges, beside it only while a series has any::

    _meta/archive_kept/<market>/<archive interval>/<SYMBOL>.json
    {"version": 1, "kept": [{"file": "BTCUSDT-5m-2024-02.zip", "start_ms": …, "end_ms": …}]}

are where a re-uploaded monthly file no longer has candles its earlier version had and the lake
kept them (``runner``): the run that ingests the re-upload names them, and ``lake audit`` keeps
naming the archive candles still stored there until a daily file of those days, or a later version
of the file, settles them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_market
from lake.binance.symbols import validate_symbol
from lake.errors import UnreadableJsonError
from lake.ingest.archive.plan import FileRecord, merge_spans, span_minus
from lake.store.fs import LakeFS
from lake.store.meta import read_json, write_json

__all__ = [
    "KeptRange",
    "kept_dir",
    "kept_path",
    "manifest_path",
    "read_kept",
    "read_manifest",
    "record_files",
    "update_kept",
]

VERSION = 1
log = logging.getLogger("lake.archive")


def manifest_path(market: str, interval: str, symbol: str) -> str:
    iv = parse_interval(interval)
    return f"_meta/archive/{get_market(market).name}/{iv.archive_name}/{validate_symbol(symbol)}.json"


def _lock_name(market: str, interval: str, symbol: str) -> str:
    return manifest_path(market, interval, symbol).removesuffix(".json")


def _load(lfs: LakeFS, rel: str) -> dict[str, dict[str, object]]:
    try:
        doc = read_json(lfs, rel)
    except UnreadableJsonError as exc:  # damaged: its files are checked against the lake again
        log.warning("ignoring damaged archive manifest: %s", exc)
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return {}
    return {str(k): v for k, v in doc["files"].items() if isinstance(v, dict)}


def read_manifest(lfs: LakeFS, market: str, interval: str, symbol: str) -> dict[str, FileRecord]:
    """Ingested files of one series by zip name (empty if none, or if the document is unreadable)."""
    out: dict[str, FileRecord] = {}
    for name, rec in _load(lfs, manifest_path(market, interval, symbol)).items():
        try:
            out[name] = FileRecord(
                sha256=str(rec["sha256"]),
                zip_version=str(rec["zip_version"]),
                checksum_version=str(rec.get("checksum_version", "")),
                rows=int(rec["rows"]),  # type: ignore[call-overload]
                start_ms=int(rec["start_ms"]),  # type: ignore[call-overload]
                end_ms=int(rec["end_ms"]),  # type: ignore[call-overload]
                vouched_end=None if rec.get("vouched_end_ms") is None else int(rec["vouched_end_ms"]),  # type: ignore[call-overload]
            )
        except (KeyError, TypeError, ValueError):
            continue  # a damaged record only costs a re-download
    return out


def record_files(
    lfs: LakeFS,
    market: str,
    interval: str,
    symbol: str,
    records: Iterable[tuple[str, FileRecord, dict[str, object]]],
) -> None:
    """Add or replace records (``(zip name, record, extra fields)``) under the manifest's lock."""
    items = list(records)
    if not items:
        return
    rel = manifest_path(market, interval, symbol)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with lfs.lock(_lock_name(market, interval, symbol)):
        files = _load(lfs, rel)
        for name, rec, extra in items:
            files[name] = {
                "sha256": rec.sha256,
                "zip_version": rec.zip_version,
                "checksum_version": rec.checksum_version,
                "rows": rec.rows,
                "start_ms": rec.start_ms,
                "end_ms": rec.end_ms,
                "ingested_at": now,
                **extra,
            }
        write_json(lfs, rel, {"version": VERSION, "files": dict(sorted(files.items()))})


@dataclass(frozen=True, slots=True, order=True)
class KeptRange:
    """Earlier archive rows of ``[start_ms, end_ms)`` the re-uploaded ``file`` no longer has."""

    start_ms: int
    end_ms: int
    file: str


def kept_dir(market: str, interval: str) -> str:
    """Where the kept-range records of a market and interval are (one ``<SYMBOL>.json`` each)."""
    return f"_meta/archive_kept/{get_market(market).name}/{parse_interval(interval).archive_name}"


def kept_path(market: str, interval: str, symbol: str) -> str:
    return f"{kept_dir(market, interval)}/{validate_symbol(symbol)}.json"


def _load_kept(lfs: LakeFS, rel: str) -> list[KeptRange]:
    try:
        doc = read_json(lfs, rel)
    except UnreadableJsonError as exc:
        log.warning("ignoring damaged record of kept archive rows: %s", exc)
        return []
    entries = doc.get("kept") if isinstance(doc, dict) else None
    out: list[KeptRange] = []
    for e in entries if isinstance(entries, list) else []:
        try:
            r = KeptRange(int(e["start_ms"]), int(e["end_ms"]), str(e["file"]))
        except (KeyError, TypeError, ValueError):
            continue
        if r.start_ms < r.end_ms:
            out.append(r)
    return sorted(out)


def read_kept(lfs: LakeFS, market: str, interval: str, symbol: str) -> list[KeptRange]:
    """The series' kept ranges (none if there is no record, or it is unreadable: a warning)."""
    return _load_kept(lfs, kept_path(market, interval, symbol))


def update_kept(
    lfs: LakeFS,
    market: str,
    interval: str,
    symbol: str,
    *,
    replaced: Collection[str] = (),
    settled: Sequence[tuple[int, int]] = (),
    added: Iterable[KeptRange] = (),
) -> list[KeptRange]:
    """Under the series' manifest lock: drop the ranges of the ``replaced`` files (ingested again,
    whose run reports its own), take ``settled`` spans (what daily files just ingested have candles
    for) out of the rest, add ``added``; the record is removed once empty. Returns what is kept."""
    rel = kept_path(market, interval, symbol)
    done = merge_spans(settled)
    with lfs.lock(_lock_name(market, interval, symbol)):
        before = _load_kept(lfs, rel)
        after = sorted(
            {
                KeptRange(a, b, r.file)
                for r in before
                if r.file not in replaced
                for a, b in span_minus((r.start_ms, r.end_ms), done)
            }
            | set(added)
        )
        if after != before:
            if after:
                write_json(
                    lfs,
                    rel,
                    {
                        "version": VERSION,
                        "kept": [{"file": r.file, "start_ms": r.start_ms, "end_ms": r.end_ms} for r in after],
                    },
                )
            else:
                lfs.remove(rel)
    return after
