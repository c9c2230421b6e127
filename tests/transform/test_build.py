"""The offsets table: full build, incremental runs equal a rebuild, reruns write nothing."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.binance.intervals import parse_interval
from lake.errors import NotFoundError, ValidationError
from lake.store import plain_read
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, write_klines
from lake.store.paths import PartitionKey
from lake.transform import build as build_mod
from lake.transform import planning
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.layout import OffsetPartition, manifest_path
from lake.transform.offsets import offset_plan, resample_offsets
from lake.transform.tail import list_files, load_state
from tests.transform.helpers import T0_MS, assert_bins_equal, random_candles
from tests.transform.reference import seed_resample

DAY = 288  # 5m candles per day
B = 300_000
B5M = parse_interval("5m")


def _day(seed: int, day: int, **kw: object) -> pl.DataFrame:
    return random_candles(seed, B, DAY, start_ms=T0_MS + day * DAY * B, **kw)  # type: ignore[arg-type]


def _edit_day(root: Path, sym: str, day: int, keep: pl.Expr | None) -> bool:
    """Rewrite one day's rows in place, behind the store's back (``keep=None`` drops the day), as an
    outside edit or a deletion would; the partition goes away when it ends up empty."""
    start = T0_MS + day * DAY * B
    part = root / PartitionKey.for_candle("klines", "usdt_perp", "5m", sym, start).path
    if not part.exists():
        return False
    df = pl.read_parquet(part)
    t = pl.col("candle_begin_time").dt.epoch("ms")
    in_day = (t >= start) & (t < start + DAY * B)
    kept = df.filter(~in_day | keep) if keep is not None else df.filter(~in_day)
    if kept.height == 0:
        shutil.rmtree(part.parent)
    else:
        kept.write_parquet(part)
    return True


def _expected(root: Path, symbols: list[str], interval: str = "1h", offsets: str = "all") -> pl.DataFrame:
    base = scan_klines(root, "usdt_perp", "5m", symbols).collect()
    out = resample_offsets(base, offset_plan(interval, "5m", offsets))
    return out.sort("symbol", "offset", "candle_begin_time")


def _stored(root: Path, interval: str = "1h") -> pl.DataFrame:
    return scan_offsets(root, "usdt_perp", interval).collect().sort("symbol", "offset", "candle_begin_time")


def _files(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(root / "offsets"):
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def _assert_table(root: Path, symbols: list[str], interval: str = "1h") -> None:
    got, want = _stored(root, interval), _expected(root, symbols, interval)
    assert got.select("symbol", "offset").rows() == want.select("symbol", "offset").rows()
    assert_bins_equal(got, want)


def test_full_build_then_idempotent_rerun(tmp_path: Path) -> None:
    for i, sym in enumerate(["BTCUSDT", "1000SHIBUSDT"]):
        for d in range(3):
            write_klines(tmp_path, "usdt_perp", "5m", sym, _day(10 * i + d, d))
    r = build_offsets(tmp_path, "usdt_perp", "1h", batch_rows=1)  # one symbol per batch
    assert r.base == "5m" and len(r.offsets) == 12 and r.written == 24 and r.symbols_updated == 2
    _assert_table(tmp_path, ["BTCUSDT", "1000SHIBUSDT"])
    files = _files(tmp_path)
    assert (
        "offsets/trade_type=usdt_perp/interval=1h/offset=55m/symbol=BTCUSDT/date=2024-01-01/data.parquet"
        in files
    )
    assert (tmp_path / manifest_path("usdt_perp", "1h")).exists()
    again = build_offsets(tmp_path, "usdt_perp", "1h")
    assert (again.written, again.unchanged, again.removed, again.symbols_updated, again.bins) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert _files(tmp_path) == files


def test_append_a_day_recomputes_only_its_neighbourhood(tmp_path: Path) -> None:
    for d in range(4):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(99, 4))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.base_partitions_changed == 1
    # bins opening from 23:05 of day 3 to the end of day 4: 11 bins crossing midnight + 12×24 of day 4
    assert r.bins <= 11 + 12 * 24 and r.written == 1  # one tail file
    _assert_table(tmp_path, ["ETHUSDT"])


@pytest.mark.parametrize("footer", [True, False])
def test_an_appended_day_is_read_from_its_month_alone(tmp_path: Path, footer: bool) -> None:
    """The month file's footer has its days' fingerprints (the klines writer puts them there), so an
    appended day is read from 55 minutes before it: 11 + 288 candles, not the month. A file written
    by another tool has none: the changed month is read whole, and the result is the same."""
    for d in range(6):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d, hole_rate=0.0))
    part = tmp_path / PartitionKey.for_candle("klines", "usdt_perp", "5m", "ETHUSDT", T0_MS).path
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(99, 6, hole_rate=0.0))
    if not footer:
        pl.read_parquet(part).write_parquet(part)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.base_partitions_changed == 1 and r.written == 1
    assert r.base_rows_read == (11 + DAY if footer else 7 * DAY)
    _assert_table(tmp_path, ["ETHUSDT"])
    # a candle of day 2 changed (inside the month): planning reads from 55 minutes before day 2 on,
    # then the merge into the period files reads the month
    edited = _day(2, 2, hole_rate=0.0).slice(5, 1).with_columns(pl.col("close") * 1.01)
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", edited)
    if not footer:
        pl.read_parquet(part).write_parquet(part)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.base_partitions_changed == 1 and r.folded == 1
    assert r.base_rows_read == (11 + 5 * DAY if footer else 7 * DAY) + 7 * DAY
    _assert_table(tmp_path, ["ETHUSDT"])


def test_planning_reads_the_last_pages_as_polars_reads_the_files(tmp_path: Path) -> None:
    """Planning reads the changed months of lake's writer from their last pages only
    (``lake.store.plain_read``) and other files with Polars: one frame, equal to Polars' read of them
    all, whatever the mix (months of lake's writer, a file of another writer, one day, a file with
    no rows from the cut on)."""
    lfs = LakeFS(tmp_path)
    syms = ["AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT"]
    for i, sym in enumerate(syms):
        days = {"CUSDT": 1, "DUSDT": 3}.get(sym, 9)
        for d in range(days):
            write_klines(tmp_path, "usdt_perp", "5m", sym, _day(10 * i + d, d))
    paths = [
        str(tmp_path / PartitionKey.for_candle("klines", "usdt_perp", "5m", s, T0_MS).path) for s in syms
    ]
    pl.read_parquet(paths[1]).write_parquet(paths[1])  # another writer's file
    cut = T0_MS + 8 * 86_400_000 - 55 * 60_000
    got = planning.read_since_coded(lfs, paths, cut)
    since = pl.col("candle_begin_time") >= pl.lit(cut).cast(pl.Datetime("ms", "UTC"))
    want = planning.scan_coded(lfs, paths, list(range(len(paths)))).filter(since).collect()
    assert got.schema == want.schema
    assert got.equals(want)  # in file order, another writer's file (read by Polars) too
    assert set(got["_sym"].unique().to_list()) == {0, 1, 4}
    served = [plain_read.read_since(p, cut, planning._NUMERIC) is not None for p in paths]
    assert served == [True, False, True, True, True]  # by pages, except another writer's file


def test_off_grid_history_builds_and_appends(tmp_path: Path) -> None:
    """A day with a run of candles opening 14.789 s off the grid (Binance's 2018 spot quirk) builds,
    by the seed's rule (checked against the seed's pandas code), and later days append to it."""
    i = pl.int_range(pl.len())
    odd = _day(1, 0).with_columns(
        pl.when((i >= 30) & (i < 100)).then(pl.col("candle_begin_time") + dt.timedelta(milliseconds=14_789))
        .otherwise(pl.col("candle_begin_time"))
    )  # fmt: skip
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", odd)
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(2, 0))
    build_offsets(tmp_path, "usdt_perp", "1h")
    _assert_table(tmp_path, ["BTCUSDT", "ETHUSDT"])
    stored = _stored(tmp_path).filter(pl.col("symbol") == "BTCUSDT")
    base = scan_klines(tmp_path, "usdt_perp", "5m", ["BTCUSDT"]).collect().drop("symbol")
    for k in range(12):
        mine = stored.filter(pl.col("offset") == f"{5 * k}m")
        assert_bins_equal(mine, seed_resample(base, 3_600_000, B, k))
    assert (stored["candle_begin_time"].dt.millisecond() == 789).any()  # bins opening off the grid
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", _day(3, 1))
    build_offsets(tmp_path, "usdt_perp", "1h")
    _assert_table(tmp_path, ["BTCUSDT", "ETHUSDT"])


@pytest.mark.parametrize("shift", [1, 60_000, 254_789, B - 1, B, 2 * B])
def test_a_candle_appended_inside_a_day_off_the_grid(tmp_path: Path, shift: int) -> None:
    """A candle opening less than B after the day's last one (off the grid): planning started the
    change at the last candle + B, so the bins opening from last + B − T on, and the bin before
    them that holds the new candle kept its old values for good (review, 2026-11-23)."""
    day = _day(1, 0, hole_rate=0.0)
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", day.head(115))  # to 09:30
    build_offsets(tmp_path, "usdt_perp", "1h")
    last = day["candle_begin_time"][114]
    new = day.slice(115, 1).with_columns(
        pl.lit(last + dt.timedelta(milliseconds=shift)).alias("candle_begin_time")
    )
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", new)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    _assert_table(tmp_path, ["BTCUSDT"])
    assert (r.tail_bins > 0) == (shift % B == 0)  # on the grid an append is still a tail run
    assert build_offsets(tmp_path, "usdt_perp", "1h").written == 0


def test_overwrite_and_delete_in_the_middle(tmp_path: Path) -> None:
    for d in range(3):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    # day 1 replaced by data with many holes: some bins disappear, others change
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(7, 1, hole_rate=0.0))
    assert _edit_day(tmp_path, "ETHUSDT", 1, pl.col("candle_begin_time").dt.hour() % 3 != 0)
    build_offsets(tmp_path, "usdt_perp", "1h")
    _assert_table(tmp_path, ["ETHUSDT"])
    # the whole last day goes: its bins go with it
    assert _edit_day(tmp_path, "ETHUSDT", 2, None)
    build_offsets(tmp_path, "usdt_perp", "1h")
    _assert_table(tmp_path, ["ETHUSDT"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["write", "holes", "delete"]), st.integers(0, 5), st.integers(0, 2**16)),
        min_size=1,
        max_size=4,
    ),
    interval=st.sampled_from(["1h", "15m", "2h"]),
)
def test_incremental_equals_rebuild(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int]], interval: str
) -> None:
    root = tmp_path_factory.mktemp("lake")
    syms = ["AUSDT", "BUSDT"]
    for i, s in enumerate(syms):
        for d in (0, 2):
            write_klines(root, "usdt_perp", "5m", s, _day(i * 100 + d, d))
    build_offsets(root, "usdt_perp", interval)
    for op, day, seed in steps:
        sym = syms[seed % 2]
        if op == "write":
            write_klines(root, "usdt_perp", "5m", sym, _day(seed, day, hole_rate=0.02))
        elif op == "holes":
            _edit_day(root, sym, day, pl.int_range(pl.len()) % 7 != seed % 7)
        elif op == "delete":
            _edit_day(root, sym, day, None)
        build_offsets(root, "usdt_perp", interval)
    _assert_table(root, syms, interval)


def test_a_tail_run_over_two_changed_months(tmp_path: Path) -> None:
    """One run sees a candle of Jan 31 edited and Feb 5 appended, inside a tail that spans the month
    boundary. February's file is read from its own first changed day on, which is after the run's
    first bin: those rows must be read again, not taken as all there is (the bins of Feb 1-4 were
    lost, and stayed lost, found by review)."""
    for d in range(29):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d, hole_rate=0.0))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(29, 29, hole_rate=0.0))
    assert build_offsets(tmp_path, "usdt_perp", "1h").tail_bins > 0  # Jan 30 starts the tail
    for d in range(30, 35):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d, hole_rate=0.0))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(
        tmp_path,
        "usdt_perp",
        "5m",
        "ETHUSDT",
        _day(30, 30, hole_rate=0.0).slice(5, 1).with_columns(pl.col("close") * 1.01),
    )
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(35, 35, hole_rate=0.0))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.base_partitions_changed == 2 and r.tail_bins > 0
    _assert_table(tmp_path, ["ETHUSDT"])
    assert build_offsets(tmp_path, "usdt_perp", "1h").symbols_updated == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["day", "candle", "part", "outside"]),
                st.integers(27, 35),
                st.integers(0, 2**16),
            ),
            min_size=1,
            max_size=3,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_changes_across_a_month_boundary_equal_a_rebuild(
    tmp_path_factory: pytest.TempPathFactory, runs: list[list[tuple[str, int, int]]]
) -> None:
    """Several changes to the January and February files of a series between two runs (whole days,
    single candles, parts of a day, an edit by another tool that leaves no day fingerprints): after
    every run the offsets equal a rebuild."""
    root = tmp_path_factory.mktemp("lake")
    for d in range(26, 29):
        write_klines(root, "usdt_perp", "5m", "AUSDT", _day(d, d, hole_rate=0.0))
    build_offsets(root, "usdt_perp", "1h")
    for d in range(29, 33):  # Jan 30 to Feb 2: a tail over the month boundary
        write_klines(root, "usdt_perp", "5m", "AUSDT", _day(d, d, hole_rate=0.0))
    build_offsets(root, "usdt_perp", "1h")
    for changes in runs:
        for op, day, seed in changes:
            rows = _day(seed, day, hole_rate=0.0)
            if op == "day":
                write_klines(root, "usdt_perp", "5m", "AUSDT", rows)
            elif op == "candle":
                write_klines(root, "usdt_perp", "5m", "AUSDT", rows.slice(seed % DAY, 1))
            elif op == "part":
                write_klines(root, "usdt_perp", "5m", "AUSDT", rows.slice(0, 1 + seed % DAY))
            else:
                _edit_day(root, "AUSDT", day, pl.int_range(pl.len()) % 5 != seed % 5)
        build_offsets(root, "usdt_perp", "1h")
        _assert_table(root, ["AUSDT"])


@pytest.mark.parametrize("footer", [True, False])
def test_a_write_between_planning_and_reading_is_found_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, footer: bool
) -> None:
    """Another writer edits day 1 after planning saw only day 4 change and before the run reads the
    month: the run recomputes around day 4 only, so the manifest must not take day 1 as seen (it
    did, from the rows the run read, and day 1's bins stayed stale for good; found by review)."""
    for d in range(6):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d, hole_rate=0.0))
    build_offsets(tmp_path, "usdt_perp", "1h")
    day4 = _day(4, 4, hole_rate=0.0).slice(7, 1).with_columns(pl.col("close") * 1.5)
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", day4)
    planned = build_mod.plan_all

    def racing(*a: object, **k: object) -> object:
        out = list(planned(*a, **k))  # type: ignore[arg-type]
        day1 = _day(1, 1, hole_rate=0.0).slice(40, 1).with_columns(pl.col("close") * 3)
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", day1)
        if not footer:
            part = tmp_path / PartitionKey.for_candle("klines", "usdt_perp", "5m", "ETHUSDT", T0_MS).path
            pl.read_parquet(part).write_parquet(part)
        yield from out

    monkeypatch.setattr(build_mod, "plan_all", racing)
    build_offsets(tmp_path, "usdt_perp", "1h")
    monkeypatch.setattr(build_mod, "plan_all", planned)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.symbols_updated == 1 and r.bins > 0
    _assert_table(tmp_path, ["ETHUSDT"])


def test_a_new_month_reads_the_last_hour_of_the_one_before_only(tmp_path: Path) -> None:
    """The first day of a month appended: planning reads the new month's file, the run adds the
    previous month's last 55 minutes (page by page, or by Polars for another writer's file): 11 +
    288 candles a series, and the offsets equal a rebuild."""
    syms = ["AUSDT", "BUSDT", "CUSDT"]
    for i, sym in enumerate(syms):
        for d in range(27, 31):  # January 28 to 31
            write_klines(tmp_path, "usdt_perp", "5m", sym, _day(10 * i + d, d, hole_rate=0.0))
    jan = tmp_path / PartitionKey.for_candle("klines", "usdt_perp", "5m", "BUSDT", T0_MS).path
    pl.read_parquet(jan).write_parquet(jan)  # another writer's file
    build_offsets(tmp_path, "usdt_perp", "1h")
    for i, sym in enumerate(syms):
        write_klines(tmp_path, "usdt_perp", "5m", sym, _day(10 * i + 31, 31, hole_rate=0.0))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.base_partitions_changed == 3 and r.written == 1
    assert r.base_rows_read == 3 * (11 + DAY)
    _assert_table(tmp_path, syms)


def test_tail_runs_of_a_new_month_are_batched_by_the_rows_they_read() -> None:
    """A new month's first day: each series reads its new day (planning's rows) and the last 55
    minutes of the month before, so 300 of them are one batch, not a month each (two batches)."""
    plan = offset_plan("1h", "5m", "all")
    lo = T0_MS + 31 * DAY * B - 11 * B  # February 1st less 55 minutes
    rows = planning._Rows(pl.DataFrame(), np.zeros(0, np.int64), planning._Hashes(), 0, DAY)
    items = []
    for i in range(300):
        w = planning.Work(f"S{i:03d}USDT", {}, ["2024-01-01", "2024-02-01"], lo, None, 1, tail=True)
        w.cached = {"2024-02-01": rows}
        items.append(w)
    assert [len(b) for b in build_mod._batches(items, 2_000_000, plan)] == [300]


@pytest.mark.parametrize("cached_s", [float("inf"), 0.0])
def test_footers_read_by_threads_equal_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached_s: float
) -> None:
    """Above 64 files, footers are read in turn while they come from the page cache, else by a few
    threads (a cold page cache costs a wait per file; ``cached_s`` 0 makes every footer look cold);
    the answers are the same, in order: fingerprints, or None for a file of another writer or a
    missing file. (``cached_s`` infinite: every footer looks cached.)"""
    monkeypatch.setattr(planning, "_CACHED_FOOTER_S", cached_s)
    lfs = LakeFS(str(tmp_path))
    urls = []
    for i in range(70):
        sym = f"S{i:03d}USDT"
        write_klines(
            tmp_path, "usdt_perp", "5m", sym, pl.concat([_day(i, 0), _day(i + 1, 1), _day(i + 2, 2)])
        )
        urls.append(lfs.url(PartitionKey.for_candle("klines", "usdt_perp", "5m", sym, T0_MS).path))
    for u in urls[10:15]:
        pl.read_parquet(u).write_parquet(u)  # another writer: no fingerprints
    urls.append(str(tmp_path / "missing.parquet"))
    one_by_one = [planning._footer(lfs, u) for u in urls]
    assert sum(p is None for p in one_by_one) == 6
    assert planning.read_footers(lfs, urls, 4) == one_by_one
    got = planning.base_footers(
        lfs, "usdt_perp", B5M, [("S000USDT", ["2024-01-01"]), ("S010USDT", ["2024-01-01"])], 4
    )
    assert got == [{"2024-01-01": one_by_one[0]}, None]


def test_subset_of_offsets_and_symbols_then_more(tmp_path: Path) -> None:
    for s in ("AUSDT", "BUSDT"):
        write_klines(tmp_path, "usdt_perp", "5m", s, _day(len(s), 0))
    r = build_offsets(tmp_path, "usdt_perp", "1h", offsets="0m,15m", symbols="AUSDT")
    assert r.offsets == ("0m", "15m") and r.symbols == 1
    got = _stored(tmp_path)
    assert set(got["offset"]) == {"0m", "15m"} and set(got["symbol"]) == {"AUSDT"}
    # asking for another offset later keeps the earlier ones maintained
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(5, 1))
    build_offsets(tmp_path, "usdt_perp", "1h", offsets="30m", symbols="AUSDT")
    got = _stored(tmp_path)
    assert set(got["offset"]) == {"0m", "15m", "30m"}
    want = _expected(tmp_path, ["AUSDT"], offsets="0m,15m,30m")
    assert_bins_equal(got, want)


def test_method_or_base_change_needs_rebuild(tmp_path: Path) -> None:
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(1, 0))
    write_klines(tmp_path, "usdt_perp", "15m", "AUSDT", random_candles(1, 900_000, 96))
    build_offsets(tmp_path, "usdt_perp", "1h", base="5m")
    with pytest.raises(ValidationError, match="rebuild"):
        build_offsets(tmp_path, "usdt_perp", "1h", method="binance")
    r = build_offsets(tmp_path, "usdt_perp", "1h", base="15m", rebuild=True)
    assert r.offsets == ("0m", "15m", "30m", "45m")
    assert set(_stored(tmp_path)["offset"]) == {"0m", "15m", "30m", "45m"}
    # without --base the series' own base is reused
    assert build_offsets(tmp_path, "usdt_perp", "1h").base == "15m"


def test_default_base_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no stored usdt_perp klines"):
        build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(1, 0))
    write_klines(tmp_path, "usdt_perp", "1m", "AUSDT", random_candles(1, 60_000, 120))
    assert build_offsets(tmp_path, "usdt_perp", "1h").base == "5m"
    with pytest.raises(ValidationError, match="whole multiple"):
        build_offsets(tmp_path, "usdt_perp", "1h", base="1h")


def test_bad_combinations_fail_before_the_lock(tmp_path: Path) -> None:
    """A 1M target or base, or a base that does not divide the target, is refused before the table
    lock is taken: nothing, not even a lock file, is created."""
    for interval, base in (("1M", None), ("1M", "1d"), ("1h", "1M"), ("1h", "1h")):
        with pytest.raises(ValidationError):
            build_offsets(tmp_path / "lake", "usdt_perp", interval, base=base)
    assert not (tmp_path / "lake").exists()


def test_partition_paths_validate() -> None:
    p = OffsetPartition("usdt_perp", "1h", "15m", "BTCUSDT", dt.date(2024, 1, 1))
    assert (
        p.path
        == "offsets/trade_type=usdt_perp/interval=1h/offset=15m/symbol=BTCUSDT/date=2024-01-01/data.parquet"
    )
    assert OffsetPartition("usdt_perp", "15m", "5m", "BTCUSDT", dt.date(2024, 3, 1)).end_ms - p.start_ms > 0
    for bad in [
        ("usdt_perp", "1h", "15m", "../X", dt.date(2024, 1, 1)),
        ("usdt_perp", "1h", "015m", "BTCUSDT", dt.date(2024, 1, 1)),
        ("usdt_perp", "1h", "15m", "BTCUSDT", dt.date(2024, 2, 1)),  # 1h files are yearly
        ("nope", "1h", "15m", "BTCUSDT", dt.date(2024, 1, 1)),
    ]:
        with pytest.raises(ValidationError):
            OffsetPartition(*bad)


def test_scan_offsets_filters(tmp_path: Path) -> None:
    for s in ("AUSDT", "BUSDT"):
        write_klines(tmp_path, "usdt_perp", "5m", s, _day(len(s), 0, hole_rate=0.0))
    build_offsets(tmp_path, "usdt_perp", "1h")
    t = dt.datetime(2024, 1, 1, 6, tzinfo=dt.UTC)
    got = scan_offsets(
        tmp_path, "usdt_perp", "1h", ["0m", "30m"], "BUSDT", start=t, end=t + dt.timedelta(hours=2)
    )
    rows = got.select("symbol", "offset", "candle_begin_time").collect().sort("offset", "candle_begin_time")
    assert rows.rows() == [
        ("BUSDT", "0m", t),
        ("BUSDT", "0m", t + dt.timedelta(hours=1)),
        ("BUSDT", "30m", t + dt.timedelta(minutes=30)),
        ("BUSDT", "30m", t + dt.timedelta(minutes=90)),
    ]
    assert scan_offsets(tmp_path, "usdt_perp", "4h").collect().height == 0
    with pytest.raises(ValidationError, match="naive"):
        scan_offsets(tmp_path, "usdt_perp", "1h", start=dt.datetime(2024, 1, 1))
    # ISO strings and dates are UTC bounds, like the CLI's; an offset the table lacks is an error
    # naming those it has (it used to be an empty frame, which reads as missing data).
    same = scan_offsets(
        tmp_path, "usdt_perp", "1h", ["0m", "30m"], "BUSDT", start="2024-01-01T06:00", end="2024-01-01 08:00"
    )
    assert same.select(rows.columns).collect().sort("offset", "candle_begin_time").equals(rows)
    whole = scan_offsets(
        tmp_path, "usdt_perp", "1h", "0m", start=dt.date(2024, 1, 1), end="2024-01-02"
    ).collect()
    assert whole.height == scan_offsets(tmp_path, "usdt_perp", "1h", "0m").collect().height > 0
    with pytest.raises(
        NotFoundError, match=r"7m not in the usdt_perp 1h offsets table; it holds 0m, 5m, 10m"
    ):
        scan_offsets(tmp_path, "usdt_perp", "1h", ["0m", "7m"])
    with pytest.raises(ValidationError, match="invalid start"):
        scan_offsets(tmp_path, "usdt_perp", "1h", start="yesterday")
    with pytest.raises(NotFoundError, match="no usdt_perp 4h offsets in the lake yet"):
        scan_offsets(tmp_path, "usdt_perp", "4h", offsets=["0m"])
    # an offset asked under another name of the same duration is the stored one, as the CLI's
    # --offsets takes it (0h, 0s: the table's 0m; 1h0m30s would be 1h30s, which it lacks)
    alias = scan_offsets(
        tmp_path, "usdt_perp", "1h", ["0h", "30m"], "BUSDT", start="2024-01-01T06:00", end="2024-01-01 08:00"
    )
    assert alias.select(rows.columns).collect().sort("offset", "candle_begin_time").equals(rows)
    with pytest.raises(NotFoundError, match=r"0h0m30s not in the usdt_perp 1h offsets table"):
        scan_offsets(tmp_path, "usdt_perp", "1h", ["0h0m30s"])


def _tail_bins(root: Path, interval: str = "1h") -> pl.DataFrame:
    lfs = LakeFS(root)
    return load_state(lfs, "usdt_perp", interval).read_bins(lfs)


def _tail_files(root: Path, interval: str = "1h") -> list[str]:
    return list_files(LakeFS(root), "usdt_perp", interval)


def test_appended_days_go_to_the_tail_then_fold(tmp_path: Path) -> None:
    for d in range(3):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    year = "offsets/trade_type=usdt_perp/interval=1h/offset=15m/symbol=ETHUSDT/date=2024-01-01"
    data = _files(tmp_path)[f"{year}/data.parquet"]
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(3, 3))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    # an appended day: one tail file with every offset's new bins, the yearly files untouched
    assert r.written == 1 and len(_tail_files(tmp_path)) == 1 and r.tail_bins == r.bins > 0
    assert _files(tmp_path)[f"{year}/data.parquet"] == data
    tail = _tail_bins(tmp_path)
    assert tail["candle_begin_time"].min() >= dt.datetime(2024, 1, 3, 23, 5, tzinfo=dt.UTC)
    assert set(tail["offset"]) == {f"{5 * i}m" for i in range(12)}
    _assert_table(tmp_path, ["ETHUSDT"])
    # more days: one more tail file each (merged with the newest ones no larger), the yearly files stay
    for d in range(4, 8):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d))
        assert build_offsets(tmp_path, "usdt_perp", "1h").written == 1
        _assert_table(tmp_path, ["ETHUSDT"])
    assert _files(tmp_path)[f"{year}/data.parquet"] == data
    assert _tail_bins(tmp_path)["candle_begin_time"].min() >= dt.datetime(2024, 1, 3, 23, 5, tzinfo=dt.UTC)
    # a change before the tail folds the tail into the yearly files
    assert _edit_day(tmp_path, "ETHUSDT", 1, pl.int_range(pl.len()) % 5 != 0)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.folded == 1 and _tail_bins(tmp_path).height == 0
    assert _files(tmp_path)[f"{year}/data.parquet"] != data
    _assert_table(tmp_path, ["ETHUSDT"])
    assert build_offsets(tmp_path, "usdt_perp", "1h").written == 0
    # the tail files, hidden now, go once nobody can still be reading them: retired in place (zero
    # rows, the same names: a query that listed them opens them later), then a second build
    # takes nothing more out
    names = _tail_files(tmp_path)
    assert build_offsets(tmp_path, "usdt_perp", "1h", tail_grace_s=0).removed == len(names) > 0
    assert _tail_files(tmp_path) == names
    st = load_state(LakeFS(tmp_path), "usdt_perp", "1h")
    assert st.bins == [0] * len(names) and st.metas == [[]] * len(names)
    assert all(pl.read_parquet(tmp_path / st.path(i)).height == 0 for i in range(len(names)))
    assert build_offsets(tmp_path, "usdt_perp", "1h", tail_grace_s=0).removed == 0
    _assert_table(tmp_path, ["ETHUSDT"])


def test_tail_folds_when_it_grows_past_its_limit(tmp_path: Path) -> None:
    # 15m files are monthly and their tail reaches at most 8 days
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(0, 0))
    build_offsets(tmp_path, "usdt_perp", "15m")
    seen_tail = folds = 0
    for d in range(1, 12):
        write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", _day(d, d, hole_rate=0.05))
        folds += build_offsets(tmp_path, "usdt_perp", "15m").folded
        tail = _tail_bins(tmp_path, "15m")
        seen_tail |= tail.height > 0
        if tail.height:  # never more than 8 days from the tail start to the end of the data
            assert tail["candle_begin_time"].min() >= dt.datetime(
                2024, 1, d + 2, tzinfo=dt.UTC
            ) - dt.timedelta(days=8)
        _assert_table(tmp_path, ["ETHUSDT"], "15m")
    assert seen_tail and folds == 1


def test_tail_across_a_year_boundary_rebuild_and_views(tmp_path: Path) -> None:
    from lake.query import connect

    start = int(dt.datetime(2024, 12, 30, tzinfo=dt.UTC).timestamp() * 1000)
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(1, B, DAY, start_ms=start))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(
        tmp_path, "usdt_perp", "5m", "BTCUSDT", random_candles(2, B, 2 * DAY, start_ms=start + DAY * B)
    )
    build_offsets(tmp_path, "usdt_perp", "1h")
    assert set(_tail_bins(tmp_path)["candle_begin_time"].dt.year()) == {2024, 2025}
    _assert_table(tmp_path, ["BTCUSDT"])
    got = connect(tmp_path).sql('SELECT symbol, "offset", candle_begin_time, close FROM offsets').pl()
    want = _stored(tmp_path).select("symbol", "offset", "candle_begin_time", "close")
    assert got.sort(want.columns).rows() == want.sort(want.columns).rows()
    # a rebuild with another method recomputes everything into the period files
    build_offsets(tmp_path, "usdt_perp", "1h", method="binance", rebuild=True)
    assert _tail_bins(tmp_path).height == 0
    assert (
        tmp_path / "offsets/trade_type=usdt_perp/interval=1h/offset=0m/symbol=BTCUSDT/date=2025-01-01"
    ).exists()
    base = scan_klines(tmp_path, "usdt_perp", "5m", ["BTCUSDT"]).collect()
    want_b = resample_offsets(base, offset_plan("1h", "5m", method="binance"))
    assert_bins_equal(_stored(tmp_path), want_b.sort("symbol", "offset", "candle_begin_time"))
