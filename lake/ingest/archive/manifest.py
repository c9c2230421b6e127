"""The archive manifest: which archive files were ingested into the lake, verified against what.

One JSON document per series, kept in the lake next to the data::

    _meta/archive/<market>/<archive interval>/<SYMBOL>.json
    {"version": 1,
     "files": {"BTCUSDT-1m-2024-01.zip": {
         "sha256": "9f2c…", "zip_version": "<ETag>|<Last-Modified>|<Size>",
         "checksum_version": "<same for the .CHECKSUM>", "etag": "…", "last_modified": "…",
         "rows": 44640, "start_ms": 1704067200000, "end_ms": 1706745600000,
         "ingested_at": "2024-02-05T09:12:01Z"}}}

The archive interval name (``1mo``) is used in the path so ``1m`` and ``1M`` never collide on a
case-insensitive file system. A record is written only after the file's rows are in the lake, so a
crash between the two re-ingests the file next time (an idempotent upsert) and never skips it.
A record only lets a later run skip a file while the lake still holds at least its ``rows`` in the
file's period (``runner`` checks), so deleting partitions by hand never leaves a silent gap.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

from lake.binance.intervals import parse_interval
from lake.binance.markets import get_market
from lake.binance.symbols import validate_symbol
from lake.errors import UnreadableJsonError
from lake.ingest.archive.plan import FileRecord
from lake.store.fs import LakeFS
from lake.store.meta import read_json, write_json

__all__ = ["manifest_path", "read_manifest", "record_files"]

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
            )
        except (KeyError, TypeError, ValueError):
            continue  # a damaged record only costs a re-download
    return out


def record_files(
    lfs: LakeFS,
    market: str,
    interval: str,
    symbol: str,
    records: Iterable[tuple[str, FileRecord, dict[str, str]]],
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
