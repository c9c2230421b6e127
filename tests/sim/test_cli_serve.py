"""`lake sim` as a user starts it: a real process, its URLs, and the Quantclass-compatible API mounted."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request


def test_standalone_sim_serves_rest_and_quantclass() -> None:
    cmd = [sys.executable, "-m", "lake.cli", "sim", "--port", "0", "--json", "--symbols", "8", "--speed", "0",
           "--start", "2025-03-15T12:00"]  # fmt: skip
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        _check(proc)


def _check(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        with urllib.request.urlopen(f"{urls['rest']}/fapi/v1/time", timeout=10) as r:
            assert json.load(r)["serverTime"] == 1742040000000
        req = urllib.request.Request(
            f"{urls['quantclass']}/api/data/realtime/coin/binance-1h?offset=15m&uuid=u",
            headers={"api-key": "k"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)["data"]
        # 12:00 UTC with the clock frozen: the newest complete 15m-offset hour ended at 11:15 UTC,
        # 19:15 in Shanghai
        assert data["ts"] == "202503151915"
        with urllib.request.urlopen(data["swap"], timeout=30) as r:
            assert r.read(6) == b"7z\xbc\xaf\x27\x1c"  # a 7z archive
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_options_before_a_sub_command_are_refused_not_ignored() -> None:
    """`lake sim --port 1 serve` would serve on the default port with the default clock."""
    res = subprocess.run(
        [sys.executable, "-m", "lake.cli", "sim", "--port", "1", "--speed", "0", "serve"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "lake: error: --port, --speed given before the sub-command 'serve', which would ignore them: "
        "put a sub-command's options after it (lake sim serve --help)"
    ]
