"""The archive's S3-style bucket listing: parse ``ListBucketResult`` pages and walk their pagination.

One page looks like this (namespace and most fields trimmed)::

    <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
      <Name>data.binance.vision</Name><Prefix>data/spot/daily/klines/BTCUSDT/1m/</Prefix>
      <Marker></Marker><NextMarker>…-2024-01-02.zip.CHECKSUM</NextMarker>
      <MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
      <Contents><Key>data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip</Key>
        <LastModified>2024-01-02T06:12:44.000Z</LastModified><ETag>"9b2c…"</ETag><Size>58873</Size>
      </Contents>
      <CommonPrefixes><Prefix>data/spot/daily/klines/BTCUSDT/</Prefix></CommonPrefixes>
    </ListBucketResult>

Pages hold at most 1000 entries. While ``IsTruncated`` is true the next page is asked for with
``marker=`` set to ``NextMarker``, or, when the server omits it, to the greatest key or prefix of the
page (S3 returns keys in lexicographic order, so that continues right after it).
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from lake.binance.symbols import validate_symbol
from lake.errors import DataError, LakeError, NotFoundError, UpstreamError

__all__ = [
    "ListEntry",
    "ListPage",
    "Listing",
    "fetch_listing",
    "list_all",
    "parse_list_page",
    "symbols_from_prefixes",
]

log = logging.getLogger("lake.archive")

MAX_PAGES = 100_000  # a safety stop for a server whose marker never advances


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One object (file) in the bucket."""

    key: str
    last_modified: str = ""
    etag: str = ""
    size: int | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        """A change token: differs whenever Binance re-uploads the object."""
        return f"{self.etag}|{self.last_modified}|{self.size if self.size is not None else ''}"


@dataclass(frozen=True, slots=True)
class ListPage:
    """One parsed ``ListBucketResult`` page."""

    entries: list[ListEntry]
    prefixes: list[str]
    is_truncated: bool
    next_marker: str | None

    def continuation(self) -> str | None:
        """The marker for the next page, or ``None`` when this is the last one."""
        if not self.is_truncated:
            return None
        if self.next_marker:
            return self.next_marker
        last = [e.key for e in self.entries] + self.prefixes
        if not last:
            raise DataError("archive listing says it is truncated but the page is empty")
        return max(last)


@dataclass(slots=True)
class Listing:
    """Everything under one prefix: files by key and sub-directory prefixes."""

    entries: dict[str, ListEntry] = field(default_factory=dict)
    prefixes: list[str] = field(default_factory=list)
    pages: int = 0

    def by_name(self) -> dict[str, ListEntry]:
        return {e.name: e for e in self.entries.values()}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def parse_list_page(data: bytes) -> ListPage:
    """Parse one listing page (S3 XML namespace optional). Raises ``DataError`` if it is not one."""
    head = data[:4096].lstrip()
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in data.upper():
        raise DataError("archive listing contains a DTD; refusing to parse it")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"archive listing is not XML: {exc}; starts with {data[:120]!r}") from exc
    if _local(root.tag) != "ListBucketResult":
        raise DataError(f"archive listing: expected ListBucketResult, got <{_local(root.tag)}>")
    entries: list[ListEntry] = []
    prefixes: list[str] = []
    truncated = False
    next_marker: str | None = None
    for child in root:
        tag = _local(child.tag)
        if tag == "Contents":
            key = _child_text(child, "Key")
            if not key:
                raise DataError("archive listing: a Contents entry without a Key")
            size_s = _child_text(child, "Size")
            try:
                size = int(size_s) if size_s else None
            except ValueError as exc:
                raise DataError(f"archive listing: bad Size {size_s!r} for {key}") from exc
            entries.append(
                ListEntry(
                    key=key,
                    last_modified=_child_text(child, "LastModified") or "",
                    etag=(_child_text(child, "ETag") or "").strip('"'),
                    size=size,
                )
            )
        elif tag == "CommonPrefixes":
            p = _child_text(child, "Prefix")
            if p:
                prefixes.append(p)
        elif tag == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif tag == "NextMarker":
            next_marker = (child.text or "").strip() or None
    return ListPage(entries, prefixes, truncated, next_marker)


PageFetcher = Callable[[str], Awaitable[bytes]]


async def list_all(fetch_page: PageFetcher, *, max_pages: int = MAX_PAGES) -> Listing:
    """Walk every page: ``fetch_page(marker)`` returns the raw XML of the page starting after ``marker``."""
    out = Listing()
    marker = ""
    seen: set[str] = set()
    while True:
        page = parse_list_page(await fetch_page(marker))
        out.pages += 1
        for e in page.entries:
            out.entries[e.key] = e
        out.prefixes.extend(p for p in page.prefixes if p not in seen)
        seen.update(page.prefixes)
        nxt = page.continuation()
        if nxt is None:
            return out
        if nxt <= marker:
            raise DataError(f"archive listing does not advance past marker {marker!r}")
        if out.pages >= max_pages:
            raise DataError(f"archive listing exceeded {max_pages} pages")
        marker = nxt


_BACKOFF_S = 0.5  # first retry's wait, doubled each time (a module value: tests shorten it)


async def fetch_listing(
    session: aiohttp.ClientSession,
    list_url: str,
    prefix: str,
    *,
    retries: int = 4,
    backoff: float | None = None,
) -> Listing:
    """List everything under ``prefix`` (with ``delimiter=/``) from the bucket at ``list_url``.

    Transient failures (5xx, 403 WAF blocks, timeouts, dropped connections) are retried ``retries``
    times with exponential backoff, then raised as ``UpstreamError``.
    """

    async def fetch_page(marker: str) -> bytes:
        query = {"prefix": prefix, "delimiter": "/"}
        if marker:
            query["marker"] = marker
        url = f"{list_url.rstrip('/')}?{urlencode(query)}"
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        return body
                    if resp.status == 404:
                        raise NotFoundError(f"archive listing {url}: HTTP 404")
                    # 403: a WAF block (binance.md), retried like an outage; other 4xx say the
                    # request itself is wrong
                    if resp.status < 500 and resp.status not in (403, 408, 429):
                        raise DataError(f"archive listing {url}: HTTP {resp.status} {body[:200]!r}")
                    last = UpstreamError(f"archive listing {url}: HTTP {resp.status}")
            except LakeError:
                raise
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            if attempt < retries:
                await asyncio.sleep((_BACKOFF_S if backoff is None else backoff) * 2**attempt)
        raise UpstreamError(f"archive listing {url} failed after {retries + 1} attempts: {last}") from last

    return await list_all(fetch_page)


def symbols_from_prefixes(prefixes: list[str], base: str) -> list[str]:
    """Symbols of the ``<base>SYMBOL/`` sub-directories; malformed names are skipped with a warning.

    Every name comes from the network, so it is validated before it can become part of a path.
    """
    out: list[str] = []
    for p in prefixes:
        if not p.startswith(base):
            continue
        name = p[len(base) :].strip("/")
        try:
            out.append(validate_symbol(name))
        except LakeError:
            log.warning("archive listing: skipping malformed symbol directory %r", p)
    return sorted(set(out))
