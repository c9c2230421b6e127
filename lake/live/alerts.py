"""Alerts: POST a short message to a webhook when the live appender hits an error or a hole.

Two payload kinds (``Settings.webhook_kind``):

* ``json`` (generic)::

      {"source": "lake live", "level": "error", "title": "...", "text": "...",
       "time": "2024-07-23T06:45:05+00:00", "host": "...", "suppressed": 0}

* ``dingtalk``: a DingTalk custom robot text message ``{"msgtype": "text", "text": {"content": …}}``;
  with a secret, the URL gets ``timestamp`` (ms) and ``sign`` = url-encoded base64 of
  HMAC-SHA256(key=secret, msg="<timestamp>\\n<secret>").

The same alert key is sent at most once per ``min_interval_s`` (later ones are counted and reported
with the next one that goes out), so a flapping connection cannot flood the channel. Sending never
raises: a webhook failure is logged (without the URL's query string, which may hold a token, and
never with the secret).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lake.net import proxy_from_env

__all__ = ["AlertStats", "Alerter", "dingtalk_sign", "redact_url"]

log = logging.getLogger("lake.live.alerts")


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk robot signature: url-encoded base64 HMAC-SHA256 of ``"<timestamp>\\n<secret>"``."""
    msg = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode())


def redact_url(url: str) -> str:
    """``scheme://host/path`` without query, fragment or credentials (safe to log)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass
class AlertStats:
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    logged_only: int = 0
    last_error: str = ""
    by_key: dict[str, int] = field(default_factory=dict)


class Alerter:
    """Sends alerts to one webhook (or only logs them when ``url`` is empty)."""

    def __init__(
        self,
        url: str = "",
        kind: str = "json",
        secret: str = "",
        *,
        min_interval_s: float = 60.0,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        source: str = "lake live",
    ) -> None:
        if kind not in ("json", "dingtalk"):
            raise ValueError(f"webhook kind must be 'json' or 'dingtalk', got {kind!r}")
        self.url = url
        self.kind = kind
        self._secret = secret
        self.min_interval_s = min_interval_s
        self.timeout = timeout
        self.source = source
        self._session = session
        self._own_session = session is None
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self.stats = AlertStats()

    def __repr__(self) -> str:  # never show the secret or the URL's token
        return f"Alerter({self.kind}, {redact_url(self.url) if self.url else 'log only'})"

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Alerter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def payload(self, title: str, text: str, level: str, suppressed: int = 0) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        if self.kind == "dingtalk":
            more = f"\n({suppressed} similar alerts suppressed)" if suppressed else ""
            content = f"[{self.source}] {level.upper()}: {title}\n{text}{more}\n{now} {socket.gethostname()}"
            return {"msgtype": "text", "text": {"content": content}}
        return {
            "source": self.source,
            "level": level,
            "title": title,
            "text": text,
            "time": now,
            "host": socket.gethostname(),
            "suppressed": suppressed,
        }

    def signed_url(self, timestamp_ms: int | None = None) -> str:
        """The URL to POST to (DingTalk with a secret: plus ``timestamp`` and ``sign``)."""
        if self.kind != "dingtalk" or not self._secret:
            return self.url
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        return f"{self.url}{sep}timestamp={ts}&sign={dingtalk_sign(self._secret, ts)}"

    async def send(self, title: str, text: str = "", *, level: str = "error", key: str | None = None) -> bool:
        """Send one alert; returns whether it was delivered (False when suppressed, failed or log-only)."""
        key = key or title
        self.stats.by_key[key] = self.stats.by_key.get(key, 0) + 1
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            self.stats.suppressed += 1
            log.debug("alert %s suppressed (%d since the last one sent)", title, self._held[key])
            return False
        log.log(logging.ERROR if level == "error" else logging.WARNING, "ALERT %s: %s", title, text)
        self._last[key] = now
        suppressed = self._held.pop(key, 0)
        if not self.url:
            self.stats.logged_only += 1
            return False
        body = self.payload(title, text, level, suppressed)
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                    trust_env=proxy_from_env(self.url),  # HTTP(S)_PROXY (lake.net)
                )
            async with self._session.post(self.signed_url(), json=body) as resp:
                answer = await resp.text()
                if resp.status >= 300:
                    raise ValueError(f"HTTP {resp.status}: {answer[:200]}")
                if self.kind == "dingtalk" and '"errcode":0' not in answer.replace(" ", ""):
                    raise ValueError(f"DingTalk refused the message: {answer[:200]}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.stats.failed += 1
            # aiohttp's messages may quote the URL (and a token in its query): name the type only
            detail = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
            self.stats.last_error = detail[:300]
            log.warning("alert webhook %s failed: %s", redact_url(self.url), self.stats.last_error)
            return False
        self.stats.sent += 1
        return True
