"""Recently changed code paths on an object-store lake (a real S3 endpoint, moto):
offsets --method binance with confirmed-empty ranges, coverage/status exchange holes, the archive's
second plan of a truncated month, live's provisional record, foreign partitions, settings."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import polars as pl
import pytest

from lake.store.klines import scan_klines, write_klines
from lake.store.meta import EmptyRange, add_empty_ranges, clear_empty_ranges, read_empty_ranges
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.offsets import offset_plan, resample_offsets
from tests.transform.helpers import T0_MS, assert_bins_equal, random_candles

B = 300_000
H = 3_600_000
DAY = 288
KEY = ["symbol", "offset", "candle_begin_time"]


@pytest.fixture
def s3_root(s3_endpoint: str) -> str:
    return f"s3://lake-test/s18-{uuid.uuid4().hex[:12]}"


def _day(seed: int, day: int, hole_rate: float = 0.05) -> pl.DataFrame:
    return random_candles(seed, B, DAY, start_ms=T0_MS + day * DAY * B, hole_rate=hole_rate)


def _fresh(root: str, symbols: list[str]) -> pl.DataFrame:
    base = scan_klines(root, "usdt_perp", "5m", symbols).collect()
    empty = {
        s: [(r.start_ms, r.end_ms) for r in read_empty_ranges(root, "usdt_perp", "5m", s)] for s in symbols
    }
    return resample_offsets(base, offset_plan("1h", "5m", "all", "binance"), empty).sort(KEY)


def _assert_table(root: str, symbols: list[str]) -> pl.DataFrame:
    got = scan_offsets(root, "usdt_perp", "1h").collect().sort(KEY)
    want = _fresh(root, symbols)
    assert got.select(KEY).rows() == want.select(KEY).rows()
    assert_bins_equal(got, want)
    return got


# -- 1. offsets --method binance with confirmed-empty ranges ---------------------------------------


def test_binance_offsets_incremental_on_s3_equal_local(s3_root: str, tmp_path: Path) -> None:
    """The local tests' scenarios (a window confirmed later then forgotten, a delisting then a
    relisting, a new symbol of the table) on S3 and on disk: every run equals a fresh computation,
    and both roots hold the same bins."""
    t = pl.col("candle_begin_time").dt.epoch("ms")
    window = (T0_MS + 30 * H + 25 * 60_000, T0_MS + 33 * H + 40 * 60_000)
    end = T0_MS + 2 * DAY * B + 14 * H + 25 * 60_000
    days = pl.concat([_day(1, 0, 0.0), _day(2, 1, 0.0), _day(3, 2, 0.0)])
    steps = [
        lambda r: write_klines(
            r, "usdt_perp", "5m", "AUSDT", days.filter(((t < window[0]) | (t >= window[1])) & (t < end))
        ),
        lambda r: write_klines(r, "usdt_perp", "5m", "BUSDT", _day(7, 1, 0.2)),
        lambda r: add_empty_ranges(r, "usdt_perp", "5m", "AUSDT", [EmptyRange(*window)]),
        lambda r: add_empty_ranges(r, "usdt_perp", "5m", "AUSDT", [EmptyRange(end, end + 2 * H)]),
        lambda r: write_klines(r, "usdt_perp", "5m", "AUSDT", days.filter(t >= end + 2 * H)),
        lambda r: add_empty_ranges(
            r, "usdt_perp", "5m", "BUSDT", [EmptyRange(T0_MS - 30 * DAY * B, T0_MS + DAY * B)]
        ),
        lambda r: clear_empty_ranges(r, "usdt_perp", "5m", "AUSDT"),
        lambda r: write_klines(r, "usdt_perp", "5m", "CUSDT", _day(9, 2, 0.1)),
        lambda r: add_empty_ranges(r, "usdt_perp", "5m", "CUSDT", [EmptyRange(T0_MS, T0_MS + 2 * DAY * B)]),
    ]
    local = str(tmp_path / "lake")
    tables: dict[str, pl.DataFrame] = {}
    for root in (local, s3_root):
        for i, step in enumerate(steps):
            step(root)
            syms = ["AUSDT", "BUSDT"] + (["CUSDT"] if i >= 7 else [])
            if i == 7:  # a new listing noted by lake live: built alone, with the table's base and method
                r = build_offsets(root, "usdt_perp", "1h", symbols=["CUSDT"], missing_ok=True)
                assert (r.method, r.base) == ("binance", "5m")
            else:  # (a fold half way: period files rewritten from the tail)
                build_offsets(
                    root, "usdt_perp", "1h", method="binance" if i == 0 else None, fold=i == 5, tail_grace_s=0
                )
            tables[root] = _assert_table(root, syms)
        assert build_offsets(root, "usdt_perp", "1h").written == 0
    assert_bins_equal(tables[s3_root], tables[local])


# -- 2. coverage view and lake status split a hole into exchange and missing parts -----------------


def _coverage_rows(root: str) -> tuple[list[tuple], list[tuple]]:
    from lake.query.connect import connect
    from lake.store.coverage import coverage

    con = connect(root)
    try:
        view = con.sql(
            "SELECT symbol, candles, expected, missing, exchange_missing, holes, largest_hole FROM coverage ORDER BY symbol"
        ).fetchall()
    finally:
        con.close()
    status = [
        (
            c.symbol,
            c.rows,
            c.expected,
            c.missing,
            c.exchange_missing,
            sum(h.kind == "missing" for h in c.holes),
            max([h.missing for h in c.holes if h.kind == "missing"], default=0),
        )
        for c in coverage(root, "usdt_perp", "5m")
    ]
    return view, status


def test_coverage_view_and_status_agree_on_s3(s3_root: str, tmp_path: Path) -> None:
    t = pl.col("candle_begin_time").dt.epoch("ms")
    day = _day(11, 0, 0.0)
    # AUSDT: a maintenance window 01:00–02:00 with a lost candle beside it (02:00), a lost hour
    # 05:00–06:00 alone, and a range starting off the grid inside a hole (08:02–08:30 of 08:00–08:40)
    cut = [(H, 2 * H + B), (5 * H, 6 * H), (8 * H, 8 * H + 40 * 60_000)]
    keep = pl.lit(True)
    for a, b in cut:
        keep = keep & ~((t >= T0_MS + a) & (t < T0_MS + b))
    ranges = [(H, 2 * H), (8 * H + 120_000, 8 * H + 30 * 60_000)]
    got = {}
    for root in (str(tmp_path / "lake"), s3_root):
        write_klines(root, "usdt_perp", "5m", "AUSDT", day.filter(keep))
        write_klines(root, "usdt_perp", "5m", "BUSDT", _day(12, 0, 0.1))
        add_empty_ranges(
            root, "usdt_perp", "5m", "AUSDT", [EmptyRange(T0_MS + a, T0_MS + b) for a, b in ranges]
        )
        view, status = _coverage_rows(root)
        assert view == status
        got[root] = view
    a_row = got[s3_root][0]
    assert a_row[0] == "AUSDT" and a_row[3:5] == (
        1 + 12 + 3,
        12 + 5,
    )  # 08:05–08:25 open in the off-grid range
    assert got[s3_root] == got[str(tmp_path / "lake")]


# -- 3. the archive's second plan of a truncated month, window-clipped unit counts ------------------


async def test_truncated_monthly_file_completed_in_one_run_on_s3(s3_root: str) -> None:
    import datetime as dt

    from lake.ingest.archive.runner import ingest_archive
    from lake.settings import Settings
    from tests.ingest.archive_fakes import DAY_MS, MIN_MS, FakeArchive, csv, day_opens, zip_bytes
    from tests.ingest.test_archive_real_files import FEB, JAN, SYM, daily, monthly, opens_stored

    async with FakeArchive() as arch:
        arch.put(monthly(dt.date(2024, 1, 1)).key, zip_bytes(csv(list(range(JAN, JAN + 7 * DAY_MS, MIN_MS)))))
        for d in range(31):
            arch.put(daily(dt.date(2024, 1, 1 + d)).key, zip_bytes(csv(day_opens(JAN + d * DAY_MS))))
        s = Settings(
            root=s3_root, archive_url=f"{arch.base}/archive", archive_list_url=f"{arch.base}/archive-bucket"
        )
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert rep.failed == []
        assert opens_stored(s) == list(range(JAN, FEB, MIN_MS))
        assert rep.rows == 31 * 1440
        again = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN, FEB)
        assert (again.files_planned, again.files_downloaded) == (0, 0)


async def test_rows_outside_the_window_do_not_complete_a_day_on_s3(s3_root: str) -> None:
    import datetime as dt

    from lake.ingest.archive.parse import parse_kline_csv
    from lake.ingest.archive.runner import ingest_archive
    from lake.settings import Settings
    from tests.ingest.archive_fakes import DAY_MS, MIN_MS, FakeArchive, csv, day_opens, zip_bytes
    from tests.ingest.test_archive_real_files import HOUR, JAN, SYM, daily, opens_stored

    async with FakeArchive() as arch:
        arch.put(daily(dt.date(2024, 1, 1)).key, zip_bytes(csv(day_opens(JAN))))
        s = Settings(
            root=s3_root, archive_url=f"{arch.base}/archive", archive_list_url=f"{arch.base}/archive-bucket"
        )
        morning = parse_kline_csv(
            csv(list(range(JAN, JAN + 12 * HOUR, MIN_MS))), start_ms=JAN, end_ms=JAN + DAY_MS, source="rest"
        )
        write_klines(s.root, "usdt_spot", "1m", SYM, morning)
        rep = await ingest_archive(s, "usdt_spot", "1m", [SYM], JAN + 12 * HOUR, JAN + DAY_MS)
        assert rep.lacking == {} and rep.failed == []
        assert opens_stored(s) == day_opens(JAN)


# -- 4. lake live's record of provisional REST candles ---------------------------------------------


def test_provisional_record_round_trip_on_s3(s3_root: str) -> None:
    import fsspec

    from lake.live.feed import candle_differs
    from lake.live.repair import read_provisional, write_provisional
    from lake.store.fs import LakeFS

    row = [
        1_742_040_000_000,
        "1.5",
        "2.0",
        "1.0",
        "1.75",
        "10.0",
        1_742_040_059_999,
        "17.5",
        3,
        "5.0",
        "8.75",
        "0",
    ]
    lfs = LakeFS(s3_root)
    assert read_provisional(lfs, "usdt_perp", "1m") == {}
    write_provisional(lfs, "usdt_perp", "1m", {("BTCUSDT", row[0]): row, ("ETHUSDT", row[0]): tuple(row)})
    rel = "_meta/live_catchup/usdt_perp/1m-provisional.json"
    # another process (a restart) reads it back
    other = fsspec.filesystem("s3", skip_instance_cache=True)
    assert other.exists(lfs.full(rel))
    back = read_provisional(LakeFS(s3_root), "usdt_perp", "1m")
    assert set(back) == {("BTCUSDT", row[0]), ("ETHUSDT", row[0])}
    assert not candle_differs(back[("BTCUSDT", row[0])], row)
    # a damaged record is ignored, not an error
    other.pipe_file(lfs.full(rel), b'{"BTCUSDT": [[1, 2')
    assert read_provisional(LakeFS(s3_root), "usdt_perp", "1m") == {}
    # none left: the record goes (and a fresh instance whose listing cache knew it sees that)
    cached = LakeFS(s3_root)
    assert cached.exists(rel)
    write_provisional(lfs, "usdt_perp", "1m", {})
    assert not other.exists(lfs.full(rel))
    assert read_provisional(cached, "usdt_perp", "1m") == {}
    write_provisional(lfs, "usdt_perp", "1m", {})  # no record, nothing to remove


# -- 5. a foreign or truncated object in an S3 lake: one line, exit 4 ------------------------------


def _lake_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", *args], capture_output=True, text=True, timeout=120
    )


def _one_line(res: subprocess.CompletedProcess[str], code: int = 4) -> None:
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("lake: error:") == 1, res.stderr


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_object_is_one_line_on_s3(s3_root: str, damage: str) -> None:
    import io

    import fsspec

    from lake.errors import DataError
    from lake.store.fs import LakeFS
    from lake.store.klines import list_partitions
    from tests.store.helpers import frame, t0_ms

    write_klines(s3_root, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms() + i * 300_000 for i in range(576)]))
    write_klines(s3_root, "usdt_perp", "5m", "XRPUSDT", frame([t0_ms() + i * 300_000 for i in range(576)]))
    lfs = LakeFS(s3_root)
    path = lfs.full(list_partitions(lfs, "usdt_perp", "5m", "ETHUSDT")[0].path)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    data = fs.cat_file(path)
    if damage == "truncated":
        fs.pipe_file(path, data[:-100])
    else:
        buf = io.BytesIO()
        pl.read_parquet(io.BytesIO(data)).with_columns(pl.col("open").cast(pl.String)).write_parquet(buf)
        fs.pipe_file(path, buf.getvalue())
    for args, named in (
        (["offsets", "--type", "usdt_perp", "--interval", "1h"], True),
        (["audit", "--type", "usdt_perp"], True),
        (["status"], True),  # (reads open times only: a foreign file of other value types passes)
        (["sql", "SELECT count(*) FROM klines"], False),
        (["compact", "--grace", "0"], False),
    ):
        res = _lake_cli(*args, "--root", s3_root)
        if res.returncode == 0 and (args[0] == "compact" or (args[0] == "status" and damage == "foreign")):
            continue  # nothing in a tail to compact / open times read fine
        _one_line(res)
        if named:  # by its URL: a path without the scheme is no object a user can find
            assert f"s3://{path}" in res.stderr, (args, res.stderr)
    # a write into it (a backfill, a compaction, lake live's appender) names it in a DataError: a
    # truncated one raised Polars' ComputeError naming no file
    with pytest.raises(DataError, match="ETHUSDT"):
        write_klines(s3_root, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms()]))


# -- 6. proxy variables and an S3 endpoint on 127.0.0.1 ---------------------------------------------


def test_proxy_variables_and_a_loopback_s3_endpoint(s3_root: str) -> None:
    """lake's own clients skip HTTP(S)_PROXY for a server on this machine (lake.net); the S3 clients
    (s3fs/botocore, Polars' object_store, DuckDB through s3fs) are not lake's and honour it: an S3
    endpoint on 127.0.0.1 behind a dead proxy is one line and exit 3 (naming no secret), and works
    with NO_PROXY, which all three honour."""
    import os
    import socket

    from tests.store.helpers import frame, t0_ms

    write_klines(s3_root, "usdt_perp", "5m", "ETHUSDT", frame([t0_ms() + i * 300_000 for i in range(10)]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy",)}
    env.update({k: dead for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    args = [sys.executable, "-m", "lake.cli", "status", "--json", "--root", s3_root]
    # (botocore's own retries of the dead proxy took ~6 s; one attempt shows the same error)
    res = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**env, "AWS_MAX_ATTEMPTS": "1"}
    )
    _one_line(res, 3)
    assert "testing" not in res.stderr  # the secret key
    env.update(NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and '"rows":10' in res.stdout.replace(" ", ""), res.stderr
