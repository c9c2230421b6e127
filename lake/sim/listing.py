"""The S3 ListObjects (v1) view of the simulated archive: a virtual directory tree, never materialized.

``GET /archive-bucket?prefix=data/spot/daily/klines/&delimiter=/&marker=…&max-keys=…`` answers a
``ListBucketResult`` with ``Contents`` (Key, LastModified, ETag, Size, StorageClass) and
``CommonPrefixes/Prefix``, at most ``list_max_keys`` (1000) entries, ``IsTruncated`` and, when truncated
with a delimiter and ``list_next_marker`` is on, ``NextMarker`` (else the client continues from the last
key). Entries are those strictly after ``marker`` in byte order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from lake.binance.intervals import INTERVALS, Interval
from lake.sim.clock import MS_PER_DAY
from lake.sim.universe import SymbolInfo

if TYPE_CHECKING:
    from lake.sim.archive import Archive, FileMeta

__all__ = ["DAILY", "MONTHLY", "archive_intervals", "list_xml", "walk"]

_BUCKET = "data.binance.vision"
_MONTH = INTERVALS["1M"]
# Every market's intervals; spot adds 1s (``archive_intervals``).
DAILY = [iv for iv in INTERVALS.values() if iv.ms is not None and iv.ms <= MS_PER_DAY and not iv.spot_only]
MONTHLY = [iv for iv in INTERVALS.values() if not iv.spot_only]
_SECOND = INTERVALS["1s"]


def archive_intervals(market: str, freq: str, monthly_1s: bool = True) -> list[Interval]:
    """The intervals with ``freq`` (daily/monthly) files on ``market``: spot has 1s too (its monthly
    1s files unless ``monthly_1s`` is off, the ``archive_monthly_1s`` knob)."""
    base = DAILY if freq == "daily" else MONTHLY
    if market == "spot" and (freq == "daily" or monthly_1s):
        return [_SECOND, *base]
    return base


Entry = tuple[str, "FileMeta | None", bool]  # (key or prefix, file for keys, is CHECKSUM)


def iso_z(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _month(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m")


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d")


def _periods(arch: Archive, info: SymbolInfo, iv: Interval, freq: str) -> Iterator[FileMeta]:
    uni = arch.market.universe
    first = uni.next_valid(info, info.first_ms)
    if first is None:
        return
    now = arch.market.clock.now_ms()
    if freq == "daily":
        for d in range(first // MS_PER_DAY, now // MS_PER_DAY):
            f = arch.meta(info.market, info.symbol, iv, freq, _day(d * MS_PER_DAY))
            if f is not None:
                yield f
        return
    t = first
    while t < now:
        f = arch.meta(info.market, info.symbol, iv, freq, _month(t))
        if f is not None:
            yield f
        t = _MONTH.next_open(_MONTH.floor(t))


def _symbol_published(arch: Archive, info: SymbolInfo, freq: str) -> bool:
    """Whether the symbol's first file of ``freq`` is out (its directory then exists)."""
    first = arch.market.universe.next_valid(info, info.first_ms)
    if first is None:
        return False
    if freq == "daily":
        end = (first // MS_PER_DAY + 1) * MS_PER_DAY
        pub = end + int(arch.config.daily_lag_s * 1000)
    else:
        pub = _MONTH.next_open(_MONTH.floor(first)) + int(arch.config.monthly_lag_s * 1000)
    return pub <= arch.market.clock.now_ms()


def children(arch: Archive, d: str) -> list[Entry]:
    """Sorted entries directly under directory ``d`` ("" is the bucket root; others end with "/")."""
    parts = d.rstrip("/").split("/") if d else []
    if not parts:
        return [("data/", None, False)]
    if parts[0] != "data":
        return []
    if len(parts) == 1:
        return [("data/futures/", None, False), ("data/spot/", None, False)]
    if parts == ["data", "futures"]:
        return [("data/futures/cm/", None, False), ("data/futures/um/", None, False)]
    futures = parts[1] == "futures"
    mp_len = 3 if futures else 2
    market = {"spot": "spot", "um": "um", "cm": "cm"}.get(parts[mp_len - 1])
    if market is None or (futures and market == "spot") or (not futures and market != "spot"):
        return []
    rest = parts[mp_len:]
    if not rest:
        return [(f"{d}daily/", None, False), (f"{d}monthly/", None, False)]
    freq = rest[0]
    if freq not in ("daily", "monthly"):
        return []
    if len(rest) == 1:
        return [(f"{d}klines/", None, False)]
    if rest[1] != "klines":
        return []
    syms = arch.market.universe.symbols[market]
    if len(rest) == 2:
        return [(f"{d}{s}/", None, False) for s in sorted(syms) if _symbol_published(arch, syms[s], freq)]
    info = syms.get(rest[2])
    if info is None:
        return []
    ivs = {iv.archive_name: iv for iv in archive_intervals(market, freq, arch.config.archive_monthly_1s)}
    if len(rest) == 3:
        if not _symbol_published(arch, info, freq):
            return []
        return [(f"{d}{name}/", None, False) for name in sorted(ivs)]
    iv = ivs.get(rest[3])
    if iv is None or len(rest) > 4:
        return []
    out: list[Entry] = []
    for f in _periods(arch, info, iv, freq):
        out += [(f.key, f, False), (f.key + ".CHECKSUM", f, True)]
    return out


def walk(arch: Archive, prefix: str, marker: str, recursive: bool) -> Iterator[Entry]:
    """Entries under ``prefix`` after ``marker``: one level (delimiter "/") or every key (no delimiter)."""
    base = prefix[: prefix.rfind("/") + 1]

    def rec(d: str) -> Iterator[Entry]:
        for e in children(arch, d):
            key = e[0]
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            is_dir = e[1] is None
            if is_dir and recursive:
                if marker > key and not marker.startswith(key):
                    continue  # every key under this directory sorts before the marker
                yield from rec(key)
            elif key > marker and key.startswith(prefix):
                yield e

    yield from rec(base)


def _size(arch: Archive, f: FileMeta, is_ck: bool) -> int:
    if is_ck:
        return 66 + len(f.zip_name)
    if arch.config.list_exact_size:
        return arch.zip_digest(f)[1]
    rows = max(1, (f.end - f.start) // f.iv.approx_ms)
    return int(rows * (105 if f.market == "spot" else 72) * 0.42) + 180 + 2 * len(f.zip_name)


def list_xml(arch: Archive, prefix: str, delimiter: str | None, marker: str, max_keys: int) -> str:
    """The ListBucketResult XML for one page."""
    page: list[Entry] = []
    truncated = False
    for e in walk(arch, prefix, marker, recursive=delimiter != "/"):
        if len(page) == max_keys:
            truncated = True
            break
        page.append(e)
    x = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    ]
    x.append(f"<Name>{_BUCKET}</Name><Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker>")
    if truncated and delimiter and arch.config.list_next_marker and page:
        x.append(f"<NextMarker>{escape(page[-1][0])}</NextMarker>")
    x.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        x.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
    x.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    for key, f, is_ck in page:
        if f is not None:
            x.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>{iso_z(f.published)}</LastModified>"
                f"<ETag>{escape(f.etag, {chr(34): '&quot;'})}</ETag><Size>{_size(arch, f, is_ck)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
    for key, f, _ in page:
        if f is None:
            x.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
    x.append("</ListBucketResult>")
    return "".join(x)
