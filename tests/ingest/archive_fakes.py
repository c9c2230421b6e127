"""Archive files built in tests: kline CSVs (header or not, ms or µs), zips, checksums, listing XML."""

from __future__ import annotations

import hashlib
import io
import zipfile
from xml.sax.saxutils import escape

HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore\n"
)
DAY_MS = 86_400_000
MIN_MS = 60_000


def row(open_ms: int, step_ms: int = MIN_MS, *, us: bool = False, price: float | None = None) -> str:
    p = price if price is not None else 100.0 + (open_ms // MIN_MS) % 97
    mult = 1000 if us else 1
    close_t = (open_ms + step_ms) * mult - 1
    return (
        f"{open_ms * mult},{p},{p + 1},{p - 1},{p + 0.5},{(open_ms // MIN_MS) % 7},{close_t},"
        f"{((open_ms // MIN_MS) % 7) * 100},{(open_ms // MIN_MS) % 11},1.5,150.0,0\n"
    )


def csv(opens: list[int], *, header: bool = False, us: bool = False, step_ms: int = MIN_MS) -> bytes:
    body = "".join(row(t, step_ms, us=us) for t in opens)
    return ((HEADER if header else "") + body).encode()


def zip_bytes(data: bytes, name: str = "X-1m-2024-01-01.csv") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def checksum(data: bytes, name: str) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {name}".encode()


def day_opens(day_ms: int, step_ms: int = MIN_MS) -> list[int]:
    return list(range(day_ms, day_ms + DAY_MS, step_ms))


def listing_xml(
    keys: list[tuple[str, str, str, int]],
    prefixes: list[str],
    *,
    truncated: bool = False,
    next_marker: str | None = None,
    namespace: bool = True,
) -> bytes:
    ns = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' if namespace else ""
    parts = [f"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult{ns}><Name>b</Name>"]
    parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
    if next_marker:
        parts.append(f"<NextMarker>{escape(next_marker)}</NextMarker>")
    for key, lm, etag, size in keys:
        parts.append(
            f"<Contents><Key>{escape(key)}</Key><LastModified>{lm}</LastModified>"
            f"<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size></Contents>"
        )
    for p in prefixes:
        parts.append(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>")
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()
