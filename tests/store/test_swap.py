"""Parquet files swapped under file leases (lake.store.swap) and the views' schema files
(lake.store.schema_files): a DuckDB query over files being rewritten never reads two versions of one
file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

import lake
from lake.store import swap
from lake.store.fs import LakeFS
from lake.store.klines import write_klines
from lake.store.schema_files import schema_file, table_of
from tests.transform.helpers import random_candles


def _leases_work() -> bool:
    """Whether this machine's temp file system grants write leases (not on NFS, say)."""
    import fcntl
    import tempfile

    if not sys.platform.startswith("linux"):
        return False
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe")
        with open(path, "wb"):
            pass
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        except OSError:
            return False
        finally:
            os.close(fd)
    return True


pytestmark = pytest.mark.skipif(not _leases_work(), reason="no file leases here (Linux, local disk)")

_HOLDER = """
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)          # a reader's first open (the footer)
print("open", flush=True)
time.sleep(float(sys.argv[2]))
fd2 = os.open(path, os.O_RDONLY)         # its second open (the pages), much later
print(os.fstat(fd).st_ino == os.fstat(fd2).st_ino, flush=True)
"""


def _held(tmp_path: Path, seconds: str) -> tuple[Path, Path, subprocess.Popen[str]]:
    """``data.parquet`` ("old") held open by a reader process for ``seconds`` before its second
    open, and its replacement ("new") in a temp file."""
    target = tmp_path / "data.parquet"
    target.write_bytes(b"old")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target), seconds], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
    tmp = tmp_path / ".data.parquet.tmp-1"
    tmp.write_bytes(b"new")
    return target, tmp, holder


def test_a_file_held_open_is_not_replaced_until_its_reader_is_done(tmp_path) -> None:
    """A reader between its two opens holds the first: the swap waits, so both opens see one file."""
    target, tmp, holder = _held(tmp_path, "0.4")
    busy = swap.STATS["busy"]
    t0 = time.monotonic()
    swap.replace_parquet(str(tmp), str(target))
    waited = time.monotonic() - t0
    out, _ = holder.communicate(timeout=10)
    assert out.strip() == "True"  # the reader's two opens found the same file
    assert target.read_bytes() == b"new" and not tmp.exists()
    assert swap.STATS["busy"] > busy and waited > 0.2
    assert [p.name for p in tmp_path.iterdir()] == ["data.parquet"]  # no kept old inode left over


def test_a_reader_holding_a_file_past_the_wait_does_not_stop_the_writer(tmp_path) -> None:
    target, tmp, holder = _held(tmp_path, "3")
    forced = swap.STATS["forced"]
    swap.replace_parquet(str(tmp), str(target), wait_s=0.3)
    assert target.read_bytes() == b"new" and swap.STATS["forced"] == forced + 1
    holder.kill()
    holder.communicate()


def test_a_new_file_and_a_file_nobody_reads_are_swapped_at_once(tmp_path) -> None:
    for content in (b"one", b"two"):
        tmp = tmp_path / ".x.parquet.tmp"
        tmp.write_bytes(content)
        swap.replace_parquet(str(tmp), str(tmp_path / "x.parquet"))
        assert (tmp_path / "x.parquet").read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_without_leases_files_are_replaced_plainly(tmp_path) -> None:
    code = (
        "import sys; from lake.store import swap; open(sys.argv[1] + '/a.parquet', 'wb').write(b'old');"
        "open(sys.argv[1] + '/t', 'wb').write(b'new');"
        "swap.replace_parquet(sys.argv[1] + '/t', sys.argv[1] + '/a.parquet');"
        "print(open(sys.argv[1] + '/a.parquet', 'rb').read().decode(), swap.STATS['plain'])"
    )
    env = {**os.environ, "LAKE_NO_LEASES": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["new", "1"], out.stderr


def test_schema_files_hold_no_rows_and_the_tables_schema(tmp_path) -> None:
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, 300_000, 3 * 288, hole_rate=0.0))
    marker = tmp_path / schema_file("klines")
    part = next((tmp_path / "klines").rglob("data.parquet"))
    assert pq.read_metadata(marker).num_rows == 0
    assert pq.read_schema(marker).equals(pq.read_schema(part), check_metadata=False)
    assert table_of("klines/trade_type=spot/interval=1m/symbol=A/date=2024-01-01/data.parquet") == "klines"
    assert table_of(schema_file("klines")) is None and table_of("klines/x.parquet") is None
    # a lake written before schema files existed gets one when it is opened
    marker.unlink()
    from lake.store import fs as fs_module

    fs_module._SCHEMAS_MADE.clear()
    con = lake.connect(tmp_path)
    assert marker.exists()
    assert con.execute("SELECT count(*) FROM klines").fetchall() == [(3 * 288,)]
    # a schema file of other columns (made before the table changed) is passed over, not fatal
    pq.write_table(pq.read_schema(part).remove(0).empty_table(), marker)
    con = lake.connect(tmp_path)
    assert con.execute("SELECT count(*), count(source) FROM klines").fetchall() == [(3 * 288, 3 * 288)]


def _rewrite_forever(root: str, stop_after: float) -> str:
    """A writer process appending a candle to every series again and again (each append rewrites
    the series' partition, the first of the glob included)."""
    return f"""
import time, polars as pl
from lake.store.klines import write_klines
from lake.store import swap
from tests.transform.helpers import random_candles
rows = {{s: random_candles(i, 300_000, 6000, hole_rate=0.0) for i, s in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT"])}}
n, end = 3000, time.monotonic() + {stop_after}
while time.monotonic() < end:
    for s, df in rows.items():
        write_klines({root!r}, "usdt_perp", "5m", s, df.head(n))
    n += 1
print(n, swap.STATS, flush=True)
"""


def test_duckdb_queries_over_partitions_being_rewritten_never_fail(tmp_path) -> None:
    """The first partition of the glob and every other one rewritten continuously while DuckDB
    queries the klines view: every query succeeds and sees whole partitions."""
    root = str(tmp_path)
    for i, s in enumerate(["AAAUSDT", "BBBUSDT", "CCCUSDT"]):
        write_klines(root, "usdt_perp", "5m", s, random_candles(i, 300_000, 6000, hole_rate=0.0).head(3000))
    writer = subprocess.Popen(
        [sys.executable, "-c", _rewrite_forever(root, 6.0)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    con = lake.connect(root)
    errors: list[str] = []
    counts: list[int] = []
    while writer.poll() is None:
        try:
            row = con.sql(
                "SELECT count(*), count(DISTINCT (symbol, candle_begin_time)) FROM klines"
            ).fetchall()[0]
        except duckdb.Error as exc:
            errors.append(str(exc)[:200])
            continue
        assert row is not None and row[0] == row[1]
        counts.append(row[0])
    out = writer.communicate()[0]
    assert writer.returncode == 0, out
    final = int(out.split()[0])
    assert errors == [] and len(counts) > 20
    assert counts == sorted(counts) and counts[-1] <= 3 * final  # whole versions, never going back
    got = pl.read_parquet(next((tmp_path / "klines").rglob("symbol=AAAUSDT/*/data.parquet")))
    assert got.height > 288  # the writer did rewrite the partitions
    assert "'guarded'" in out


def test_without_relocation_lake_writes_swap_parquet_files_under_leases(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAKE_NO_RELOCATE", "1")  # relocated files need no lease (lake.store.relocate)
    lfs = LakeFS(tmp_path)
    before = swap.STATS["guarded"]
    rel = "klines/trade_type=spot/interval=1m/symbol=AUSDT/date=2024-01-01/data.parquet"
    df = random_candles(0, 60_000, 1440, hole_rate=0.0)
    from lake.store.klines import encode_parquet

    lfs.write_atomic(rel, encode_parquet(df))
    lfs.write_atomic(rel, encode_parquet(df.head(10)))
    lfs.write_atomic_many(
        [(rel, encode_parquet(df.head(20))), (rel.replace("AUSDT", "BUSDT"), encode_parquet(df))]
    )
    assert swap.STATS["guarded"] >= before + 2
    assert pl.read_parquet(tmp_path / rel).height == 20


def test_a_lock_free_reader_thread_sees_old_or_new(tmp_path) -> None:
    """A reader thread in the writer's own process: a lease is per open file, so it is guarded too,
    and the writer never waits on itself."""
    root = str(tmp_path)
    df = random_candles(3, 300_000, 2000, hole_rate=0.0)
    write_klines(root, "usdt_perp", "5m", "AAAUSDT", df.head(500))
    con = lake.connect(root)
    errors: list[str] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                con.execute("SELECT sum(volume) FROM klines_partitions").fetchall()
            except duckdb.Error as exc:
                errors.append(str(exc)[:200])

    t = threading.Thread(target=read)
    t.start()
    for n in range(501, 900):
        write_klines(root, "usdt_perp", "5m", "AAAUSDT", df.head(n))
    done.set()
    t.join()
    assert errors == []


def test_a_file_system_without_hard_links_still_takes_writes(tmp_path, monkeypatch) -> None:
    """FAT and some FUSE mounts grant leases but no hard links: writes fall back to renames."""

    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    import lake.store.fs as fs_module

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(swap, "_supported", swap._supported)  # restored after the test
    fs_module._SCHEMAS_MADE.clear()
    df = random_candles(5, 300_000, 600, hole_rate=0.0)
    write_klines(tmp_path, "usdt_perp", "5m", "AAAUSDT", df.head(300))
    write_klines(tmp_path, "usdt_perp", "5m", "AAAUSDT", df)  # a rewrite of the existing partition
    assert (tmp_path / schema_file("klines")).exists()
    assert lake.scan_klines(str(tmp_path), "usdt_perp", "5m").collect().height == 600
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp file left behind
