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

from lake.store.fs import LakeFS
from lake.store.klines import read_partition, write_klines
from lake.store.litter import TEMP_RE, sweep_temps
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
    # a temp file of a running writer (this process), and one of a dead writer that is too young
    mine = left.with_name(f".data.parquet.tmp-{os.getpid()}-0123abcd")
    mine.write_bytes(b"in progress")
    young = left.with_name(".data.parquet.tmp-999999999-89abcdef-3")
    young.write_bytes(b"x")
    # hidden files that are not temp files are never touched
    other = tmp_path / "_meta" / ".keep.tmp"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(b"not ours")
    now = time.time()
    os.utime(left, (now - 3600, now - 3600))

    got = sweep_temps(lfs, now=now)
    assert (got.removed, got.kept, got.bytes_freed) == (1, 2, 25_000)
    assert not left.exists() and mine.exists() and young.exists() and other.exists()
    assert (tmp_path / rel).read_bytes() == before
    stored = read_partition(lfs, PartitionKey.for_candle("klines", "usdt_perp", "1m", "BTCUSDT", t0_ms()))
    assert stored is not None and stored.height == df.height

    # a day later everything matching goes, whatever its process id (it may have been reused)
    got = sweep_temps(lfs, now=now + 86_400)
    assert (got.removed, got.kept) == (2, 0)
    assert _temps(tmp_path) == [] and other.exists()
    assert sweep_temps(lfs, now=now + 86_400).removed == 0  # idempotent


def test_compact_sweep_reports_and_removes_only_with_the_flag(tmp_path: Path) -> None:
    rel, _ = _stored(tmp_path)
    _killed_writer(tmp_path, rel)
    [left] = _temps(tmp_path)
    old = time.time() - 3600
    os.utime(left, (old, old))

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
    assert compact("--sweep")["temp_files"] == {"removed": 1, "kept": 0, "bytes_freed": 25_000}
    assert _temps(tmp_path) == []
