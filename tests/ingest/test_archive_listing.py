"""The S3-style listing: page parsing and pagination (NextMarker or last key), hostile names."""

from __future__ import annotations

import pytest

from lake.errors import DataError
from lake.ingest.archive.listing import list_all, parse_list_page, symbols_from_prefixes
from tests.ingest.archive_fakes import listing_xml

PFX = "data/spot/daily/klines/BTCUSDT/1m/"


def keys(n: int) -> list[tuple[str, str, str, int]]:
    return [(f"{PFX}BTCUSDT-1m-{i:05d}.zip", "2024-01-02T06:00:00.000Z", f"e{i}", 100 + i) for i in range(n)]


@pytest.mark.parametrize("namespace", [True, False])
def test_parse_page(namespace: bool) -> None:
    page = parse_list_page(
        listing_xml(keys(2), ["data/spot/daily/klines/ETHUSDT/"], truncated=True, namespace=namespace)
    )
    assert [e.name for e in page.entries] == ["BTCUSDT-1m-00000.zip", "BTCUSDT-1m-00001.zip"]
    e = page.entries[1]
    assert (e.etag, e.size, e.last_modified) == ("e1", 101, "2024-01-02T06:00:00.000Z")
    assert page.prefixes == ["data/spot/daily/klines/ETHUSDT/"]
    assert page.is_truncated and page.next_marker is None
    # Without NextMarker the next page starts after the greatest key or prefix of this one.
    assert page.continuation() == "data/spot/daily/klines/ETHUSDT/"


def test_single_entry_page_and_not_truncated() -> None:
    page = parse_list_page(listing_xml(keys(1), []))
    assert len(page.entries) == 1 and page.continuation() is None


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body>not a listing</body></html>",
        b"garbage",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult>&a;</ListBucketResult>',
        listing_xml([], [], truncated=True),  # truncated but empty: cannot continue
    ],
)
def test_bad_pages_are_errors(data: bytes) -> None:
    with pytest.raises(DataError):
        parse_list_page(data).continuation()


class FakeBucket:
    """Serves ``entries`` in pages of ``max_keys`` after ``marker`` like S3 does."""

    def __init__(self, entries: list[tuple[str, str, str, int]], max_keys: int, next_marker: bool) -> None:
        self.entries = sorted(entries)
        self.max_keys = max_keys
        self.next_marker = next_marker
        self.markers: list[str] = []

    async def __call__(self, marker: str) -> bytes:
        self.markers.append(marker)
        rest = [e for e in self.entries if e[0] > marker]
        page, more = rest[: self.max_keys], len(rest) > self.max_keys
        nm = page[-1][0] if (more and self.next_marker) else None
        return listing_xml(page, [], truncated=more, next_marker=nm)


@pytest.mark.parametrize("next_marker", [True, False])
async def test_pagination_past_1000_keys(next_marker: bool) -> None:
    bucket = FakeBucket(keys(2501), 1000, next_marker)
    listing = await list_all(bucket)
    assert len(listing.entries) == 2501
    assert listing.pages == 3
    assert bucket.markers[0] == "" and bucket.markers[1] == keys(2501)[999][0]


async def test_pagination_with_single_entry_pages() -> None:
    bucket = FakeBucket(keys(5), 1, next_marker=False)
    listing = await list_all(bucket)
    assert len(listing.entries) == 5 and listing.pages == 5


async def test_marker_that_does_not_advance_is_an_error() -> None:
    async def stuck(marker: str) -> bytes:
        return listing_xml(keys(1), [], truncated=True, next_marker="")

    with pytest.raises(DataError, match="advance"):
        await list_all(stuck)


def test_symbols_from_prefixes_validates_names() -> None:
    base = "data/spot/daily/klines/"
    prefixes = [f"{base}BTCUSDT/", f"{base}../../etc/", f"{base}ethusdt/", f"{base}BTCUSD_PERP/", "other/X/"]
    assert symbols_from_prefixes(prefixes, base) == ["BTCUSDT", "BTCUSD_PERP"]
