"""The offsets tail: its visibility rule against a replay of the files, in Polars and DuckDB; builds
with the tail equal a full rebuild before and after folds; reruns, corrupt files, older lakes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.errors import DataError
from lake.query import connect
from lake.store.fs import LakeFS
from lake.store.klines import write_klines
from lake.transform.build import build_offsets, scan_offsets
from lake.transform.layout import manifest_path
from lake.transform.manifest import unpack_days
from lake.transform.tail import (
    Layer,
    cleanup,
    encode,
    list_files,
    load_state,
    merge,
    new_name,
    tail_dir,
    write_layer,
)
from tests.transform.helpers import T0_MS, assert_bins_equal
from tests.transform.test_build import _day, _edit_day, _expected

HOUR = 3_600_000
SYMS = ["AUSDT", "BUSDT", "CUSDT"]
KEY = ["symbol", "offset", "candle_begin_time"]


# -- the visibility rule ------------------------------------------------------------------------

_files_strategy = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(SYMS),
            st.booleans(),  # a fold marker
            st.one_of(st.none(), st.integers(0, 20)),  # a layer from this hour
            st.sets(st.tuples(st.sampled_from(["0m", "30m"]), st.integers(0, 30)), max_size=8),
        ),
        max_size=3,
    ),
    min_size=1,
    max_size=7,
)


def _layer(spec: list[tuple[str, bool, int | None, set[tuple[str, int]]]], version: int) -> Layer:
    """A tail layer from a spec; every bin's prices are the layer's ``version``, to tell them apart."""
    cover: dict[str, int] = {}
    marked: set[str] = set()
    rows: list[tuple[str, str, int]] = []
    for sym, mark, start, bins in spec:
        if mark:
            marked.add(sym)
        if start is None or sym in cover:
            continue
        cover[sym] = T0_MS + start * HOUR
        rows += [(sym, off, T0_MS + h * HOUR) for off, h in sorted(bins) if h >= start]  # from its start on
    df = pl.DataFrame(rows, schema={"symbol": pl.String, "offset": pl.String, "t": pl.Int64}, orient="row")
    v = float(version)
    bins = df.select(
        "symbol",
        "offset",
        pl.col("t").cast(pl.Datetime("ms", "UTC")).alias("candle_begin_time"),
        *(pl.lit(v).alias(c) for c in ("open", "high", "low", "close", "volume", "quote_volume")),
        pl.lit(1, pl.Int64).alias("trade_num"),
        *(pl.lit(v).alias(c) for c in ("taker_buy_base_asset_volume", "taker_buy_quote_asset_volume")),
        pl.lit(12, pl.Int64).alias("n_base"),
    )
    return Layer(cover, marked, bins)


def _replay(layers: list[Layer]) -> set[tuple[str, str, int, float]]:
    """The rule by its definition: files in order; a marker empties a symbol's tail, a layer replaces
    the symbol's bins from its start on."""
    state: dict[str, dict[tuple[str, int], float]] = {}
    for layer in layers:
        for s in layer.marked:
            state[s] = {}
        for s, start in layer.cover.items():
            kept = {k: v for k, v in state.get(s, {}).items() if k[1] < start}
            rows = layer.bins.filter(pl.col("symbol") == s)
            for off, t, close in zip(
                rows["offset"], rows["candle_begin_time"].dt.epoch("ms"), rows["close"], strict=True
            ):
                kept[(off, t)] = close
            state[s] = kept
    return {(s, off, t, v) for s, bins in state.items() for (off, t), v in bins.items()}


def _as_set(df: pl.DataFrame) -> set[tuple[str, str, int, float]]:
    rows = df.select("symbol", "offset", pl.col("candle_begin_time").dt.epoch("ms"), "close").rows()
    assert len(rows) == len(set(rows)), "a bin visible twice"
    return set(rows)


def _duckdb_tail(root: Path) -> pl.DataFrame:
    con = connect(root)
    try:
        return con.sql('SELECT symbol, "offset", candle_begin_time, close FROM offsets_tail').pl()
    finally:
        con.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=_files_strategy, last=_files_strategy)
def test_visible_tail_is_the_replay_in_polars_and_duckdb(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[list[tuple[str, bool, int | None, set[tuple[str, int]]]]],
    last: list[list[tuple[str, bool, int | None, set[tuple[str, int]]]]],
) -> None:
    root = tmp_path_factory.mktemp("tail")
    lfs = LakeFS(root)
    directory = tail_dir("usdt_perp", "1h")
    layers = [layer for layer in (_layer(spec, i) for i, spec in enumerate(files)) if layer]
    names: list[str] = []
    for layer in layers:
        names.append(new_name(names))
        lfs.write_atomic(f"{directory}/{names[-1]}", encode(layer))

    def check(want: set[tuple[str, str, int, float]]) -> None:
        assert _as_set(load_state(lfs, "usdt_perp", "1h").read_bins(lfs)) == want
        if list_files(lfs, "usdt_perp", "1h"):
            assert _as_set(_duckdb_tail(root)) == want

    check(_replay(layers))
    state = load_state(lfs, "usdt_perp", "1h")
    for s in SYMS:  # a tail start: the earliest start of a layer after the symbol's last marker
        starts: list[int] = []
        for layer in layers:
            starts = [] if s in layer.marked else starts
            starts += [layer.cover[s]] if s in layer.cover else []
        assert state.starts.get(s) == (min(starts) if starts else None)
    if layers:  # all files merged into one: the same bins
        merged = layers[0]
        for layer in layers[1:]:
            merged = merge(merged, layer)
        assert _replay([merged]) == _replay(layers)
    # a new layer merged with the newest files no larger than it, then hidden files deleted
    new = _layer([x for spec in last for x in spec], len(files))
    if new:
        write_layer(lfs, state, new)
        check(_replay([*layers, new]))
        cleanup(lfs, load_state(lfs, "usdt_perp", "1h"), grace_s=0)
        check(_replay([*layers, new]))
        after = load_state(lfs, "usdt_perp", "1h")  # what is hidden was retired in place: no rows
        assert all(
            h is None or (not m and not b)
            for h, m, b in zip(after.hidden, after.metas, after.bins, strict=True)
        )


def test_hidden_files_stay_for_the_grace_time(tmp_path: Path) -> None:
    lfs = LakeFS(tmp_path)
    directory = tail_dir("usdt_perp", "1h")
    old, new = _layer([("AUSDT", False, 0, {("0m", 1)})], 0), _layer([("AUSDT", False, 0, {("0m", 2)})], 1)
    first = new_name([])
    lfs.write_atomic(f"{directory}/{first}", encode(old))
    lfs.write_atomic(f"{directory}/{new_name([first])}", encode(new))
    state = load_state(lfs, "usdt_perp", "1h")
    assert state.hidden[0] is not None and state.hidden[1] is None
    assert cleanup(lfs, state, grace_s=60) == 0 and len(list_files(lfs, "usdt_perp", "1h")) == 2
    assert cleanup(lfs, state, grace_s=60, now_ns=state.hidden[0] + 61 * 10**9) == 1
    assert _as_set(load_state(lfs, "usdt_perp", "1h").read_bins(lfs)) == {
        ("AUSDT", "0m", T0_MS + 2 * HOUR, 1.0)
    }


# -- builds with the tail equal a rebuild --------------------------------------------------------


def _truth(root: Path, interval: str) -> pl.DataFrame:
    return _expected(root, ["AUSDT", "BUSDT"], interval)


def _check(root: Path, interval: str) -> None:
    want = _truth(root, interval)
    got = scan_offsets(root, "usdt_perp", interval).collect().sort(KEY)
    assert got.select("symbol", "offset").rows() == want.select("symbol", "offset").rows()
    assert_bins_equal(got, want)
    con = connect(root)
    try:
        view = con.sql(
            'SELECT * EXCLUDE (trade_type, "interval") FROM offsets WHERE "interval" = ? ORDER BY ALL',
            params=[interval],
        ).pl()
    finally:
        con.close()
    view = view.with_columns(
        pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    ).sort(KEY)
    assert view.select("symbol", "offset").rows() == want.select("symbol", "offset").rows()
    assert_bins_equal(view, want)


_step = st.tuples(
    st.sampled_from(
        [
            "append",
            "append",
            "append_half",
            "rewrite_tail",
            "holes",
            "delete_day",
            "delete_last",
            "fold",
            "grace0",
        ]
    ),
    st.integers(0, 2**16),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_step, min_size=1, max_size=7), interval=st.sampled_from(["1h", "15m", "2h"]))
def test_builds_with_the_tail_equal_a_rebuild(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]], interval: str
) -> None:
    root = tmp_path_factory.mktemp("lake")
    days = {"AUSDT": 3, "BUSDT": 2}  # days stored so far
    for i, (s, n) in enumerate(days.items()):
        for d in range(n):
            write_klines(root, "usdt_perp", "5m", s, _day(i * 100 + d, d))
    build_offsets(root, "usdt_perp", interval)
    _check(root, interval)
    for op, seed in steps:
        sym = ["AUSDT", "BUSDT"][seed % 2]
        grace = 120.0
        if op == "append":  # the next day (a tail run)
            write_klines(root, "usdt_perp", "5m", sym, _day(seed, days[sym], hole_rate=0.02))
            days[sym] += 1
        elif op == "append_half":  # the next day's first half, then (as a live feed) its next hours
            new = _day(seed, days[sym], hole_rate=0.02)
            write_klines(root, "usdt_perp", "5m", sym, new.slice(0, new.height // 2))
            build_offsets(root, "usdt_perp", interval)
            _check(root, interval)
            write_klines(root, "usdt_perp", "5m", sym, new.slice(new.height // 2, seed % 50))
            days[sym] += 1
        elif op == "rewrite_tail":  # the last day again, other values (inside the tail)
            write_klines(root, "usdt_perp", "5m", sym, _day(seed, days[sym] - 1, hole_rate=0.05))
        elif op == "holes":  # holes punched into any day: before the tail, a fold
            _edit_day(root, sym, seed % days[sym], pl.int_range(pl.len()) % 7 != seed % 7)
        elif op == "delete_day":
            _edit_day(root, sym, seed % days[sym], None)
        elif op == "delete_last" and days[sym] > 1:
            _edit_day(root, sym, days[sym] - 1, None)
            days[sym] -= 1
        grace = 0.0 if op == "grace0" else grace
        r = build_offsets(root, "usdt_perp", interval, fold=op == "fold", tail_grace_s=grace)
        if op == "fold":
            assert load_state(LakeFS(root), "usdt_perp", interval).starts == {}
        _check(root, interval)
        again = build_offsets(root, "usdt_perp", interval, tail_grace_s=grace)
        assert (again.written, again.bins) == (0, 0), (op, r)


def test_rerun_writes_nothing_and_a_connection_sees_later_tails(tmp_path: Path) -> None:
    for d in range(3):
        write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    con = connect(tmp_path)  # before any tail file: the tail directory exists already
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(3, 3))
    assert build_offsets(tmp_path, "usdt_perp", "1h").written == 1
    before = _snapshot(tmp_path)
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert (r.written, r.removed, r.bins, r.symbols_updated) == (0, 0, 0, 0)
    assert _snapshot(tmp_path) == before
    q = 'SELECT "offset", candle_begin_time, close FROM offsets ORDER BY ALL'
    want = (
        _expected(tmp_path, ["AUSDT"])
        .select("offset", "candle_begin_time", "close")
        .sort("offset", "candle_begin_time")
    )
    assert con.sql(q).pl().rows() == want.rows()
    con.close()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, names in os.walk(root):
        if "/.locks" in dirpath:
            continue
        for n in names:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.stat().st_size)
    return out


def test_a_deleted_partition_before_the_tail_folds_it(tmp_path: Path) -> None:
    # January and February of 5m: two monthly base partitions, the tail in February
    for d in range(29, 33):
        write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(40, 33))
    build_offsets(tmp_path, "usdt_perp", "1h")
    assert load_state(LakeFS(tmp_path), "usdt_perp", "1h").starts
    shutil.rmtree(tmp_path / "klines/trade_type=usdt_perp/interval=5m/symbol=AUSDT/date=2024-01-01")
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.folded == 1 and load_state(LakeFS(tmp_path), "usdt_perp", "1h").starts == {}
    got = scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY)
    assert got["candle_begin_time"].min() >= dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
    assert_bins_equal(got, _expected(tmp_path, ["AUSDT"]))


def test_a_corrupt_tail_file_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    for d in range(3):
        write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(3, 3))
    build_offsets(tmp_path, "usdt_perp", "1h")
    (name,) = list_files(LakeFS(tmp_path), "usdt_perp", "1h")
    path = tmp_path / tail_dir("usdt_perp", "1h") / name
    path.write_bytes(path.read_bytes()[:100] + b"garbage" * 50)
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(4, 4))  # work to do
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=f"unreadable offsets tail file .*{name}.*nothing was changed"):
        build_offsets(tmp_path, "usdt_perp", "1h")
    assert _snapshot(tmp_path) == before
    with pytest.raises(DataError, match=name):
        scan_offsets(tmp_path, "usdt_perp", "1h")


def test_an_older_lakes_tail_files_are_read_then_folded(tmp_path: Path) -> None:
    """A lake written before the offsets tail: bins of the last day in a tail.parquet per period
    directory, and a version 2 manifest with the series' tail start."""
    for d in range(4):
        write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(d, d))
    build_offsets(tmp_path, "usdt_perp", "1h")
    cut = dt.datetime(2024, 1, 3, 23, 5, tzinfo=dt.UTC)
    for data in (tmp_path / "offsets").rglob("data.parquet"):
        df = pl.read_parquet(data)
        df.filter(pl.col("candle_begin_time") < cut).write_parquet(data)
        df.filter(pl.col("candle_begin_time") >= cut).write_parquet(data.parent / "tail.parquet")
    mpath = tmp_path / manifest_path("usdt_perp", "1h")
    doc = json.loads(mpath.read_text())
    for entry in doc["series"].values():
        entry["tail_from"] = int(cut.timestamp() * 1000)
        entry["days"] = {  # version 2 kept each day's fingerprint in an object
            part: {
                (dt.date(1970, 1, 1) + dt.timedelta(days=d)).isoformat(): p
                for d, (p, _) in unpack_days(packed).items()
            }
            for part, packed in entry["days"].items()
        }
        entry.pop("legacy_tail_from")
    mpath.write_text(json.dumps({"version": 2, "series": doc["series"]}))
    want = _expected(tmp_path, ["AUSDT"])
    assert_bins_equal(scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY), want)
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(4, 4))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    # the appended day alone is recomputed, into the period files with the old tail files' bins
    assert r.folded == 0 and r.bins <= 11 + 12 * 24 and not list((tmp_path / "offsets").rglob("tail.parquet"))
    assert_bins_equal(
        scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY), _expected(tmp_path, ["AUSDT"])
    )
    assert json.loads(mpath.read_text())["version"] == 3
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(5, 5))
    assert build_offsets(tmp_path, "usdt_perp", "1h").written == 1  # tail runs again


def test_candles_added_inside_a_day_are_a_tail_run(tmp_path: Path) -> None:
    """What `lake live` does every period: a few candles after the last stored one, mid-day."""
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", _day(0, 0))
    day1 = _day(1, 1, hole_rate=0.0)
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", day1.slice(0, 100))
    build_offsets(tmp_path, "usdt_perp", "1h")

    def periods() -> dict[str, tuple[int, int]]:
        return {k: v for k, v in _snapshot(tmp_path).items() if k.startswith("offsets/")}

    before = periods()
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", day1.slice(100, 50))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.written == 1 and r.tail_bins > 0 and periods() == before
    assert_bins_equal(
        scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY), _expected(tmp_path, ["AUSDT"])
    )
    # after a fold (mid-day), the next candles start a new tail at once
    assert build_offsets(tmp_path, "usdt_perp", "1h", fold=True).folded == 1
    before = periods()
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", day1.slice(150, 50))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.written == 1 and r.tail_bins > 0 and periods() == before
    assert_bins_equal(
        scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY), _expected(tmp_path, ["AUSDT"])
    )
    # a changed candle earlier that day, with new ones: not an append, the tail is folded
    edited = day1.slice(10, 1).with_columns(pl.col("close") * 1.5, pl.col("high") * 1.5)
    write_klines(tmp_path, "usdt_perp", "5m", "AUSDT", pl.concat([edited, day1.slice(200, 10)]))
    r = build_offsets(tmp_path, "usdt_perp", "1h")
    assert r.folded == 1 and periods() != before
    assert_bins_equal(
        scan_offsets(tmp_path, "usdt_perp", "1h").collect().sort(KEY), _expected(tmp_path, ["AUSDT"])
    )


def test_hidden_files_are_retired_in_place_and_trimmed_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hidden tail file is not deleted (a query that listed it an instant before would fail with
    "No such file"): it keeps its name and its bytes as a prefix and reads as zero rows in Polars and
    DuckDB. Retired files are deleted in a batch once more than MAX_STUBS pile up."""
    import lake.transform.tail as tail_mod

    monkeypatch.setattr(tail_mod, "MAX_STUBS", 3)
    monkeypatch.setattr(tail_mod, "KEEP_STUBS", 1)
    lfs = LakeFS(tmp_path)
    directory = tail_dir("usdt_perp", "1h")
    names: list[str] = []
    retired: list[str] = []
    for k in range(5):  # each new version of AUSDT's layer hides the previous file
        names.append(new_name(names))
        rel = f"{directory}/{names[-1]}"
        lfs.write_atomic(rel, encode(_layer([("AUSDT", False, 0, {("0m", k + 1)})], k)))
        before = {n: (tmp_path / directory / n).read_bytes() for n in names}
        state = load_state(lfs, "usdt_perp", "1h")
        assert cleanup(lfs, state, grace_s=0) == (1 if k else 0)
        if k:
            retired.append(names[-2])
        left = list_files(lfs, "usdt_perp", "1h")
        if len(retired) > 3:  # the batch: the oldest retired files go, KEEP_STUBS of them stay
            assert left == [retired[-1], names[-1]]
            retired = retired[-1:]
        else:
            assert left == names[-len(retired) - 1 :]
            for n in retired:
                data = (tmp_path / directory / n).read_bytes()
                assert (
                    data.startswith(before[n][:-8]) and pl.read_parquet(tmp_path / directory / n).height == 0
                )
        assert _as_set(load_state(lfs, "usdt_perp", "1h").read_bins(lfs)) == {
            ("AUSDT", "0m", T0_MS + (k + 1) * HOUR, float(k))
        }
        assert _as_set(_duckdb_tail(tmp_path)) == {("AUSDT", "0m", T0_MS + (k + 1) * HOUR, float(k))}
