"""Alerts are POSTed to a real local webhook server; DingTalk signing; secrets never logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from lake.live.alerts import Alerter, dingtalk_sign, redact_url

from .helpers import post_server


class Hook:
    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], Any]] = []
        self.status = 200
        self.answer: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.query), await request.json()))
        return web.json_response(self.answer, status=self.status)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    async with post_server("/hook", h.handle) as url:
        yield h, url


async def test_generic_json_post(hook: tuple[Hook, str]) -> None:
    h, url = hook
    async with Alerter(url, "json") as alerter:
        assert await alerter.send("period incomplete", "2 symbols missing", key="k")
    ((query, body),) = h.posts
    assert query == {}
    assert body["title"] == "period incomplete" and body["text"] == "2 symbols missing"
    assert body["level"] == "error" and body["source"] == "lake live" and body["suppressed"] == 0


async def test_same_key_is_rate_limited_and_counted(hook: tuple[Hook, str]) -> None:
    h, url = hook
    async with Alerter(url, "json", min_interval_s=0.2) as alerter:
        assert await alerter.send("ws down", key="ws")
        assert not await alerter.send("ws down", key="ws")
        assert not await alerter.send("ws down", key="ws")
        assert await alerter.send("other", key="other")
        import asyncio

        await asyncio.sleep(0.25)
        assert await alerter.send("ws down", key="ws")
    assert [b["title"] for _, b in h.posts] == ["ws down", "other", "ws down"]
    assert h.posts[-1][1]["suppressed"] == 2
    assert alerter.stats.suppressed == 2


async def test_dingtalk_signed(hook: tuple[Hook, str], caplog: pytest.LogCaptureFixture) -> None:
    h, url = hook
    secret = "SECabc123-very-secret"
    caplog.set_level(logging.DEBUG)
    async with Alerter(url + "?access_token=TOKEN42", "dingtalk", secret) as alerter:
        assert await alerter.send("catch-up incomplete", "BTCUSDT: HTTP 503")
    ((query, body),) = h.posts
    assert query["access_token"] == "TOKEN42"
    ts = query["timestamp"]
    expect = base64.b64encode(
        hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    ).decode()
    assert query["sign"] == expect  # aiohttp already url-decoded it
    assert body["msgtype"] == "text" and "catch-up incomplete" in body["text"]["content"]
    assert secret not in caplog.text and secret not in repr(alerter)


def test_dingtalk_sign_is_url_encoded() -> None:
    s = dingtalk_sign("SEC000", 1_700_000_000_000)
    assert urllib.parse.unquote_plus(s) != s or "%" not in s
    raw = base64.b64decode(urllib.parse.unquote_plus(s))
    assert raw == hmac.new(b"SEC000", b"1700000000000\nSEC000", hashlib.sha256).digest()


async def test_failures_are_logged_without_token(
    hook: tuple[Hook, str], caplog: pytest.LogCaptureFixture
) -> None:
    h, url = hook
    h.status = 500
    async with Alerter(url + "?access_token=TOKEN42", "json") as alerter:
        assert not await alerter.send("x")
    assert alerter.stats.failed == 1
    assert "TOKEN42" not in caplog.text
    h.status, h.answer = 200, {"errcode": 310000, "errmsg": "sign not match"}
    async with Alerter(url, "dingtalk", "s") as ding:
        assert not await ding.send("y")
    assert "sign not match" in ding.stats.last_error


async def test_unreachable_webhook_never_raises() -> None:
    async with Alerter("http://127.0.0.1:9/hook", "json", timeout=2) as alerter:
        assert not await alerter.send("x")
    assert alerter.stats.failed == 1


async def test_log_only_without_url() -> None:
    async with Alerter("") as alerter:
        assert not await alerter.send("x")
    assert alerter.stats.logged_only == 1


def test_redact_url() -> None:
    assert (
        redact_url("https://u:p@oapi.dingtalk.com/robot/send?access_token=abc#f")
        == "https://oapi.dingtalk.com/robot/send"
    )
