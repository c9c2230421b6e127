"""data.binance.vision: kline zips, CHECKSUM sidecars and the S3 ``ListBucketResult`` listing.

Files: ``/archive/data/{spot|futures/um|futures/cm}/{daily|monthly}/klines/{SYMBOL}/{interval}/
{SYMBOL}-{interval}-{YYYY-MM-DD|YYYY-MM}.zip`` (+ ``.CHECKSUM``: ``"<sha256>  <zipname>"``, two spaces, no
trailing newline). Daily files exist for 1m…1d, monthly ones also for 3d, 1w and ``1mo``; spot also has
daily and monthly ``1s`` files (``archive_monthly_1s`` turns the monthly ones off). A zip holds one
CSV named like it, with the 12 REST fields. Spot files dated from ``spot_us_from`` use µs timestamps;
futures files carry a header row from ``futures_header_from`` for a deterministic
``futures_header_fraction`` of files; spot files never do.

A daily file appears ``daily_lag_s`` (virtual) after its day ends, a monthly one ``monthly_lag_s`` after
the close of its last candle. No candles, no file. ``ETag`` is a hash of the key and its re-upload count
(not the MD5 of the body); ``Last-Modified`` is the publication or re-upload time (virtual). Listing
``Size`` of a zip is an estimate unless ``list_exact_size`` (building every zip of a page is slow).

Zips are built on their first request and kept in an LRU cache (daily 1s zips, ~4 MB each, in one of
their own: a quarter of ``cache_1s_mb``). Monthly 1s zips (~2.6M rows, ~100 MB of CSV) are never held
whole: each request builds one as a stream, a day of candles at a time, in a worker thread (the event
loop keeps serving); its SHA-256 and size are remembered from the first full pass (a ``.CHECKSUM``
asked first costs a pass of its own), and a corrupt-zip fault flips 64 bytes at offset 65536 of such a
stream. ``POST /_sim/archive {"static": true}`` keeps every zip once built (monthly 1s excepted) (the real archive is static files on a CDN; the
benchmarks use it so that building zips is not part of their timing); ``GET /_sim/archive`` reports
how many zips were built and their CPU time.

Publishing mistakes Binance has made, set from Python (``archive.edit_file``, ``archive.no_checksum``,
``archive.fail_list_pages``): a file published without some of its candles (a monthly file holding only
its first days, binance-public-data #320/#359; a partial daily upload, #411) or with a stale candle
(a monthly file disagreeing with the daily file and REST, #475); a ``.CHECKSUM`` listed but not
served; listing pages after the first failing (503) a number of times. Editing a file, or removing its
edit (a corrected re-upload), publishes a new version of it: new ETag, Last-Modified the edit time.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import hashlib
import io
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from xml.sax.saxutils import escape

import numpy as np
from aiohttp import web

from lake.binance.intervals import Interval, parse_interval
from lake.binance.markets import MARKETS
from lake.sim.cache import ByteLRU
from lake.sim.candles import Candles
from lake.sim.clock import MS_PER_DAY, to_ms
from lake.sim.faults import Faults
from lake.sim.fmt import csv_bytes
from lake.sim.limits import Stats
from lake.sim.listing import archive_intervals, list_xml
from lake.sim.market import SimMarket
from lake.sim.universe import SymbolInfo, stable_hash

__all__ = ["Archive", "FileEdit", "FileMeta"]

_PREFIX = {MARKETS[m].archive_prefix: m for m in MARKETS}  # "data/futures/um" -> "um"
_CORRUPT_AT = 1 << 16  # where a corrupt-zip fault flips 64 bytes of a streamed (monthly 1s) zip
_KEY = re.compile(
    r"(data/(?:spot|futures/um|futures/cm))/(daily|monthly)/klines/([^/]+)/([0-9a-z]+)/"
    r"([^/-]+)-([0-9a-z]+)-(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?"
)


@dataclass(frozen=True)
class FileEdit:
    """How a published file differs from the candles: ``drop`` leaves out the candles opening in these
    ``[start_ms, end_ms)`` ranges; ``stale`` gives the candles opening at these times one more lot of
    volume than the exchange has (the other files and REST keep the true value)."""

    drop: tuple[tuple[int, int], ...] = ()
    stale: tuple[int, ...] = ()

    def apply(self, c: Candles) -> Candles:
        if self.drop and len(c):
            keep = np.ones(len(c), dtype=bool)
            for a, b in self.drop:
                keep &= (c.t < a) | (c.t >= b)
            c = c.take(keep)
        if self.stale and len(c):
            hit = np.isin(c.t, np.asarray(self.stale, dtype=np.int64))
            if hit.any():
                c = c.copy()
                c.v[hit] += 1
        return c


@dataclass(frozen=True)
class FileMeta:
    market: str
    info: SymbolInfo
    iv: Interval
    freq: str  # "daily" | "monthly"
    period: str  # YYYY-MM-DD | YYYY-MM
    start: int
    end: int
    published: int
    revision: int
    edit: FileEdit | None = None
    edit_serial: int = 0  # versions published by ``Archive.edit_file`` (0: never edited)

    @property
    def zip_name(self) -> str:
        return f"{self.info.symbol}-{self.iv.archive_name}-{self.period}.zip"

    @property
    def key(self) -> str:
        pre = MARKETS[self.market].archive_prefix
        return f"{pre}/{self.freq}/klines/{self.info.symbol}/{self.iv.archive_name}/{self.zip_name}"

    @property
    def streamed(self) -> bool:
        """A monthly 1s file: built as a stream on every request, never held whole."""
        return self.freq == "monthly" and self.iv.name == "1s"

    @property
    def etag(self) -> str:
        version = f"{self.key}:{self.revision}" + (f":e{self.edit_serial}" if self.edit_serial else "")
        return '"' + hashlib.md5(version.encode()).hexdigest() + '"'

    @property
    def cache_key(self) -> tuple[str, int, int, int]:
        return (self.key, self.revision, self.info.version, self.edit_serial)


def _month_bounds(period: str) -> tuple[int, int]:
    y, m = int(period[:4]), int(period[5:7])
    start = to_ms(dt.date(y, m, 1))
    return start, start + calendar.monthrange(y, m)[1] * MS_PER_DAY


def _http_date(ms: int) -> str:
    return format_datetime(dt.datetime.fromtimestamp(ms // 1000, tz=dt.UTC), usegmt=True)


class Archive:
    """The archive files and listing of one simulated market."""

    def __init__(self, market: SimMarket, faults: Faults, stats: Stats):
        self.market = market
        self.config = market.config
        self.faults = faults
        self.stats = stats
        self.reuploads: dict[tuple[str, str, int], tuple[int, int]] = {}  # (market, symbol, day) -> (n, at)
        self._zips: ByteLRU[bytes] = ByteLRU(market.config.cache_mb * 2**20 // 8, len)
        self._zips_1s: ByteLRU[bytes] = ByteLRU(market.config.cache_1s_mb * 2**20 // 4, len)
        self._sha: ByteLRU[str] = ByteLRU(1 << 20, lambda _: 100)  # SHA-256 of a built zip, by its cache key
        self._streamed: ByteLRU[tuple[str, int]] = ByteLRU(1 << 20, lambda _: 100)  # (SHA-256, size)
        # Static mode (``POST /_sim/archive {"static": true}``): every zip, once built, is kept, as a CDN
        # serves the real archive's files; benchmarks use it to keep the zip building out of their timing.
        self._static: dict[tuple[str, int, int, int], bytes] | None = None
        self.built = 0  # zips built (not served from a cache)
        self.build_s = 0.0  # thread CPU seconds spent building them
        # Publishing mistakes (module doc): zip name -> (edit or None once corrected, serial, when).
        self.edits: dict[str, tuple[FileEdit | None, int, int]] = {}
        self.no_checksum: set[str] = set()  # zip names whose .CHECKSUM is listed but answers 404
        self.fail_list_pages = 0  # listing requests with a marker (pages after the first) to fail
        self.fail_list_status = 503

    # ---- files ------------------------------------------------------------------------------------
    def meta(self, market: str, symbol: str, iv: Interval, freq: str, period: str) -> FileMeta | None:
        """The file if it is published now (virtual clock), else None."""
        info = self.market.universe.get(market, symbol)
        if info is None or iv not in archive_intervals(market, freq, self.config.archive_monthly_1s):
            return None
        if freq == "daily":
            start = to_ms(period)
            end = start + MS_PER_DAY
            published = end + int(self.config.daily_lag_s * 1000)
            if self.faults.is_missing(market, symbol, period):
                return None
        else:
            start, end = _month_bounds(period)
            last_close = iv.next_open(iv.floor(end - 1))
            published = max(end, last_close) + int(self.config.monthly_lag_s * 1000)
        first = iv.floor(start) if iv.floor(start) >= start else iv.next_open(iv.floor(start))
        if not self.market.universe.has_data(info, first, iv.next_open(iv.floor(end - 1))):
            return None
        n, at = 0, 0
        for (m, s, day), (cnt, when) in self.reuploads.items():
            if m == market and s == symbol and start <= day * MS_PER_DAY < end:
                n, at = n + cnt, max(at, when)
        published = max(published, at)
        edit, serial = None, 0
        edited = self.edits.get(f"{symbol}-{iv.archive_name}-{period}.zip")
        if edited is not None:
            edit, serial, when = edited
            published = max(published, when)
        if published > self.market.clock.now_ms():
            return None
        return FileMeta(market, info, iv, freq, period, start, end, published, n, edit, serial)

    def edit_file(self, name: str, edit: FileEdit | None) -> None:
        """Publish the zip ``name`` (e.g. ``BTCUSDT-5m-2024-02.zip``) with ``edit`` applied, or, with
        ``None``, as the candles are (a corrected re-upload): a new version of the file either way."""
        _, serial, _ = self.edits.get(name, (None, 0, 0))
        self.edits[name] = (edit, serial + 1, self.market.clock.now_ms())

    def _micro(self, f: FileMeta) -> bool:
        return f.market == "spot" and f.start >= to_ms(self.config.spot_us_from)

    def _header(self, f: FileMeta) -> bool:
        if f.market == "spot":
            return False
        since = self.config.futures_header_from.get(f.market)
        if since is None or f.start < to_ms(since):
            return False
        frac = float(self.config.futures_header_fraction.get(f.market, 1.0))
        return stable_hash(f.key) % 10_000 < frac * 10_000

    def set_static(self, on: bool) -> None:
        """Keep every zip once built (``on``), or only the LRU cache's share (the default)."""
        if on and self._static is None:
            self._static = {}
        elif not on:
            self._static = None

    def zip_bytes(self, f: FileMeta) -> bytes:
        """The (good) zip of a file, cached by key and content version (a monthly 1s zip is built
        whole here, uncached: the server streams those, see ``zip_stream``)."""
        if f.streamed:
            return b"".join(self.zip_stream(f))
        key = f.cache_key
        cache = self._zips_1s if f.iv.name == "1s" else self._zips
        if self._static is not None:
            data = self._static.get(key)
            if data is None:
                data = self._static[key] = cache.get_or(key, lambda: self._build(f))
            return data
        return cache.get_or(key, lambda: self._build(f))

    def zip_digest(self, f: FileMeta) -> tuple[str, int]:
        """(SHA-256 hex, size) of the good zip."""
        key = f.cache_key
        if f.streamed:
            got = self._streamed.get(key)
            if got is None:
                h, size = hashlib.sha256(), 0
                for chunk in self.zip_stream(f):
                    h.update(chunk)
                    size += len(chunk)
                got = self._streamed.put(key, (h.hexdigest(), size))
            return got
        data = self.zip_bytes(f)
        return self._sha.get_or(key, lambda: hashlib.sha256(data).hexdigest()), len(data)

    def zip_stream(self, f: FileMeta) -> Iterator[bytes]:
        """The zip of a file as chunks, built a day at a time (memory: one day of candles and CSV).
        The whole stream's digest is remembered once it has run to the end."""
        t0 = time.thread_time()
        key = f.cache_key
        sink = _Sink()
        h, size = hashlib.sha256(), 0
        micro, header = self._micro(f), self._header(f)
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as z:
            ts = dt.datetime.fromtimestamp(f.published // 1000, tz=dt.UTC)
            zi = zipfile.ZipInfo(f.zip_name[:-4] + ".csv", date_time=ts.timetuple()[:6])
            zi.compress_type = zipfile.ZIP_DEFLATED
            setattr(zi, "_compresslevel", 1)  # noqa: B010 - deflate level 1, as _build_zip
            with z.open(zi, "w") as w:
                for day in range(f.start // MS_PER_DAY, f.end // MS_PER_DAY):
                    c = self.market.day_candles(f.info, f.iv, day)
                    if f.edit is not None:
                        c = f.edit.apply(c)
                    first = day * MS_PER_DAY == f.start
                    w.write(csv_bytes(f.info, f.iv, c, micro=micro, header=header and first))
                    chunk = sink.take()
                    if chunk:
                        h.update(chunk)
                        size += len(chunk)
                        t1 = time.thread_time()
                        self.build_s += t1 - t0
                        yield chunk
                        t0 = time.thread_time()
        chunk = sink.take()
        h.update(chunk)
        size += len(chunk)
        self.built += 1
        self.build_s += time.thread_time() - t0
        self._streamed.put(key, (h.hexdigest(), size))
        yield chunk

    def _build(self, f: FileMeta) -> bytes:
        t0 = time.thread_time()
        try:
            return self._build_zip(f)
        finally:
            self.built += 1
            self.build_s += time.thread_time() - t0

    def _build_zip(self, f: FileMeta) -> bytes:
        """One zip: candles, then CSV, then deflate."""
        c = self.market.candles(f.info, f.iv, f.start, f.end)
        if f.edit is not None:
            c = f.edit.apply(c)
        body = csv_bytes(f.info, f.iv, c, micro=self._micro(f), header=self._header(f))
        buf = io.BytesIO()
        # Deflate level 1: the same format as Binance's zips, built ~4x faster than at the default
        # level 6 (which took two thirds of the simulator's CPU in an end-to-end archive run, where
        # real Binance serves static files), at ~15% more bytes.
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            ts = dt.datetime.fromtimestamp(f.published // 1000, tz=dt.UTC)
            zi = zipfile.ZipInfo(f.zip_name[:-4] + ".csv", date_time=ts.timetuple()[:6])
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, body, compresslevel=1)
        return buf.getvalue()

    def checksum_text(self, f: FileMeta) -> str:
        if not self.faults.checksum_is_wrong(f.key):
            digest = self.zip_digest(f)[0]
        elif f.streamed:
            digest = hashlib.sha256(b"wrong" + self.zip_digest(f)[0].encode()).hexdigest()
        else:
            digest = hashlib.sha256(b"wrong" + self.zip_bytes(f)).hexdigest()
        return f"{digest}  {f.zip_name}"

    def parse_key(self, key: str) -> tuple[FileMeta | None, bool]:
        """(file, is_checksum) for an archive key; file None if it does not exist (now)."""
        m = _KEY.fullmatch(key)
        if not m:
            return None, False
        pre, freq, sym, ivn, sym2, ivn2, period, ck = m.groups()
        if sym != sym2 or ivn != ivn2 or (freq == "daily") != (len(period) == 10):
            return None, False
        try:
            iv = parse_interval(ivn)
        except Exception:
            return None, False
        if iv.archive_name != ivn:
            return None, False
        return self.meta(_PREFIX[pre], sym, iv, freq, period), ck is not None

    def reupload(self, market: str, symbol: str, day: int | str) -> int:
        """Re-publish a day with corrected content (one candle's volume changes); returns the candle's open."""
        t = self.market.correct_day(market, symbol, day)
        d = t // MS_PER_DAY
        n, _ = self.reuploads.get((market, symbol, d), (0, 0))
        self.reuploads[(market, symbol, d)] = (n + 1, self.market.clock.now_ms())
        return t

    # ---- HTTP -------------------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/archive/{key:.+}", self.get_file)
        app.router.add_get("/archive-bucket", self.list_bucket)
        app.router.add_get("/archive-bucket/", self.list_bucket)
        app.router.add_get("/_sim/archive", self.get_control)
        app.router.add_post("/_sim/archive", self.post_control)

    def control_info(self) -> dict[str, object]:
        static = self._static
        return {
            "static": static is not None,
            "static_files": len(static) if static is not None else 0,
            "static_bytes": sum(map(len, static.values())) if static is not None else 0,
            "zips_built": self.built,
            "zip_build_cpu_s": round(self.build_s, 3),
        }

    async def get_control(self, request: web.Request) -> web.Response:
        return web.json_response(self.control_info())

    async def post_control(self, request: web.Request) -> web.Response:
        """``{"static": true|false}``: keep every built zip (a CDN's static files) or not."""
        try:
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict) or not isinstance(body.get("static", False), bool):
                raise ValueError('expected {"static": true|false}')
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if "static" in body:
            self.set_static(body["static"])
        return web.json_response(self.control_info())

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        f, is_ck = self.parse_key(key)
        self.stats.count("archive", "requests")
        if f is None:
            self.stats.count("archive", "status_404")
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                f"<Message>The specified key does not exist.</Message><Key>{escape(key)}</Key></Error>"
            )
            return web.Response(status=404, text=body, content_type="application/xml")
        if is_ck and f.zip_name in self.no_checksum:
            self.stats.count("archive", "status_404")
            return web.Response(status=404, text="NoSuchKey")
        if not is_ck and self.faults.is_unserved(f.key):
            status = self.faults.unserved_status
            self.stats.count("archive", f"status_{status}")
            return web.Response(status=status, text="unavailable")
        if is_ck:
            data = self.checksum_text(f).encode()
        elif f.streamed:
            return await self._send_stream(request, f)
        else:
            data = self.zip_bytes(f)
            if self.faults.is_corrupt(f.key):
                mid = len(data) // 2
                data = data[:mid] + bytes(b ^ 0x5A for b in data[mid : mid + 64]) + data[mid + 64 :]
            if request.method == "GET":
                self.faults.note_zip_download(f.key)
        self.stats.count("archive", "status_200")
        self.stats.count("archive", "bytes", len(data))
        headers = {"ETag": f.etag, "Last-Modified": _http_date(f.published)}
        ctype = "application/octet-stream" if is_ck else "application/zip"
        return web.Response(body=data, content_type=ctype, headers=headers)

    async def _send_stream(self, request: web.Request, f: FileMeta) -> web.StreamResponse:
        """A monthly 1s zip, built as it is sent (chunked; Content-Length when the size is known)."""
        headers = {
            "ETag": f.etag,
            "Last-Modified": _http_date(f.published),
            "Content-Type": "application/zip",
        }
        known = self._streamed.get(f.cache_key)
        if request.method != "GET":  # HEAD: the size needs a pass when it is not known yet
            size = known[1] if known is not None else (await asyncio.to_thread(self.zip_digest, f))[1]
            self.stats.count("archive", "status_200")
            return web.Response(headers={**headers, "Content-Length": str(size)})
        self.faults.note_zip_download(f.key)
        corrupt = self.faults.is_corrupt(f.key)
        resp = web.StreamResponse(headers=headers)
        if known is not None:
            resp.content_length = known[1]
        await resp.prepare(request)
        chunks = self.zip_stream(f)
        at, sent = 0, 0
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            if corrupt and at < _CORRUPT_AT + 64 and at + len(chunk) > _CORRUPT_AT:
                i, j = max(_CORRUPT_AT - at, 0), min(_CORRUPT_AT + 64 - at, len(chunk))
                chunk = chunk[:i] + bytes(b ^ 0x5A for b in chunk[i:j]) + chunk[j:]
            at += len(chunk)
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()
        self.stats.count("archive", "status_200")
        self.stats.count("archive", "bytes", sent)
        return resp

    async def list_bucket(self, request: web.Request) -> web.Response:
        self.stats.count("archive", "listings")
        q = request.query
        if q.get("marker") and self.fail_list_pages > 0:
            self.fail_list_pages -= 1
            return web.Response(status=self.fail_list_status, text="listing unavailable")
        try:
            max_keys = min(int(q.get("max-keys", self.config.list_max_keys)), self.config.list_max_keys)
        except ValueError:
            max_keys = self.config.list_max_keys
        xml = list_xml(
            self, q.get("prefix", ""), q.get("delimiter") or None, q.get("marker", ""), max(max_keys, 1)
        )
        return web.Response(text=xml, content_type="application/xml")


class _Sink:
    """A write-only, unseekable file for ``zipfile``: collects what is written until ``take``."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, b: bytes, /) -> int:
        self._parts.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out
