"""Archive ingest (data.binance.vision): listing, plan, verified download, parse, manifest, hybrid run.

Public surface::

    archive_backfill(root, trade_types, interval, *, settings, start|days, end, symbols, source,
                     include_delisted, keep_zips, funding, recheck, progress) -> HybridResult
    ingest_archive(settings, trade_type, interval, symbols, start_ms, end_ms, *, keep_zips, …) -> ArchiveReport
    parse_kline_zip(path_or_bytes, *, start_ms, end_ms) -> pl.DataFrame   (lake kline schema)

Modules: ``listing`` (S3 XML pages + pagination), ``plan`` (file naming, what to fetch), ``download``
(temp file → SHA-256 → atomic move), ``parse`` (Polars), ``manifest`` (what was ingested, verified
against what), ``runner`` (one trade type), ``shortfall`` (files cut short, rows a re-upload no longer
has), ``hybrid`` (``--source archive|auto``), ``symbols`` (``--include-delisted`` classification).
"""

from __future__ import annotations

from lake.ingest.archive.hybrid import SOURCES, HybridResult, archive_backfill
from lake.ingest.archive.parse import parse_kline_csv, parse_kline_zip
from lake.ingest.archive.runner import ArchiveReport, download_dir, ingest_archive, lake_holes

__all__ = [
    "SOURCES",
    "ArchiveReport",
    "HybridResult",
    "archive_backfill",
    "download_dir",
    "ingest_archive",
    "lake_holes",
    "parse_kline_csv",
    "parse_kline_zip",
]
