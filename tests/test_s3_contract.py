"""Storage contract: the same pipeline on a local root and on S3 (a real endpoint) makes the same lake.

One simulator run per root (frozen clock, same seed): a REST backfill with a young symbol (confirmed
empty ranges), an archive backfill, a short ``lake live`` whose candles close while it runs, ``lake
compact``, ``lake offsets``; then every file and every DuckDB view must be equal between the two
roots, and a second run of the backfills and offsets must leave both lakes as they were. The roots
hold a space, brackets, a quote, a plus and a non-ASCII letter.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import polars as pl
import pytest

from lake.cli import main
from lake.live.watermark import read_watermark, read_watermarks
from lake.query.connect import VIEWS, connect
from lake.sim.testing import start_sim
from lake.store.fs import LakeFS
from lake.store.tail import _stub_footer

NAME = "lake data [v1] it's+ü"
REST = ("--type", "usdt_perp", "--interval", "5m", "--start", "2025-03-06", "--end", "2025-03-10")
LIVE_SYMBOLS = ("BTCUSDT", "ETHUSDT")  # a --symbols run: its watermark is its own, not the feed's
REST_SYMBOLS = ("--symbols", "BTCUSDT,SOLUSDT")  # SOLUSDT lists on 2025-03-08T08:00: empty before
ARCHIVE = ("--type", "usdt_spot", "--interval", "1h", "--start", "2025-01-01", "--end", "2025-03-01")
LIVE_FROM = 1_742_040_000_000  # 2025-03-15T12:00Z, the simulator's frozen start
# Lake-internal bookkeeping that may differ between roots (local lock files, the S3 writer lease).
IGNORED = (".locks/", ".state/", "_meta/writer-lease.json")
# JSON fields that depend on the machine or the store, not on the data: a wall-clock stamp, and the
# offsets manifest's change tokens (mtime+size on disk, ETag on S3)
LOCAL_FIELDS = {"ingested_at", "partitions"}


def cli(*args: str) -> dict:
    """``lake <args> --json`` in this process; the parsed JSON output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*args, "--json"])
        except SystemExit as exc:
            assert exc.code in (0, None), out.getvalue()
    return json.loads(out.getvalue())


def _pipeline(root: str) -> None:
    with start_sim() as sim:
        sim_args = ("--root", root, "--sim-url", sim.base_url)
        rest = cli("backfill", *REST, *REST_SYMBOLS, "--source", "rest", *sim_args)
        assert rest["candles"] == 4 * 288 + 16 * 12 + 288 and rest["missing"] == []
        arch = cli("backfill", *ARCHIVE, "--symbols", "BTCUSDT,ETHUSDT", "--source", "archive", *sim_args)
        assert arch["archive"][0]["rows"] == 2 * 59 * 24
        _live(root, sim)
        cli("compact", "--grace", "0", "--root", root)
        off = cli("offsets", "--type", "usdt_perp", "--interval", "1h", "--base", "5m", "--root", root)
        assert off["written"] == 24


def _live(root: str, sim) -> None:  # type: ignore[no-untyped-def]
    """``lake live`` on 1m for two symbols while the frozen clock is moved on by two minutes."""
    args = [
        "live",
        "--type",
        "usdt_perp",
        "--interval",
        "1m",
        "--symbols",
        ",".join(LIVE_SYMBOLS),
        "--history",
        "10",
    ]
    args += ["--grace", "0", "--duration", "2", "--root", root, "--sim-url", sim.base_url]
    done: list[object] = []

    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(args)
            except SystemExit as exc:
                done.append(exc.code)
            else:
                done.append(0)

    th = threading.Thread(target=run)
    th.start()
    try:
        deadline = time.monotonic() + 30
        while read_watermark(root, "usdt_perp", "1m", LIVE_SYMBOLS) is None:
            assert time.monotonic() < deadline and th.is_alive(), "lake live made no watermark"
            time.sleep(0.05)
        sim.clock.advance(120_000)
        while read_watermark(root, "usdt_perp", "1m", LIVE_SYMBOLS)["watermark_ms"] < LIVE_FROM + 60_000:  # type: ignore[index]
            assert time.monotonic() < deadline and th.is_alive(), "the closed candles did not arrive"
            time.sleep(0.05)
    finally:
        th.join(timeout=30)
    assert done == [0]


def _files(root: str) -> dict[str, bytes]:
    """Every object under ``root`` (relative key → bytes) but the bookkeeping in ``IGNORED``."""
    fs, path = fsspec.core.url_to_fs(root)
    fs.invalidate_cache()
    out = {}
    for p in fs.find(path):
        rel = p[len(path.rstrip("/")) + 1 :]
        if not rel.startswith(IGNORED):
            out[rel] = fs.cat_file(p)
    return out


def _content(rel: str, data: bytes) -> object:
    """What a file holds: its rows for parquet, its document for JSON."""
    if rel.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(data))
    return _drop_local(json.loads(data))


def _drop_local(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _drop_local(v) for k, v in doc.items() if k not in LOCAL_FIELDS}
    if isinstance(doc, list):
        return [_drop_local(v) for v in doc]
    return doc


def _views(root: str) -> dict[str, pl.DataFrame]:
    con = connect(root, config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        frames = {v: con.view(v).order("ALL").pl() for v in VIEWS}
        loaded = con.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    finally:
        con.close()
    assert ("httpfs",) not in loaded  # S3 is read through the registered fsspec file system
    return frames


@pytest.fixture(scope="module")
def lakes(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    local = str(tmp_path_factory.mktemp("contract") / NAME)
    s3 = f"s3://lake-test/{uuid.uuid4().hex[:8]}/{NAME}"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse isolation is not active yet
        for key in [k for k in os.environ if k.startswith("LAKE_")]:
            mp.delenv(key)
        mp.setenv("LAKE_CONFIG", os.devnull)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        for root in (local, s3):
            _pipeline(root)
        yield local, s3


def test_both_roots_hold_the_same_files(lakes: tuple[str, str]) -> None:
    local, s3 = (_files(r) for r in lakes)
    # A retired tail file stays on a local disk as a zero-row stub, for reuse (lake.store.tail); on
    # S3 it is deleted.
    footer = _stub_footer()
    stubs = [
        r
        for r, b in local.items()
        if r.startswith("klines_tail/") and r.rsplit("/", 1)[1][:1].isdigit() and b.endswith(footer)
    ]
    assert all(pl.read_parquet(io.BytesIO(local[r])).height == 0 for r in stubs)
    local = {r: b for r, b in local.items() if r not in stubs}
    assert sorted(local) == sorted(s3)
    kinds = {rel.split("/", 1)[0] for rel in local}
    assert {"klines", "offsets", "exchange_info", "_meta", "klines_tail"} <= kinds
    for rel in local:
        a, b = _content(rel, local[rel]), _content(rel, s3[rel])
        if isinstance(a, pl.DataFrame):
            assert isinstance(b, pl.DataFrame) and a.equals(b), rel
        else:
            assert a == b, rel


def test_both_roots_give_the_same_views(lakes: tuple[str, str]) -> None:
    local, s3 = (_views(r) for r in lakes)
    for v in VIEWS:
        assert local[v].equals(s3[v]), v
    klines = local["klines"]
    counts = {(tt, iv): n for tt, iv, n in klines.group_by("trade_type", "interval").len().iter_rows()}
    assert counts == {
        ("usdt_perp", "5m"): 4 * 288 + 16 * 12 + 288,
        ("usdt_spot", "1h"): 2 * 59 * 24,
        ("usdt_perp", "1m"): 2 * 13,  # 10 history candles + the 3 that closed while live ran
    }
    empty = local["empty_ranges"]
    assert empty.select("symbol", "interval").rows() == [("SOLUSDT", "5m")]
    # 1h bins at 12 offsets over 4 days of BTCUSDT and 40 hours of SOLUSDT (partial edge bins kept)
    assert local["offsets"].height == 1610
    assert local["latest"].height == local["coverage"].height == 6
    # live followed only LIVE_SYMBOLS: the feed-wide watermark (the view) stays empty, its own is there
    assert local["coverage"]["missing"].sum() == 0 and local["watermark"].height == 0
    for root in lakes:
        (sub,) = read_watermarks(LakeFS(root), subsets=True)
        assert sub["scope"] == list(LIVE_SYMBOLS) and sub["watermark_ms"] >= LIVE_FROM + 60_000


def test_rerun_changes_nothing(lakes: tuple[str, str]) -> None:
    before = [_files(r) for r in lakes]
    for root in lakes:
        with start_sim() as sim:
            sim_args = ("--root", root, "--sim-url", sim.base_url)
            assert cli("backfill", *REST, *REST_SYMBOLS, "--source", "rest", *sim_args)["fetched"] == 0
            arch = cli("backfill", *ARCHIVE, "--symbols", "BTCUSDT,ETHUSDT", "--source", "archive", *sim_args)
            assert arch["archive"][0]["files_downloaded"] == 0
        assert cli("offsets", "--type", "usdt_perp", "--interval", "1h", "--root", root)["written"] == 0
    after = [_files(r) for r in lakes]
    assert after == before


def test_roots_are_what_they_claim(lakes: tuple[str, str]) -> None:
    local, s3 = lakes
    assert Path(local, "klines").is_dir()
    assert s3.startswith("s3://") and not Path(s3).exists()
