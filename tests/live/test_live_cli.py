"""`lake live` flag errors are one line; `lake status` shows live watermarks (text and JSON)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lake.errors import LakeError
from lake.live.runner import LiveConfig
from lake.live.watermark import write_watermark

T = 1_741_000_000_000 - 1_741_000_000_000 % 300_000


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trade_types": ("usdt_future",)}, "unknown trade type 'usdt_future'"),
        ({"trade_types": ()}, "at least one --type"),
        ({"intervals": ("1M",)}, "fixed-length interval"),
        ({"intervals": ("1s",)}, "only served by spot"),
        ({"intervals": ("5m",), "offsets": ("3m",)}, "whole multiple"),
        ({"grace_s": -1.0}, "--grace must be >= 0"),
        ({"periods": 0}, "--periods must be >= 1"),
        ({"duration_s": 0.0}, "--duration must be > 0"),
        ({"history": -1}, "--history must be >= 0"),
    ],
)
def test_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LakeError, match=re.escape(message)):
        LiveConfig(**{"trade_types": ("usdt_perp",), **kwargs})  # type: ignore[arg-type]


def test_flag_errors_are_one_line(tmp_path: Path) -> None:
    for args, message in (
        (["--type", "usdt_perp", "--interval", "5m", "--offsets", "3m"], "whole multiple"),
        (["--type", "usdt_perp", "--symbols", " , "], "--symbols is empty"),
    ):
        res = run("live", *args, "--root", str(tmp_path), "--rest-url", "http://127.0.0.1:9")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lake: error: ") and message in lines[0], res.stderr


def test_unreachable_exchange_fails_fast(tmp_path: Path) -> None:
    res = run("live", "--type", "usdt_perp", "--root", str(tmp_path), "--rest-url", "http://127.0.0.1:9")
    assert res.returncode == 3, res.stderr
    assert "cannot reach" in res.stderr and "Traceback" not in res.stderr


def test_status_shows_watermarks(tmp_path: Path) -> None:
    write_watermark(tmp_path, "usdt_perp", "5m", T, symbols=3, updated_at_ms=T + 310_000)
    res = run("status", "--root", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    (wm,) = json.loads(res.stdout)["watermarks"]
    assert (wm["trade_type"], wm["interval"], wm["watermark_ms"]) == ("usdt_perp", "5m", T)
    text = run("status", "--root", str(tmp_path))
    assert "live watermark usdt_perp 5m: 20" in text.stdout
