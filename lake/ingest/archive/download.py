"""Download archive zips: received whole, SHA-256 checked against ``.CHECKSUM``, written to a temp
file, then moved.

A zip is held in memory while it is hashed and parsed (the bytes hashed are the bytes parsed, none
is read back): a few MB for a month of 1m candles, tens of MB for a month of spot ``1s`` (2.7M rows). With
``concurrency`` downloads (8) and two files parsed at a time, memory stays in the low GB even in
the worst case (1s); the CSV is parsed whole and written per day partition.

Download directory layout (never inside the parquet tree)::

    <download dir>/<archive key>                 a verified zip, e.g.
        data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip
    <download dir>/<archive key>.part-<pid>-<id> a verified zip being written (or killed mid-way)

A zip reaches its final name only after its bytes hashed to the value its ``.CHECKSUM`` announces, by
``os.replace`` (atomic), so an interrupted download never looks complete. ``.part`` files of
processes that no longer run are removed by ``clean_partials``. A final zip found from an earlier run
(``--keep-zips``, or a run killed between download and ingest) is re-hashed against the current
checksum before it is trusted.

A mismatch is retried (a fresh ``.CHECKSUM`` and a fresh zip) ``checksum_attempts`` times in all;
then ``DataError`` names the file. Network failures and 5xx are retried with capped backoff, then
``UpstreamError``; a 404 is ``NotFoundError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp

from lake.errors import DataError, LakeError, NotFoundError, UpstreamError
from lake.ingest.archive.plan import ArchiveFile
from lake.store.litter import pid_alive

_T = TypeVar("_T")

__all__ = [
    "Downloaded",
    "Downloader",
    "clean_partials",
    "parse_checksum",
    "sha256_file",
]

log = logging.getLogger("lake.archive")

_PART_RE = re.compile(r"\.part-(\d+)-[0-9a-f]+$")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def parse_checksum(text: bytes, name: str) -> str:
    """The SHA-256 in a ``.CHECKSUM`` body (``"<hex>  <zip name>"``, trailing newline optional).

    The name is UTF-8 (symbols such as 币安人生USDT) and may carry a directory, as ``sha256sum``
    prints it when run from elsewhere; only its last component must be the zip's name.
    """
    try:
        line = text.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}.CHECKSUM is not UTF-8 text") from exc
    parts = line.split()
    if not parts or not _HEX64.fullmatch(parts[0]):
        raise DataError(f"{name}.CHECKSUM is malformed: {line[:120]!r}")
    if len(parts) > 1 and parts[-1].lstrip("*").replace("\\", "/").rsplit("/", 1)[-1] != name:
        raise DataError(f"{name}.CHECKSUM names another file: {parts[-1][:80]!r}")
    return parts[0].lower()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def clean_partials(directory: Path) -> int:
    """Remove ``.part`` files left by processes that no longer run; returns how many."""
    removed = 0
    if not directory.exists():
        return 0
    for dirpath, _dirs, files in os.walk(directory):
        for f in files:
            m = _PART_RE.search(f)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, f))
                    removed += 1
    return removed


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A verified zip: its bytes (the ones that were hashed) and where it lies on disk.

    Parse ``data``, not ``path``: another ``lake`` process sharing the download directory may
    delete or replace the file on disk once it has ingested it.
    """

    file: ArchiveFile
    path: Path
    sha256: str
    etag: str
    last_modified: str
    size: int
    reused: bool = False  # found verified on disk, not downloaded this time
    attempts: int = 1
    data: bytes = field(default=b"", repr=False)


class Downloader:
    """Fetches and verifies archive files under ``directory`` from the archive at ``base_url``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        directory: Path,
        *,
        checksum_attempts: int = 3,
        retries: int = 4,
        backoff: float = 0.25,
        backoff_cap: float = 5.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.directory = Path(directory)
        self.checksum_attempts = checksum_attempts
        self.retries = retries
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.bytes = 0
        self.requests = 0

    def path_of(self, f: ArchiveFile) -> Path:
        return self.directory / f.key

    def url_of(self, key: str) -> str:
        return f"{self.base_url}/{key}"

    async def _sleep(self, attempt: int) -> None:
        delay = min(self.backoff_cap, self.backoff * 2**attempt)
        await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _retrying(self, url: str, once: Callable[[], Awaitable[_T]]) -> _T:
        """Run one GET attempt, retrying upstream failures with capped, jittered backoff; terminal
        errors (404, bad data) propagate at once, and the last failure is raised after the retries."""
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                self.requests += 1
                return await once()
            except LakeError as exc:
                if not isinstance(exc, UpstreamError):
                    raise
                last = exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            if attempt < self.retries:
                await self._sleep(attempt)
        raise UpstreamError(f"{url}: failed after {self.retries + 1} attempts: {last}") from last

    async def fetch_checksum(self, f: ArchiveFile) -> str:
        url = self.url_of(f.checksum_key)

        async def once() -> str:
            async with self.session.get(url) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return parse_checksum(body, f.name)
                _raise_for_status(resp.status, url)
                raise UpstreamError(f"{url}: HTTP {resp.status}")

        return await self._retrying(url, once)

    async def _download_once(self, f: ArchiveFile) -> tuple[bytes, str, str]:
        """GET the zip; returns (its bytes, etag, last_modified)."""
        url = self.url_of(f.key)

        async def once() -> tuple[bytes, str, str]:
            async with self.session.get(url) as resp:
                data = await resp.read()
                if resp.status != 200:
                    _raise_for_status(resp.status, url)
                    raise UpstreamError(f"{url}: HTTP {resp.status}")
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) != len(data):
                    raise UpstreamError(f"{url}: got {len(data)} of {length} bytes")
                self.bytes += len(data)
                etag = resp.headers.get("ETag", "").strip('"')
                return data, etag, resp.headers.get("Last-Modified", "")

        return await self._retrying(url, once)

    async def fetch(self, f: ArchiveFile) -> Downloaded:
        """A verified copy of ``f`` on disk (downloaded unless a verified copy is already there)."""
        final = self.path_of(f)
        mismatches: list[str] = []
        for attempt in range(1, self.checksum_attempts + 1):
            expected = await self.fetch_checksum(f)
            if attempt == 1:
                on_disk = await asyncio.to_thread(_prepare, final)
                if on_disk is not None:
                    have = hashlib.sha256(on_disk).hexdigest()
                    if have == expected:
                        return Downloaded(f, final, have, "", "", len(on_disk), reused=True, data=on_disk)
                    await asyncio.to_thread(_unlink, final)
            data, etag, last_modified = await self._download_once(f)
            # Hashed in a thread (hashlib releases the GIL): the event loop keeps serving the other
            # downloads, and the bytes that were hashed are the ones parsed, nothing is read back.
            got = await asyncio.to_thread(_keep_if_verified, data, expected, final)
            if got == expected:
                return Downloaded(f, final, got, etag, last_modified, len(data), attempts=attempt, data=data)
            mismatches.append(f"got {got[:12]}…, .CHECKSUM says {expected[:12]}…")
            log.warning("%s: SHA-256 mismatch (attempt %d/%d)", f.key, attempt, self.checksum_attempts)
        raise DataError(
            f"{f.key}: SHA-256 does not match its .CHECKSUM after {self.checksum_attempts} downloads "
            f"({'; '.join(mismatches)})"
        )


def _prepare(final: Path) -> bytes | None:
    """Make the zip's directory; the bytes of a zip already there (an earlier run's), if any."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return _read_or_none(final)


def _keep_if_verified(data: bytes, expected: str, final: Path) -> str:
    """The SHA-256 of ``data``; when it is ``expected``, the bytes are written to a ``.part`` file
    that is then renamed to ``final`` (atomic: an interrupted write never carries the final name).

    No fsync: a zip is trusted only after its bytes hash to its .CHECKSUM, and a copy found on disk
    later is re-hashed first (a torn file after a crash is downloaded again)."""
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        return got
    part = final.with_name(f"{final.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        part.write_bytes(data)
        os.replace(part, final)
    finally:
        _unlink(part)
    return got


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _raise_for_status(status: int, url: str) -> None:
    """Raise the terminal error for a non-retryable status; return for retryable ones.

    Only 404 is final. Any other status says the file is not being served right now (403 is
    CloudFront's WAF block, 5xx an outage), never that its content is wrong: it is retried and then
    raised as ``UpstreamError``, so ``--source auto`` fills the file's days over REST instead of
    keeping them out of the lake as it does for a file that fails verification (``DataError``)."""
    if status == 404:
        raise NotFoundError(f"{url}: HTTP 404 (listed but not served)")
