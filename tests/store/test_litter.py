"""Temp files of killed writers: a real writer process killed mid-write, then ``sweep_temps`` and
``lake compact --sweep``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from lake.store import litter
from lake.store.fs import LakeFS
from lake.store.klines import read_partition, write_klines
from lake.store.litter import TEMP_RE, Sweep, sweep_temps
from lake.store.paths import PartitionKey
from tests.store.helpers import frame, t0_ms

# A writer that blocks where it would rename its temp file into place, so it can be killed there.
_WRITER = textwrap.dedent(
    """
    import sys, time
    import lake.store.fs as fs
    def stuck(*a, **k):
        print("staged", flush=True)
        time.sleep(600)
    fs.replace_parquet = stuck
    fs.LakeFS(sys.argv[1]).write_atomic(sys.argv[2], b"new bytes, never in place" * 1000)
    """
)


def _killed_writer(root: Path, rel: str) -> int:
    """Run a writer of ``rel`` and SIGKILL it after it staged its temp file; its pid."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), rel], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "staged"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return proc.pid


def _temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.is_file() and TEMP_RE.match(p.name))


def _stored(root: Path) -> tuple[str, pl.DataFrame]:
    df = frame([t0_ms() + i * 60_000 for i in range(30)])
    write_klines(root, "usdt_perp", "1m", "BTCUSDT", df)
    key = PartitionKey.for_candle("klines", "usdt_perp", "1m", "BTCUSDT", t0_ms())
    return key.path, df


def test_sweep_removes_a_killed_writers_temp_file_and_keeps_the_partition(tmp_path: Path) -> None:
    rel, df = _stored(tmp_path)
    lfs = LakeFS(str(tmp_path))
    before = (tmp_path / rel).read_bytes()
    pid = _killed_writer(tmp_path, rel)
    [left] = _temps(tmp_path)
    assert f".tmp-{pid}-" in left.name and left.stat().st_size == 25_000
    # a temp file of a running writer (this process), and another dead writer's
    mine = left.with_name(f".data.parquet.tmp-{os.getpid()}-0123abcd")
    mine.write_bytes(b"in progress")
    dead = left.with_name(".data.parquet.tmp-999999999-89abcdef-3")
    dead.write_bytes(b"x")
    # hidden files that are not temp files are never touched
    other = tmp_path / "_meta" / ".keep.tmp"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(b"not ours")
    now = time.time()

    got = sweep_temps(lfs, now=now + 300)  # their writers may have died a moment ago: too young
    assert (got.removed, got.kept) == (0, 3)
    got = sweep_temps(lfs, now=now + 3600)
    assert (got.removed, got.kept, got.bytes_freed) == (2, 1, 25_001)
    assert not left.exists() and not dead.exists() and mine.exists() and other.exists()
    assert (tmp_path / rel).read_bytes() == before
    stored = read_partition(lfs, PartitionKey.for_candle("klines", "usdt_perp", "1m", "BTCUSDT", t0_ms()))
    assert stored is not None and stored.height == df.height

    # a day later everything matching goes, whatever its process id (it may have been reused)
    got = sweep_temps(lfs, now=now + 86_400)
    assert (got.removed, got.kept) == (1, 0)
    assert _temps(tmp_path) == [] and other.exists()
    assert sweep_temps(lfs, now=now + 86_400).removed == 0  # idempotent


def test_a_running_swaps_link_to_an_old_partition_is_kept(tmp_path: Path) -> None:
    # lake.store.swap links the old target as .tmp-old- while it swaps: the link has the
    # partition's old mtime (two days here) but a fresh ctime, and its writer (this process) runs.
    # Removing it mid-swap would fail the write (review). A dead writer's link goes, freeing
    # nothing: the partition is the same file.
    rel, _ = _stored(tmp_path)
    target = tmp_path / rel
    two_days_ago = time.time() - 2 * 86_400
    os.utime(target, (two_days_ago, two_days_ago))
    mine = target.with_name(f".data.parquet.tmp-old-{os.getpid()}-0123abcd")
    os.link(target, mine)
    lfs = LakeFS(str(tmp_path))
    assert sweep_temps(lfs) == Sweep(0, 1, 0)
    assert mine.exists()
    os.unlink(mine)
    dead = target.with_name(".data.parquet.tmp-old-999999999-0123abcd")
    os.link(target, dead)
    assert sweep_temps(lfs, now=time.time() + 3600) == Sweep(1, 0, 0)
    assert (
        not dead.exists()
        and target.read_bytes()
        and read_partition(lfs, PartitionKey.for_candle("klines", "usdt_perp", "1m", "BTCUSDT", t0_ms()))
        is not None
    )


def test_a_temp_file_that_cannot_be_removed_is_kept_and_the_sweep_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (tests run as root, so another user's directory is simulated at the unlink)
    for sym in ("AAAUSDT", "BBBUSDT"):
        d = tmp_path / f"klines/trade_type=usdt_perp/interval=1m/symbol={sym}/date=2024-01-01"
        d.mkdir(parents=True)
        (d / ".data.parquet.tmp-999999999-0123abcd").write_bytes(b"xy")
    real = os.unlink

    def unlink(path: str, *a: object, **k: object) -> None:
        if "AAAUSDT" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(litter.os, "unlink", unlink)
    assert sweep_temps(LakeFS(str(tmp_path)), now=time.time() + 3600) == Sweep(1, 1, 2)


def test_compact_sweep_reports_only_with_the_flag(tmp_path: Path) -> None:
    rel, _ = _stored(tmp_path)
    _killed_writer(tmp_path, rel)
    [left] = _temps(tmp_path)

    def compact(*flags: str) -> dict[str, object]:
        res = subprocess.run(
            [sys.executable, "-m", "lake.cli", "compact", "--json", "--root", str(tmp_path), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        doc: dict[str, object] = json.loads(res.stdout)
        return doc

    assert "temp_files" not in compact() and left.exists()
    # its writer died a moment ago: kept for now (sweep_temps' own tests move the clock)
    assert compact("--sweep")["temp_files"] == {"removed": 0, "kept": 1, "bytes_freed": 0}
    assert left.exists()
