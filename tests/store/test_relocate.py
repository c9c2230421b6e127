"""Parquet files rewritten so that a reader holding the old footer still reads the old version
(lake.store.relocate): the new file reads as itself, the old footer over the new file reads as the
old version, sizes stay bounded, dead pages are punched out later."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.store import relocate
from lake.store.fs import LakeFS
from lake.store.klines import encode_parquet, write_klines
from lake.store.thrift_bytes import varint
from tests.transform.helpers import random_candles

REL = "klines/trade_type=spot/interval=5m/symbol=AUSDT/date=2024-01-01/data.parquet"
CANDLES = random_candles(0, 300_000, 8000, hole_rate=0.0)


def _old_footer_over(new_bytes: bytes, old_bytes: bytes) -> pa.Table:
    """What a reader that read the old file's footer and then opened the new file reads."""
    old_meta = pq.ParquetFile(io.BytesIO(old_bytes)).metadata
    return pq.ParquetFile(io.BytesIO(new_bytes), metadata=old_meta).read()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(1, 8000), min_size=2, max_size=12))
def test_every_rewrite_reads_as_itself_and_the_old_footer_reads_the_old_version(
    tmp_path_factory, sizes
) -> None:
    root = tmp_path_factory.mktemp("lake")
    lfs = LakeFS(root)
    path = root / REL
    prev: bytes | None = None
    prev_rows: pa.Table | None = None
    largest = 0
    for n in sizes:
        payload = encode_parquet(CANDLES.head(n))
        want = pq.read_table(io.BytesIO(payload))
        largest = max(largest, len(payload))
        lfs.write_atomic(REL, payload)
        data = path.read_bytes()
        assert pq.read_table(path).equals(want)
        assert pl.read_parquet(path).equals(pl.from_arrow(want))  # type: ignore[arg-type]
        con = duckdb.connect()
        assert con.execute("SELECT count(*), sum(volume) FROM read_parquet(?)", [str(path)]).fetchall() == [
            (n, pytest.approx(float(CANDLES.head(n)["volume"].sum())))
        ]
        if prev is not None:
            assert prev_rows is not None
            assert _old_footer_over(data, prev).equals(prev_rows)  # the torn read that cannot happen
            if len(data) != len(prev):  # a reader that listed the old size finds the old version there
                assert pq.read_table(io.BytesIO(data[: len(prev)])).equals(prev_rows)
        # bounded: a few versions of the largest file, never an ever-growing file
        assert len(data) <= 6 * largest + 16 * 1024
        prev, prev_rows = data, want


def _pyarrow_file(table: pa.Table, **kw: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _polars_file(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def _other_writers() -> list[tuple[str, bytes, pa.Table]]:
    frame = pl.DataFrame(
        {
            "k": list(range(3000)),
            "name": [f"n{i % 7}" if i % 11 else None for i in range(3000)],
            "x": [i * 0.5 for i in range(3000)],
            "flag": [i % 3 == 0 for i in range(3000)],
            "tags": [[i, i + 1] for i in range(3000)],
        }
    )
    table = frame.to_arrow()
    table = table.replace_schema_metadata({b"who": b"test"})
    files = [
        (
            "pyarrow, dictionary, row groups of 700",
            _pyarrow_file(table, row_group_size=700, compression="zstd"),
        ),
        ("pyarrow, plain, no statistics", _pyarrow_file(table, use_dictionary=False, write_statistics=False)),
        ("polars", _polars_file(frame)),
        ("pyarrow, zero rows", _pyarrow_file(table.slice(0, 0))),
    ]
    return [(name, data, pq.read_table(io.BytesIO(data))) for name, data in files]


@pytest.mark.parametrize("old", range(4))
@pytest.mark.parametrize("new", range(4))
def test_files_of_other_writers_are_relocated_too(tmp_path, old, new) -> None:
    writers = _other_writers()
    lfs = LakeFS(tmp_path)
    rel = "tables/t/data.parquet"
    old_name, old_bytes, old_table = writers[old]
    new_name, new_bytes, new_table = writers[new]
    lfs.write_atomic(rel, old_bytes)
    lfs.write_atomic(rel, new_bytes)
    data = (tmp_path / rel).read_bytes()
    if "polars" in new_name and data == new_bytes:
        # a page index: relocated only where its pages need not move; else written as it is
        assert old_table.num_rows or "zero rows" in old_name  # (a zero-row pyarrow file has pages)
        return
    if old_table.num_rows or new_table.num_rows:  # (two zero-row files can come out identical)
        assert data != new_bytes, "not relocated"
    assert pq.read_table(io.BytesIO(data)).equals(new_table), (old_name, new_name)
    assert pl.read_parquet(io.BytesIO(data)).equals(pl.from_arrow(new_table))  # type: ignore[arg-type]
    assert _old_footer_over(data, old_bytes).equals(old_table), (old_name, new_name)


def test_a_payload_with_a_page_index_is_written_as_it_is(tmp_path) -> None:
    """Its page locations are absolute offsets in the body: it cannot move, the lease swap takes it."""
    lfs = LakeFS(tmp_path)
    rel = "tables/t/data.parquet"
    table = pa.table({"k": list(range(5000))})
    lfs.write_atomic(rel, _pyarrow_file(table))
    indexed = _pyarrow_file(table.slice(0, 4000), write_page_index=True)
    lfs.write_atomic(rel, indexed)
    assert (tmp_path / rel).read_bytes() == indexed


def test_a_file_that_is_not_parquet_is_replaced_as_it_is(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    (tmp_path / "tables/t").mkdir(parents=True)
    (tmp_path / "tables/t/data.parquet").write_bytes(b"PAR1 not a parquet file at all PAR1")
    payload = encode_parquet(CANDLES.head(10))
    lfs.write_atomic("tables/t/data.parquet", payload)
    assert (tmp_path / "tables/t/data.parquet").read_bytes() == payload


def _written(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_old_pages_are_punched_out_and_the_file_still_reads(tmp_path) -> None:
    if relocate._FALLOCATE is None:
        pytest.skip("no fallocate here")
    lfs = LakeFS(tmp_path)
    path = tmp_path / REL
    lfs.write_atomic(REL, encode_parquet(CANDLES))
    payload = encode_parquet(CANDLES.head(7900))
    lfs.write_atomic(REL, payload)
    before = _written(path)
    token = lfs.mtime_key(REL)
    st_ = os.stat(path)
    old = pq.ParquetFile(io.BytesIO(encode_parquet(CANDLES))).metadata
    start = min(old.row_group(0).column(i).data_page_offset for i in range(old.num_columns))
    dead = (
        start,
        start + sum(old.row_group(0).column(i).total_compressed_size for i in range(old.num_columns)),
    )
    assert dead[1] - dead[0] > 200_000
    ident = (st_.st_ino, st_.st_mtime_ns, st_.st_size)
    # a file replaced since (another inode) is left alone
    assert relocate.punch_now(str(tmp_path), REL, ident[0] + 1, *ident[1:], (dead,)) == 0
    # so is a range the current footer needs, even when the stat matches (an inode reused
    # within one tick of a coarse clock could make a later version match)
    new = pq.ParquetFile(path).metadata.row_group(0).column(0)
    live = (new.data_page_offset, new.data_page_offset + 10)
    assert relocate.punch_now(str(tmp_path), REL, *ident, (live,)) == 0
    assert _written(path) == before
    assert relocate.punch_now(str(tmp_path), REL, *ident, (dead,)) == 1
    assert _written(path) <= before - (dead[1] - dead[0]) + 8192
    # the file grew: its queued job also holds the old footer, kept at the old end for listers,
    # and punches both ranges (the first punch does not make the second one's stat stale)
    (job,) = [e[2] for e in relocate._queue if e[2].rel == REL and e[2].root == lfs.root]
    assert len(job.ranges) == 2 and job.ranges[0] == dead
    assert relocate.punch_now(job.root, job.rel, job.ino, job.mtime_ns, job.size, job.ranges) == 2
    assert pq.read_table(path).equals(pq.read_table(io.BytesIO(payload)))
    assert lfs.mtime_key(REL) == token  # no change of content, no change of token


_EXIT_EARLY = """
import sys
from lake.store import relocate
from lake.store.klines import write_klines
from tests.transform.helpers import random_candles
relocate.PUNCH_DELAY_S = 1.0
df = random_candles(0, 300_000, 8000, hole_rate=0.0)
write_klines(sys.argv[1], "usdt_perp", "5m", "AUSDT", df.head(7000))
write_klines(sys.argv[1], "usdt_perp", "5m", "AUSDT", df)  # then exit at once
"""


def test_a_process_that_exits_before_punching_leaves_it_to_the_next_one(tmp_path) -> None:
    if relocate._FALLOCATE is None:
        pytest.skip("no fallocate here")
    run = subprocess.run(
        [sys.executable, "-c", _EXIT_EARLY, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    records = list((tmp_path / relocate.PENDING_DIR).glob("*.json"))
    assert len(records) == 1
    rows = json.loads(records[0].read_text())
    assert len(rows) == 1  # the one rewritten file, with its dead ranges
    path = tmp_path / rows[0][0]
    before = _written(path)
    time.sleep(1.0)  # the punch is due
    assert relocate.load_pending(str(tmp_path), force=True) == 1
    assert not records[0].exists()
    deadline = time.monotonic() + 10
    while _written(path) > before - 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _written(path) <= before - 100_000
    got = pl.read_parquet(path)
    assert got.height == 8000 and got.equals(CANDLES.select(got.columns))


def test_records_naming_files_outside_the_lake_or_malformed_are_ignored(tmp_path) -> None:
    lake_root = tmp_path / "lake"
    (lake_root / relocate.PENDING_DIR).mkdir(parents=True)
    victim = tmp_path / "victim.parquet"
    victim.write_bytes(encode_parquet(CANDLES))
    (lake_root / "klines").mkdir()
    (lake_root / "klines/link.parquet").symlink_to(victim)
    st_ = os.stat(victim)
    ident = [st_.st_ino, st_.st_mtime_ns, st_.st_size]
    rows = [
        ["../victim.parquet", *ident, [[4, st_.st_size - 100]], 0.0],
        [str(victim), *ident, [[4, st_.st_size - 100]], 0.0],
        ["klines/link.parquet", *ident, [[4, st_.st_size - 100]], 0.0],  # through a symlink
        ["klines/x.parquet", *ident, [[0, 10]], 0.0],  # the magic number is never punched
        ["klines/x.parquet", 1, 2, 3],
        {"rel": "klines/x.parquet"},
        None,
    ]
    (lake_root / relocate.PENDING_DIR / "1-x.json").write_text(json.dumps(rows))
    (lake_root / relocate.PENDING_DIR / "2-y.json").write_text("{not json")
    before = victim.read_bytes()
    assert relocate.load_pending(str(lake_root), force=True) == 1  # only the symlink passes the record check
    time.sleep(0.5)  # due at once: the punch thread has had its chance
    assert victim.read_bytes() == before and _written(victim) >= len(before) - 4096
    assert relocate.punch_now(str(lake_root), "klines/link.parquet", *ident, ((4, st_.st_size - 100),)) == 0
    LakeFS(lake_root).write_atomic("klines/y.parquet", encode_parquet(CANDLES.head(5)))  # writes still work


_REWRITE = """
import sys, time
from lake.store.klines import write_klines
from tests.transform.helpers import random_candles
root, seconds = sys.argv[1], float(sys.argv[2])
rows = {s: random_candles(i, 300_000, 8000, hole_rate=0.0) for i, s in enumerate(["AUSDT", "BUSDT", "CUSDT"])}
n, end = 3001, time.monotonic() + seconds
while time.monotonic() < end:
    for s, df in rows.items():
        write_klines(root, "usdt_perp", "5m", s, df.head(n))
    n += 1
print(n)
"""


@pytest.mark.parametrize("engine", ["polars", "duckdb"])
def test_readers_of_partitions_being_rewritten_never_fail(tmp_path, engine) -> None:
    """Bare Polars scans (no retry) and DuckDB over partitions another process rewrites: no query
    fails, and each sees whole versions. The Polars variant fails with ``LAKE_NO_RELOCATE=1``
    (5–30% of such queries fail, bench.torn_reads); the DuckDB one only sometimes (with plain
    renames about 1–3 queries per thousand fail, with leases fewer)."""
    root = str(tmp_path)
    for i, s in enumerate(["AUSDT", "BUSDT", "CUSDT"]):
        df = random_candles(i, 300_000, 8000, hole_rate=0.0)
        write_klines(root, "usdt_perp", "5m", s, df.head(2000))
        write_klines(root, "usdt_perp", "5m", s, df.head(3000))
    writer = subprocess.Popen(
        [sys.executable, "-c", _REWRITE, root, "6"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    files = f"{root}/klines/trade_type=usdt_perp/interval=5m/*/*/data.parquet"
    con = duckdb.connect()
    errors: list[str] = []
    counts: list[int] = []
    while writer.poll() is None:
        try:
            if engine == "polars":
                count = pl.scan_parquet(files).select(pl.len()).collect().item()
            else:
                count = con.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchall()[0][0]
        except BaseException as exc:  # Polars panics on torn reads (pyo3's PanicException)
            if isinstance(exc, KeyboardInterrupt):
                raise
            errors.append(str(exc)[:200])
            continue
        counts.append(count)
    out = writer.communicate()[0]
    assert writer.returncode == 0
    assert int(out) > 3010  # the writer did rewrite the partitions, round after round
    assert errors == [] and len(counts) > 50
    assert all(3 * 3000 <= c <= 3 * int(out) for c in counts)


def test_a_corrupt_footer_with_a_huge_collection_is_refused_not_looped_over(tmp_path) -> None:
    """A map of 2**62 bools reads no byte per element: the walk must not trust the count (review)."""
    import signal

    # FileMetaData {1: i32 1, 20: map<bool, bool> of 2**62 entries}
    footer = b"\x15\x02" + b"\x0b\x28" + varint(2**62) + b"\x11" + b"\x00"
    assert len(footer) < 20

    def boom(*_: object) -> None:
        raise TimeoutError("the footer walk hangs")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(10)
    try:
        with pytest.raises(ValueError):
            relocate._Footer(footer)
        lfs = LakeFS(tmp_path)
        (tmp_path / "t").mkdir()
        (tmp_path / "t/data.parquet").write_bytes(
            b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1"
        )
        payload = encode_parquet(CANDLES.head(10))
        lfs.write_atomic("t/data.parquet", payload)  # not relocatable: replaced as it is
        assert (tmp_path / "t/data.parquet").read_bytes() == payload
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_hostile_pending_records_never_fail_a_write_nor_stop_the_punching(tmp_path) -> None:
    root = tmp_path / "lake"
    (root / relocate.PENDING_DIR).mkdir(parents=True)
    ok = ["klines/a.parquet", 1, 2, 10_000, [[4, 100]]]
    rows = [
        [*ok, float("inf")],  # a due time that never comes
        [*ok, 1e300],
        [*ok, float("nan")],
        ["klines/\x00.parquet", 1, 2, 10_000, [[4, 100]], 0.0],
        ["klines/\ud800.parquet", 1, 2, 10_000, [[4, 100]], 0.0],
        ["klines/a.parquet", 10**400, 2, 10_000, [[4, 100]], 0.0],
        ["klines/a.parquet", 1, 2, 10_000, [[4, float("inf")]], 0.0],
        ["klines/a.parquet", 1, 2, 10_000, [[4]], 0.0],
    ]
    (root / relocate.PENDING_DIR / "1-a.json").write_text(json.dumps(rows))
    (root / relocate.PENDING_DIR / "2-b.json").write_text("[" * 100_000 + "]" * 100_000)  # too deep to parse
    (root / relocate.PENDING_DIR / "3-c.json").mkdir()  # not even a file
    queued = relocate.load_pending(str(root), force=True)
    assert queued == 2  # the two far-away due times, brought within a delay; everything else dropped
    assert all(e[0] <= time.time() + relocate.PUNCH_DELAY_S + 1 for e in relocate._queue)
    assert not (root / relocate.PENDING_DIR / "2-b.json").exists()
    # and the worker lives on: a due punch of a real file still happens
    if relocate._FALLOCATE is None:
        return
    lfs = LakeFS(root)
    lfs.write_atomic(REL, encode_parquet(CANDLES))
    lfs.write_atomic(
        REL, encode_parquet(CANDLES.head(7900))
    )  # a new process's first write would load records
    (job,) = [e[2] for e in relocate._queue if e[2].rel == REL and e[2].root == lfs.root]
    relocate._enqueue([dataclasses.replace(job, due=time.time())])
    before = _written(root / REL)
    deadline = time.monotonic() + 10
    while _written(root / REL) > before - 100_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _written(root / REL) <= before - 100_000
    assert relocate._worker is not None and relocate._worker.is_alive()


def test_successive_versions_have_increasing_mtimes(tmp_path) -> None:
    """Relocation keeps the size, so the change token (mtime, size, inode) must move by its mtime
    even on a coarse clock, where a new version can get its predecessor's tick (review)."""
    lfs = LakeFS(tmp_path)
    path = tmp_path / REL
    lfs.write_atomic(REL, encode_parquet(CANDLES.head(3000)))
    lfs.write_atomic(REL, encode_parquet(CANDLES.head(2000)))  # grown once: sizes stay from here on
    ahead = time.time_ns() + 300_000_000  # as if the clock ticked coarsely (or a bump went ahead)
    os.utime(path, ns=(ahead, ahead))
    lfs.write_atomic(REL, encode_parquet(CANDLES.head(2001)))
    assert os.stat(path).st_mtime_ns == ahead + 1
    far = time.time_ns() + 5_000_000_000  # a clock stepped back by seconds: not carried forward
    os.utime(path, ns=(far, far))
    lfs.write_atomic(REL, encode_parquet(CANDLES.head(2002)))
    assert os.stat(path).st_mtime_ns < far


def test_pending_punches_do_not_recreate_a_removed_lake(tmp_path) -> None:
    import shutil

    root = tmp_path / "gone"
    lfs = LakeFS(root)
    lfs.write_atomic(REL, encode_parquet(CANDLES))
    lfs.write_atomic(REL, encode_parquet(CANDLES.head(7900)))
    shutil.rmtree(root)
    relocate._save_pending()
    assert not root.exists()


def test_a_long_lived_duckdb_connection_sees_every_same_size_version(tmp_path) -> None:
    """Relocated versions keep the file's size; DuckDB's external file cache must still notice."""
    import lake

    df = random_candles(0, 300_000, 3000, hole_rate=0.0)
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", df.head(1000))
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", df.head(2000))  # grown: sizes stay from here
    con = lake.connect(str(tmp_path))
    (path,) = (tmp_path / "klines").rglob("data.parquet")
    size = path.stat().st_size
    for n in range(2001, 2011):
        write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", df.head(n))
        assert path.stat().st_size == size
        got = con.execute("SELECT count(*), sum(volume) FROM klines_partitions").fetchall()[0]
        assert got == (n, pytest.approx(float(df.head(n)["volume"].sum())))
