"""The build manifest of one offsets table: how each series was built, from which base partitions.

    _meta/offsets/trade_type=<tt>/interval=<T>.json

Per symbol: the base interval, the method, the offsets kept, the change token of every base
partition used (``LakeFS.mtime_key``) and, per base partition, a fingerprint of each UTC day's rows.
A changed partition (a month of 5m) is narrowed to the days whose rows changed, so appending a day
recomputes about a day. A series built with ``--method binance`` also keeps the confirmed-empty
ranges its bins were built with: a range recorded later recomputes the bins within T of it.

The day fingerprints of a partition are stored packed (base64 of (day number, fingerprint, open time
of the day's last candle) records): a JSON object per day made the manifest of 300 symbols × a year
3.9 MB and its load and save ~0.1 s, as much as everything else an appended day costs; packed, a run
decodes only the partitions that changed. The last candle of a day tells an append inside a day
(a live period) from an edit: the day's new rows up to it must have the old fingerprint. Version 2 manifests (days as objects, a per-series ``tail_from`` for the per-period
``tail.parquet`` files of that layout) are read and converted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field

import numpy as np

from lake.errors import UnreadableJsonError
from lake.store.dayprints import last_open, pack_days, unpack_days
from lake.store.fs import LakeFS
from lake.store.meta import read_json, write_json
from lake.transform.layout import manifest_path

log = logging.getLogger("lake.offsets")

__all__ = ["Series", "last_open", "load_manifest", "pack_days", "save_manifest", "unpack_days"]

VERSION = 3
_EPOCH = dt.date(1970, 1, 1)


@dataclass(slots=True)
class Series:
    """How one series' offsets were built and from which base partition versions."""

    base: str
    method: str
    offsets: list[str]
    partitions: dict[str, str]  # base partition date -> change token
    days: dict[str, str] = field(default_factory=dict)  # base partition date -> pack_days(...)
    # from a version 2 manifest: bins from here on (ms) are in that layout's per-period tail.parquet
    # files, which the series' next run folds into its period files
    legacy_tail_from: int | None = None
    # method binance: the confirmed-empty ranges ([start, end) ms) the bins were built with (they
    # decide which bins cut by a maintenance window or a listing are kept); None for seed, or not known
    empty: list[list[int]] | None = None


def _from_v2(days: dict[str, dict[str, int]]) -> dict[str, str]:
    out = {}
    for part, per_day in days.items():
        pairs = sorted(((dt.date.fromisoformat(d) - _EPOCH).days, p) for d, p in per_day.items())
        days_ = np.array([d for d, _ in pairs], np.int64)
        out[part] = pack_days(days_, np.array([p for _, p in pairs], np.int64), np.full(len(pairs), -1))
    return out


def load_manifest(lfs: LakeFS, trade_type: str, interval: str) -> dict[str, Series]:
    try:
        doc = read_json(lfs, manifest_path(trade_type, interval))
    except UnreadableJsonError as exc:  # damaged: everything is rebuilt, which is always right
        log.warning("ignoring damaged offsets manifest: %s", exc)
        return {}
    if not isinstance(doc, dict):
        return {}
    series = doc.get("series", {})
    if doc.get("version") == VERSION:
        return {sym: Series(**entry) for sym, entry in series.items()}
    if doc.get("version") == 2:
        return {
            sym: Series(
                e["base"], e["method"], e["offsets"], e["partitions"], _from_v2(e["days"]), e.get("tail_from")
            )
            for sym, e in series.items()
        }
    return {}  # unknown: everything is recomputed


def save_manifest(lfs: LakeFS, trade_type: str, interval: str, manifest: dict[str, Series]) -> None:
    names = [f.name for f in dataclasses.fields(Series)]
    series = {  # (no deep copy; no empty ranges of seed builds, which have none)
        s: {f: getattr(st, f) for f in names if f != "empty" or st.empty is not None}
        for s, st in sorted(manifest.items())
    }
    write_json(lfs, manifest_path(trade_type, interval), {"version": VERSION, "series": series})
