"""Async client of the Quantclass data API (the latest 1h candles of each offset).

    async with QuantclassClient.from_settings(settings) as qc:
        latest = await qc.latest("15m")          # LatestFiles(spot=url, swap=url, ts=aware datetime)
        df = await qc.candles(latest.swap)         # the 7z's CSV as a Polars frame

``GET {base}/api/data/realtime/coin/binance-1h?offset=<offset>&uuid=<uuid>`` with header
``api-key: <key>`` answers ``{"data": {"spot": url, "swap": url, "ts": "YYYYmmddHHMM"}}`` (``ts`` in
Asia/Shanghai). The key and the UUID are secrets: they are never logged and never appear in an
error message (URLs are reported without their query string).

Errors: 401/403 → ``ConfigError`` (bad key or UUID), 404 → ``NotFoundError``; 429 (after its
Retry-After, at most 60 s), 5xx, timeouts and dropped connections are retried with capped jittered
backoff, then raised (``RateLimitedError``, ``UpstreamError``); an unexpected body → ``DataError``
(an error the API answers with HTTP 200, ``{"code", "msg"}``, with its message, secrets masked). A
redirect of the API is a ``DataError`` too: following it would send the key to wherever it points.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import polars as pl
from yarl import URL

from lake.errors import ConfigError, DataError, NotFoundError, RateLimitedError, UpstreamError
from lake.net import proxy_from_env
from lake.quantclass.files import SHANGHAI, decode_archive
from lake.settings import Settings

__all__ = ["API_PATH", "LatestFiles", "QuantclassClient"]

log = logging.getLogger("lake.quantclass")

API_PATH = "/api/data/realtime/coin/binance-1h"
_DEFAULT_BASE = "https://api.quantclass.cn"


@dataclass(frozen=True, slots=True)
class LatestFiles:
    """Where the latest files of one offset are, and the hour (Asia/Shanghai) they are current to."""

    offset: str
    spot: str
    swap: str
    ts: dt.datetime

    def url(self, kind: str) -> str:
        return self.spot if kind == "spot" else self.swap


class QuantclassClient:
    """One aiohttp session against one Quantclass API base URL."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        uuid: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        session: aiohttp.ClientSession | None = None,
        files_url: str = "",
    ) -> None:
        if (not api_key or not uuid) and base_url.rstrip("/") == _DEFAULT_BASE:
            raise ConfigError(
                "the Quantclass API needs an API key and a UUID: set quantclass_api_key and "
                "quantclass_uuid in lake.toml or LAKE_QUANTCLASS_API_KEY / LAKE_QUANTCLASS_UUID"
            )
        self.base_url = base_url.rstrip("/")
        self.files_url = files_url.rstrip("/")
        self._key = api_key
        self._uuid = uuid
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._session = session
        self._own_session = session is None

    def __repr__(self) -> str:  # never shows the secrets
        return f"QuantclassClient({self.base_url!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> QuantclassClient:
        return cls(
            settings.endpoints.quantclass,
            settings.quantclass_api_key,
            settings.quantclass_uuid,
            timeout=max(settings.http_timeout, 30.0),
            files_url=settings.quantclass_files_url,
        )

    async def __aenter__(self) -> QuantclassClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, trust_env=proxy_from_env(self.base_url, self.files_url)
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def latest(self, offset: str) -> LatestFiles:
        """URLs of the latest spot and swap files of ``offset`` (``0m`` … ``55m``)."""
        body = await self._get(
            f"{self.base_url}{API_PATH}", params={"offset": offset, "uuid": self._uuid}, api=True
        )
        doc = _json(body)
        if isinstance(doc, dict) and not isinstance(doc.get("data"), dict):
            # an error answered with HTTP 200 ({"code": …, "msg": …}): say what the server said
            said = doc.get("msg") or doc.get("message") or doc.get("code")
            if said is not None:
                raise DataError(
                    f"the Quantclass API refused offset {offset}: {self._redact(str(said))[:200]}"
                )
        try:
            data = doc["data"]
            ts = dt.datetime.strptime(str(data["ts"]), "%Y%m%d%H%M").replace(tzinfo=SHANGHAI)
            return LatestFiles(offset, str(data["spot"]), str(data["swap"]), ts)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"unexpected Quantclass API answer for offset {offset}: {self._redact(repr(exc))[:200]}"
            ) from exc

    def _redact(self, text: str) -> str:
        """``text`` with the key and UUID masked (a server or proxy may echo them back, also as
        they appear in a query string)."""
        for secret in (self._key, self._uuid):
            if secret:
                sent = URL("http://x").with_query({"v": secret})  # as the request carried it
                forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}
                forms |= {sent.raw_query_string[2:], sent.query_string[2:]}
                for form in sorted(forms, key=len, reverse=True):
                    text = text.replace(form, "***")
        return text

    async def download(self, url: str) -> bytes:
        """The bytes of one file (a signed URL from ``latest``; from ``files_url`` instead of the host
        it names when that is set, with the same path and signature)."""
        if self.files_url:
            url = self.files_url + URL(url).raw_path_qs
        return await self._get(url, params=None, api=False)

    async def candles(self, url: str) -> pl.DataFrame:
        """Download one 7z file and parse its CSV (see ``lake.quantclass.files``)."""
        data = await self.download(url)
        return await asyncio.to_thread(decode_archive, data)

    async def _get(self, url: str, *, params: dict[str, str] | None, api: bool) -> bytes:
        if self._session is None:
            raise RuntimeError("use QuantclassClient inside 'async with'")
        shown = str(URL(url).with_query(None))  # never the uuid or a signature
        headers = {"api-key": self._key} if api else {}
        delay = _FIRST_RETRY_S
        for attempt in range(self._retries + 1):
            try:
                # The API's requests carry the key in a header, which aiohttp would send on to any
                # host a redirect names (or over plain http): they are not followed.
                async with self._session.get(
                    url, params=params, headers=headers, allow_redirects=not api
                ) as resp:
                    if resp.status == 200:
                        return await resp.read()
                    error = _http_error(resp.status, shown, resp.headers.get("Retry-After"))
                    if api and 300 <= resp.status < 400:
                        error = _redirect_error(resp.status, shown, resp.headers.get("Location"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = UpstreamError(f"GET {shown} failed: {type(exc).__name__}")
            if not isinstance(error, (UpstreamError, RateLimitedError)) or attempt == self._retries:
                raise error
            wait = delay * (0.5 + random.random())
            if isinstance(error, RateLimitedError) and error.retry_after is not None:
                wait = min(max(wait, error.retry_after), 60.0)
            log.warning("GET %s: %s; retrying in %.1fs", shown, error, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")


_FIRST_RETRY_S = 0.5  # then doubling, up to 8 s, with jitter


def _http_error(status: int, shown: str, retry_after: str | None) -> Exception:
    if status in (401, 403):
        return ConfigError(f"Quantclass refused the API key or UUID (HTTP {status} from {shown})")
    if status == 404:
        return NotFoundError(f"HTTP 404 from {shown}")
    if status == 429:
        wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
        return RateLimitedError(f"HTTP 429 from {shown}", retry_after=wait)
    if status >= 500:
        return UpstreamError(f"HTTP {status} from {shown}")
    return DataError(f"HTTP {status} from {shown}")


def _redirect_error(status: int, shown: str, location: str | None) -> DataError:
    """A redirect of the API, not followed: its target's origin only (its query may echo the UUID)."""
    try:
        to = URL(location or "")
        where = f" to {to.origin()}" if to.is_absolute() else ""
    except ValueError:
        where = ""
    return DataError(
        f"HTTP {status} from {shown}: the Quantclass API redirects{where}; not followed with the "
        "API key (set quantclass_url to where it points)"
    )


def _json(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except ValueError as exc:
        # not the body itself: an error page may echo the request, key and UUID included
        raise DataError(f"the Quantclass API answered no JSON ({len(body)} bytes)") from exc
