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


class FakeArchive:
    """A tiny archive server (files + S3 listing) for runner tests that need exact control over bytes.

    ``files`` maps archive keys to zip bytes; checksums are derived unless ``bad_checksum`` names the
    key (with the number of zip GETs after which it heals, or None for never).
    """

    def __init__(self, max_keys: int = 1000) -> None:
        from aiohttp import web

        self.files: dict[str, bytes] = {}
        self.modified: dict[str, str] = {}
        self.bad_checksum: dict[str, int | None] = {}
        self.gets: dict[str, int] = {}
        self.max_keys = max_keys
        self.app = web.Application()
        self.app.router.add_get("/archive-bucket", self._list)
        self.app.router.add_get("/archive/{key:.*}", self._file)
        self.runner: web.AppRunner | None = None
        self.base = ""

    def put(self, key: str, data: bytes, modified: str = "2024-06-01T00:00:00.000Z") -> None:
        self.files[key] = data
        self.modified[key] = modified

    def _objects(self) -> dict[str, tuple[bytes, str]]:
        out: dict[str, tuple[bytes, str]] = {}
        for key, data in self.files.items():
            out[key] = (data, self.modified[key])
            out[key + ".CHECKSUM"] = (self._checksum(key), self.modified[key])
        return out

    def _checksum(self, key: str) -> bytes:
        name = key.rsplit("/", 1)[-1]
        if key in self.bad_checksum:
            heal = self.bad_checksum[key]
            if heal is None or self.gets.get(key, 0) < heal:
                return checksum(b"something else", name)
        return checksum(self.files[key], name)

    async def _list(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        prefix = request.query.get("prefix", "")
        marker = request.query.get("marker", "")
        entries: list[str] = []
        for key in sorted(self._objects()):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix) :]
            entries.append(prefix + rest.split("/", 1)[0] + "/" if "/" in rest else key)
        entries = sorted({e for e in entries if e > marker})
        page, more = entries[: self.max_keys], len(entries) > self.max_keys
        objs = self._objects()
        keys = [
            (e, objs[e][1], hashlib.md5(objs[e][0]).hexdigest(), len(objs[e][0]))
            for e in page
            if not e.endswith("/")
        ]
        prefixes = [e for e in page if e.endswith("/")]
        return web.Response(body=listing_xml(keys, prefixes, truncated=more), content_type="application/xml")

    async def _file(self, request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        key = request.match_info["key"]
        if key.endswith(".CHECKSUM") and key.removesuffix(".CHECKSUM") in self.files:
            return web.Response(body=self._checksum(key.removesuffix(".CHECKSUM")))
        if key not in self.files:
            raise web.HTTPNotFound()
        self.gets[key] = self.gets.get(key, 0) + 1
        return web.Response(body=self.files[key], headers={"Last-Modified": self.modified[key]})

    async def __aenter__(self) -> FakeArchive:
        from aiohttp import web

        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
