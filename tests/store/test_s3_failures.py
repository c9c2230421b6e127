"""What a user on S3 relies on beyond the contract: fresh listings, paging, and clear errors.

Another process's writes are seen by a later listing (s3fs caches listings forever by default); a
prefix with more than 1000 keys is listed whole (S3 pages at 1000); a missing bucket, refused
credentials and an unreachable endpoint are one line on stderr with a non-zero exit, never a
traceback, never the secret, and nothing written.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid

import fsspec
import polars as pl
import pytest

from lake.query.connect import connect
from lake.sim.testing import start_sim
from lake.store.fs import LakeFS
from lake.store.klines import write_klines
from tests.s3 import S3_ENV, moto_server
from tests.store.helpers import frame, opens, t0_ms

DAY = 86_400_000
SECRET = "s3cr3t-Never-Print-Me"


def _other_process_fs() -> fsspec.AbstractFileSystem:
    """A file system object of its own, as another process (``lake live``, a backfill) has."""
    return fsspec.filesystem("s3", skip_instance_cache=True)


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf)
    return buf.getvalue()


def test_a_listing_sees_what_another_process_wrote(s3_endpoint: str) -> None:
    root = f"s3://lake-test/{uuid.uuid4().hex[:12]}"
    write_klines(root, "usdt_perp", "1m", "BTCUSDT", frame(opens(t0_ms(), 10, 60_000)))
    lfs = LakeFS(root)
    sym = "klines/trade_type=usdt_perp/interval=1m/symbol=BTCUSDT"
    assert lfs.listdir(sym) == ["date=2024-01-01"]
    data = f"{sym}/date=2024-01-01/data.parquet"
    token = lfs.mtime_key(data)
    con = connect(root)
    assert con.sql("SELECT count(*) FROM klines").fetchall() == [(10,)]
    con.close()
    # another process adds a day and rewrites the first one
    other = _other_process_fs()
    other.pipe_file(
        f"{lfs.full(sym)}/date=2024-01-02/data.parquet", _parquet(frame(opens(t0_ms() + DAY, 5, 60_000)))
    )
    other.pipe_file(lfs.full(data), _parquet(frame(opens(t0_ms(), 20, 60_000))))
    again = LakeFS(root)
    assert again.listdir(sym) == ["date=2024-01-01", "date=2024-01-02"]
    assert again.exists(f"{sym}/date=2024-01-02/data.parquet")
    assert again.mtime_key(data) != token
    con = connect(root)
    try:
        assert con.sql("SELECT count(*) FROM klines").fetchall() == [(25,)]
    finally:
        con.close()


@pytest.mark.slow  # ~10 s: a thousand PUTs to the local endpoint
def test_more_than_1000_keys_under_one_prefix(s3_endpoint: str) -> None:
    root = f"s3://lake-test/{uuid.uuid4().hex[:12]}"
    lfs = LakeFS(root)
    sym = "klines/trade_type=usdt_spot/interval=1m/symbol=BTCUSDT"
    n = 1005
    one = _parquet(frame(opens(t0_ms(), 1, 60_000)))
    _other_process_fs().pipe(
        {f"{lfs.full(sym)}/date={d:04d}-01-01/data.parquet": one for d in range(1000, 1000 + n)}
    )
    assert len(LakeFS(root).listdir(sym)) == n
    # what DuckDB's read_parquet glob asks the registered file system for
    assert len(lfs.fs.glob(f"{lfs.full(sym)}/*/data.parquet")) == n


def _lake(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def _one_line(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("lake: error: ")]
    assert len(errors) == 1, res.stderr
    for w in words:
        assert w in errors[0], errors[0]
    assert SECRET not in res.stderr + res.stdout


def _backfill(sim_url: str) -> list[str]:
    return [
        "backfill",
        "--type",
        "usdt_perp",
        "--days",
        "1",
        "--symbols",
        "BTCUSDT",
        "--source",
        "rest",
        "--sim-url",
        sim_url,
    ]


READERS = (["status"], ["sql", "SELECT count(*) FROM klines"])


def test_a_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    env = {"AWS_SECRET_ACCESS_KEY": SECRET, "LAKE_ROOT": "s3://no-such-bucket-here/lake"}
    with start_sim() as sim:
        _one_line(_lake(*_backfill(sim.base_url), env=env), 2, "s3://no-such-bucket-here", "does not exist")
    for args in READERS:
        _one_line(_lake(*args, env=env), 2, "s3://no-such-bucket-here", "does not exist")
    assert not _other_process_fs().exists("no-such-bucket-here")


def test_refused_credentials_are_a_clear_error_and_write_nothing() -> None:
    # an endpoint that checks every request's credentials (it knows none, so ours are refused)
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url, start_sim() as sim:
        env = {
            **S3_ENV,
            "AWS_ENDPOINT_URL": url,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "LAKE_ROOT": "s3://locked/lake",
        }
        _one_line(_lake(*_backfill(sim.base_url), env=env), 2, "s3://locked/lake", "denied")
        for args in READERS:
            _one_line(_lake(*args, env=env), 2, "s3://locked/lake", "denied")


def test_an_unreachable_endpoint_is_a_transient_error(tmp_path) -> None:
    env = {
        **S3_ENV,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "LAKE_ROOT": "s3://lake-test/x",
        "AWS_MAX_ATTEMPTS": "1",
    }
    with start_sim() as sim:
        _one_line(_lake(*_backfill(sim.base_url), env=env), 3, "cannot reach", "127.0.0.1:9")
    _one_line(_lake("status", env=env), 3, "cannot reach", "127.0.0.1:9")
