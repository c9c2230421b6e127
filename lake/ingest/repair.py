"""Refetch holes found by ``lake audit`` over REST, with the backfill's weight discipline."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from lake.ingest.backfill import BackfillReport, backfill
from lake.settings import Settings
from lake.store.fs import LakeFS

__all__ = ["repair_holes"]


def repair_holes(
    settings: Settings, items: Sequence[tuple[str, str, str, Sequence[Any]]]
) -> list[BackfillReport]:
    """Backfill each (trade type, interval) over the span of the given holes for the affected symbols.

    ``items`` are ``(trade_type, interval, symbol, holes)`` with holes having ``start``/``end``
    datetimes. The backfill plans from the lake, so only slots still missing are requested; slots the
    exchange answers empty are recorded as confirmed empty. Raises what ``backfill`` raises
    (``IncompleteError`` lists anything that could not be fetched).
    """
    return asyncio.run(_repair(settings, items))


async def _repair(
    settings: Settings, items: Sequence[tuple[str, str, str, Sequence[Any]]]
) -> list[BackfillReport]:
    spans: dict[tuple[str, str], list[tuple[dt.datetime, dt.datetime, str]]] = defaultdict(list)
    for tt, iv, sym, holes in items:
        for h in holes:
            spans[(tt, iv)].append((h.start, h.end, sym))
    reports = []
    lfs = LakeFS(settings.root)
    for (tt, iv), entries in sorted(spans.items()):
        start = min(e[0] for e in entries)
        end = max(e[1] for e in entries)
        syms = sorted({e[2] for e in entries})
        reports.append(
            await backfill(lfs, [tt], iv, start=start, end=end, symbols=syms, settings=settings, settle_ms=0)
        )
    return reports
