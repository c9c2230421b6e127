"""The live tail: candles in the tail, in partitions, or in both are read exactly once, the tail's
version winning; compaction moves them without changing what readers see."""

from __future__ import annotations

import datetime as dt
import io
import os
import time

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake.errors import LakeError
from lake.query.connect import connect
from lake.schema import KLINE_COLUMNS
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, write_klines
from lake.store.tail import compact_tail, ensure_tail, read_tail, tail_files, write_tail
from tests.store.conftest import parquet_files

TT, IV = "usdt_perp", "1m"
M = 60_000
T0 = 1_735_689_600_000 - 30 * M  # straddles a day partition boundary (2025-01-01)
KEY = ["symbol", "candle_begin_time"]


def candles(symbol: str, opens: list[int], close: float, source: str = "rest") -> pl.DataFrame:
    n = len(opens)
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "candle_begin_time": pl.Series(opens, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC")),
            "open": [1.0] * n,
            "high": [2.0] * n,
            "low": [0.5] * n,
            "close": [close] * n,
            "volume": [10.0] * n,
            "quote_volume": [15.0] * n,
            "trade_num": [3] * n,
            "taker_buy_base_asset_volume": [5.0] * n,
            "taker_buy_quote_asset_volume": [7.0] * n,
            "source": [source] * n,
        }
    )


def read_all(root: str | LakeFS) -> pl.DataFrame:
    return scan_klines(root, TT, IV).collect().sort(KEY)


def read_view(root: str) -> pl.DataFrame:
    con = connect(root)
    try:
        df = con.sql(
            "SELECT * EXCLUDE (trade_type, interval) FROM klines WHERE trade_type = ? AND interval = ?",
            params=[TT, IV],
        ).pl()
    finally:
        con.close()
    return (
        df.select(["symbol", *KLINE_COLUMNS])
        .with_columns(pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))
        .sort(KEY)
    )


# Where each candle lives: 0 partition only, 1 tail only, 2 both (the tail's close differs),
# 3 two tail files (the later one wins).
placements = st.lists(st.integers(0, 3), min_size=1, max_size=60)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=placements, b=placements)
def test_each_candle_once_tail_wins_before_and_after_compaction(tmp_path_factory, a, b) -> None:
    root = str(tmp_path_factory.mktemp("lake"))
    lfs = LakeFS(root)
    expected = []
    for sym, where in (("AAAUSDT", a), ("BBBUSDT", b)):
        opens = [T0 + i * M for i in range(len(where))]
        part = [t for t, w in zip(opens, where, strict=True) if w in (0, 2)]
        tail1 = [t for t, w in zip(opens, where, strict=True) if w in (1, 2, 3)]
        tail2 = [t for t, w in zip(opens, where, strict=True) if w == 3]
        if part:
            write_klines(lfs, TT, IV, sym, candles(sym, part, 1.0).drop("symbol"))
        if tail1:
            write_tail(lfs, TT, IV, candles(sym, tail1, 2.0, "ws"))
        if tail2:
            write_tail(lfs, TT, IV, candles(sym, tail2, 3.0, "ws"))
        close = {0: 1.0, 1: 2.0, 2: 2.0, 3: 3.0}
        src = {0: "rest", 1: "ws", 2: "ws", 3: "ws"}
        for t, w in zip(opens, where, strict=True):
            expected.append(candles(sym, [t], close[w], src[w]))
    want = pl.concat(expected).sort(KEY)
    assert read_all(root).equals(want)
    assert read_view(root).equals(want)

    res = compact_tail(lfs, TT, IV, grace_s=3600)  # in the partitions and still in the tail
    assert res.rows == want.filter(pl.col("source") == "ws").height and not res.failed
    assert read_all(root).equals(want)
    assert read_view(root).equals(want)
    assert scan_klines(root, TT, IV, tail=False).collect().sort(KEY).equals(want)

    files = tail_files(lfs, TT, IV)
    res = compact_tail(lfs, TT, IV, grace_s=0)  # grace over: the tail files go
    assert res.files_compacted == 0 and res.files_retired == len(files)
    assert tail_files(lfs, TT, IV) == []
    assert read_all(root).equals(want)
    assert read_view(root).equals(want)


def test_tail_contract_local_and_s3(lake_root: str) -> None:
    lfs = LakeFS(lake_root)
    ensure_tail(lfs, TT, IV)
    ensure_tail(lfs, TT, IV)  # idempotent
    write_klines(lfs, TT, IV, "BTCUSDT", candles("BTCUSDT", [T0, T0 + M], 1.0).drop("symbol"))
    write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + M, T0 + 2 * M], 2.0, "ws"))
    want = pl.concat(
        [candles("BTCUSDT", [T0], 1.0), candles("BTCUSDT", [T0 + M, T0 + 2 * M], 2.0, "ws")]
    ).sort(KEY)
    assert read_all(lfs).equals(want)
    assert read_tail(lfs, TT, IV).height == 2
    compact_tail(lfs, TT, IV, grace_s=3600)
    assert read_all(lfs).equals(want)
    # compacting again changes nothing: the partition files are not rewritten
    files = parquet_files(lake_root)
    stamps = [lfs.mtime_key(f.split("/klines/", 1)[-1]) for f in files if "/klines/" in f]
    compact_tail(lfs, TT, IV, grace_s=3600)
    assert [lfs.mtime_key(f.split("/klines/", 1)[-1]) for f in files if "/klines/" in f] == stamps
    compact_tail(lfs, TT, IV, grace_s=0)
    assert tail_files(lfs, TT, IV) == []
    assert scan_klines(lfs, TT, IV, tail=False).collect().sort(KEY).equals(want)


def test_a_settled_compacted_file_does_not_hide_later_partition_writes(lake_root: str) -> None:
    """A tail file compacted a while ago stays on disk until its grace time ends (and after
    ``lake live`` stops, until the next compaction). A correction written to the partition after
    the compaction (a repair, a re-uploaded archive day, a backfill) is what readers must see."""
    lfs = LakeFS(lake_root)
    ensure_tail(lfs, TT, IV)
    write_tail(lfs, TT, IV, candles("BTCUSDT", [T0, T0 + M], 2.0, "ws"))
    compact_tail(lfs, TT, IV, grace_s=3600, now=lambda: time.time() - 60)  # compacted a minute ago
    assert len(tail_files(lfs, TT, IV)) == 1  # kept for running queries
    write_klines(lfs, TT, IV, "BTCUSDT", candles("BTCUSDT", [T0 + M], 9.0, "rest").drop("symbol"))
    want = pl.concat([candles("BTCUSDT", [T0], 2.0, "ws"), candles("BTCUSDT", [T0 + M], 9.0, "rest")])
    assert read_all(lfs).equals(want)
    assert read_view(lake_root).equals(want)
    # compacted a moment ago: still read (a query may have listed the partitions before), and it wins
    write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + 2 * M], 3.0, "ws"))
    compact_tail(lfs, TT, IV, grace_s=3600)
    write_klines(lfs, TT, IV, "BTCUSDT", candles("BTCUSDT", [T0 + 2 * M], 8.0, "rest").drop("symbol"))
    assert read_all(lfs)["close"].to_list() == [2.0, 9.0, 3.0]
    assert read_view(lake_root)["close"].to_list() == [2.0, 9.0, 3.0]


@pytest.mark.parametrize("symbol", ["../../etc", "btc/usdt", "", "A" * 41])
def test_hostile_symbols_never_reach_the_tail(tmp_path, symbol) -> None:
    lfs = LakeFS(tmp_path)
    with pytest.raises(LakeError):
        write_tail(lfs, TT, IV, candles(symbol, [T0], 1.0))
    assert tail_files(lfs, TT, IV) == []
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_failed_symbol_keeps_its_tail_files(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_tail(
        lfs, TT, IV, pl.concat([candles("AAAUSDT", [T0], 1.0, "ws"), candles("BBBUSDT", [T0], 1.0, "ws")])
    )

    def flaky(sym: str, rows: pl.DataFrame) -> None:
        if sym == "BBBUSDT":
            raise OSError("disk full")
        write_klines(lfs, TT, IV, sym, rows)

    res = compact_tail(lfs, TT, IV, grace_s=0, write=flaky)
    assert res.failed.keys() == {"BBBUSDT"} and res.files_compacted == 0 and res.files_retired == 0
    assert len(tail_files(lfs, TT, IV)) == 1
    assert read_all(tmp_path).height == 2
    res = compact_tail(lfs, TT, IV, grace_s=0)  # next time it works; then the grace (0) is over
    assert res.files_compacted == 1 and not res.failed
    compact_tail(lfs, TT, IV, grace_s=0)
    assert tail_files(lfs, TT, IV) == []
    assert scan_klines(tmp_path, TT, IV, tail=False).collect().height == 2


def test_time_filters_apply_to_the_tail(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_klines(lfs, TT, IV, "AAAUSDT", candles("AAAUSDT", [T0, T0 + M], 1.0).drop("symbol"))
    write_tail(lfs, TT, IV, candles("AAAUSDT", [T0 + M, T0 + 2 * M], 2.0, "ws"))
    start = dt.datetime.fromtimestamp((T0 + M) / 1000, dt.UTC)
    got = scan_klines(lfs, TT, IV, "AAAUSDT", start=start).collect().sort(KEY)
    assert got["close"].to_list() == [2.0, 2.0] and got.height == 2
    assert scan_klines(lfs, TT, IV, "BBBUSDT").collect().height == 0


def test_a_corrupt_tail_file_is_a_clear_error_and_changes_nothing(tmp_path) -> None:
    lfs = LakeFS(tmp_path)
    write_klines(lfs, TT, IV, "AAAUSDT", candles("AAAUSDT", [T0], 1.0).drop("symbol"))
    rel = write_tail(lfs, TT, IV, candles("AAAUSDT", [T0 + M], 2.0, "ws"))
    assert rel is not None
    (tmp_path / rel).write_bytes(b"PAR1 not really parquet")
    parts = sorted(p.read_bytes() for p in (tmp_path / "klines").rglob("*.parquet"))
    with pytest.raises(LakeError, match="unreadable tail file"):
        compact_tail(lfs, TT, IV, grace_s=0)
    with pytest.raises(LakeError, match="unreadable tail file"):
        scan_klines(lfs, TT, IV).collect()
    assert sorted(p.read_bytes() for p in (tmp_path / "klines").rglob("*.parquet")) == parts
    assert len(tail_files(lfs, TT, IV)) == 1


_dec = st.decimals(min_value=0, max_value=10**9, places=8, allow_nan=False, allow_infinity=False)


@st.composite
def rest_batches(draw: st.DrawFn) -> dict[str, list[list[object]]]:
    """Rows as the REST API and the websocket parser hand them to the writer (decimal strings)."""
    out: dict[str, list[list[object]]] = {}
    for sym in draw(st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT", "A_B", "X1000SATSUSDT"]), unique=True)):
        opens = sorted(
            draw(st.lists(st.integers(0, 5000), min_size=1, max_size=5, unique=True)), reverse=True
        )
        out[sym] = [
            [T0 + t * M, *(str(draw(_dec)) for _ in range(5)), T0 + t * M + M - 1, str(draw(_dec)),
             draw(st.integers(0, 2**40)), str(draw(_dec)), str(draw(_dec)), "0"]
            for t in opens
        ]  # fmt: skip
    return out


@settings(max_examples=60, deadline=None)
@given(rest_batches())
def test_fast_tail_encoding_equals_the_general_conversion(batch) -> None:
    """The live writer's Arrow encoding gives the file the Polars conversion gives, value for value."""
    from lake.store.tail import _conform, _encode, encode_tail_rows, rows_frame

    data = encode_tail_rows(batch, "ws")
    if not any(batch.values()):
        assert data is None
        return
    import io

    fast = pl.read_parquet(io.BytesIO(data))
    general = pl.read_parquet(io.BytesIO(_encode(_conform(rows_frame(batch, "ws")))))
    assert fast.schema == general.schema
    # the same rows; tail_seq is the moment each was encoded, one value per file
    assert fast.drop("tail_seq").equals(general.drop("tail_seq"))
    assert fast["tail_seq"].n_unique() == general["tail_seq"].n_unique() == 1
    assert fast["tail_seq"][0] <= general["tail_seq"][0]
    assert fast.height == sum(len(rs) for rs in batch.values())


def test_fast_tail_encoding_falls_back_and_rejects_like_the_general_one() -> None:
    from lake.errors import DataError, ValidationError
    from lake.store.tail import encode_tail_rows

    row = [T0, "1.5", "2", "1", "1.5", "10", T0 + M - 1, "15", 3, "5", "7", "0"]
    numbers = [T0, 1.5, 2, 1, 1.5, 10.0, T0 + M - 1, 15.0, 3, 5.0, 7.0, "0"]  # not strings: general path
    import io

    a = pl.read_parquet(io.BytesIO(encode_tail_rows({"BTCUSDT": [row]}, "rest") or b""))
    assert a["close"].to_list() == [1.5] and a["source"].to_list() == ["rest"]
    with pytest.raises(DataError):  # what the general conversion says of them
        encode_tail_rows({"BTCUSDT": [numbers]}, "rest")
    with pytest.raises(DataError):
        encode_tail_rows({"BTCUSDT": [[*row[:1], "x1", *row[2:]]]}, "ws")
    with pytest.raises(DataError):
        encode_tail_rows({"BTCUSDT": [row[:5]]}, "ws")
    with pytest.raises(ValidationError):
        encode_tail_rows({"../etc": [row]}, "ws")


# -- retired files: emptied and reused, never deleted while leases work ---------------------------


def _names(root, tt=TT, iv=IV) -> list[str]:
    from lake.store.tail import tail_dir

    d = os.path.join(str(root), tail_dir(tt, iv))
    return sorted(n for n in os.listdir(d) if n[:1].isdigit())


def _age(root, seconds: float = 10.0) -> None:
    """Make the tail's stubs look retired ``seconds`` ago (only those are reused)."""
    from lake.store.tail import tail_dir

    d = os.path.join(str(root), tail_dir(TT, IV))
    t = time.time() - seconds
    for n in os.listdir(d):
        os.utime(os.path.join(d, n), (t, t))


def test_retired_files_stay_as_stubs_and_their_names_are_reused(tmp_path) -> None:
    """A query lists the tail files before it opens them: a retired file keeps its name (zero rows)
    and a later tail write takes that name instead of a new one."""
    lfs = LakeFS(tmp_path)
    ensure_tail(lfs, TT, IV)
    first = write_tail(lfs, TT, IV, candles("BTCUSDT", [T0, T0 + M], 2.0, "ws"))
    assert first is not None
    before = (tmp_path / first).read_bytes()
    compact_tail(lfs, TT, IV, grace_s=3600)
    res = compact_tail(lfs, TT, IV, grace_s=0)
    assert res.files_retired == 1 and res.files_compacted == 0
    names = _names(tmp_path)
    assert names == [first.rsplit("/", 1)[1]]  # still there: a stub
    stub = (tmp_path / first).read_bytes()
    # the old pages where they were, for a reader of the old footer
    old_meta = pq.ParquetFile(io.BytesIO(before)).metadata
    assert (
        pq.ParquetFile(io.BytesIO(stub), metadata=old_meta).read().equals(pq.read_table(io.BytesIO(before)))
    )
    assert pl.read_parquet(tmp_path / first).height == 0
    import duckdb

    con = duckdb.connect()
    assert con.execute("SELECT count(*) FROM read_parquet(?)", [str(tmp_path / first)]).fetchall() == [(0,)]
    con.close()
    assert tail_files(lfs, TT, IV) == []
    want = candles("BTCUSDT", [T0, T0 + M], 2.0, "ws")
    assert read_all(str(tmp_path)).equals(want) and read_view(str(tmp_path)).equals(want)

    fresh = write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + 2 * M], 3.0, "ws"))
    assert fresh != first  # retired a moment ago: a reader may still be between its two opens
    _age(tmp_path)
    again = write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + 3 * M], 3.0, "ws"))
    assert again == first and len(_names(tmp_path)) == 2  # the stub's name, no new file
    assert tail_files(lfs, TT, IV) == sorted(n.rsplit("/", 1)[1] for n in (first, fresh))
    want = pl.concat([want, candles("BTCUSDT", [T0 + 2 * M, T0 + 3 * M], 3.0, "ws")])
    assert read_all(str(tmp_path)).equals(want) and read_view(str(tmp_path)).equals(want)
    res = compact_tail(lfs, TT, IV, grace_s=3600)  # the refilled contents are new: compacted
    assert res.files_compacted == 2 and res.rows == 2
    assert scan_klines(tmp_path, TT, IV, tail=False).collect().sort(KEY).equals(want)


def test_a_reused_name_does_not_decide_which_file_wins(tmp_path) -> None:
    """With names reused, the later write is the higher tail_seq, not the later name."""
    from lake.store.tail import encode_tail_rows, write_tail_bytes

    lfs = LakeFS(tmp_path)
    a = write_tail(lfs, TT, IV, candles("BTCUSDT", [T0], 1.0, "ws"))
    b = write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + M], 1.0, "ws"))
    assert a is not None and b is not None and a < b
    compact_tail(lfs, TT, IV, grace_s=3600)
    compact_tail(lfs, TT, IV, grace_s=0)
    _age(tmp_path)
    row = [T0 + 5 * M, "1", "2", "0.5", "{}", "10", T0 + 6 * M - 1, "15", 3, "5", "7", "0"]
    older = encode_tail_rows({"BTCUSDT": [[*row[:4], "5", *row[5:]]]}, "ws")
    newer = encode_tail_rows({"BTCUSDT": [[*row[:4], "6", *row[5:]]]}, "ws")
    assert older is not None and newer is not None
    assert write_tail_bytes(lfs, TT, IV, newer) == a  # the newer candle gets the lower name
    assert write_tail_bytes(lfs, TT, IV, older) == b
    assert read_tail(lfs, TT, IV)["close"].to_list() == [6.0]
    got = read_view(str(tmp_path))
    assert got.filter(pl.col("candle_begin_time").dt.epoch("ms") == T0 + 5 * M)["close"].to_list() == [6.0]
    assert got.height == 3 and read_all(str(tmp_path)).equals(got)
    compact_tail(lfs, TT, IV, grace_s=3600)
    assert scan_klines(tmp_path, TT, IV, tail=False).collect().sort(KEY).equals(got)


def test_surplus_stubs_are_deleted(tmp_path) -> None:
    from lake.store.tail import MAX_STUBS

    lfs = LakeFS(tmp_path)
    for i in range(MAX_STUBS + 6):  # no stub yet: each write makes a new file
        assert write_tail(lfs, TT, IV, candles("BTCUSDT", [T0 + i * M], 1.0, "ws")) is not None
    assert len(tail_files(lfs, TT, IV)) == MAX_STUBS + 6
    compact_tail(lfs, TT, IV, grace_s=3600)
    res = compact_tail(lfs, TT, IV, grace_s=0)
    assert res.files_retired == MAX_STUBS + 6
    assert len(_names(tmp_path)) == MAX_STUBS and tail_files(lfs, TT, IV) == []
    assert scan_klines(tmp_path, TT, IV).collect().height == MAX_STUBS + 6


def test_tail_files_of_an_older_lake_are_upgraded(tmp_path) -> None:
    """Tail files and compaction records written before tail_seq existed: named by write time, the
    record keyed by name. lake.connect and the compactor give the files the column."""
    import json

    from lake.store.tail import _conform, _encode, tail_dir

    lfs = LakeFS(tmp_path)
    d = tmp_path / tail_dir(TT, IV)
    d.mkdir(parents=True)
    old = [
        ("00000000000000000001-1-aaaaaa.parquet", candles("BTCUSDT", [T0, T0 + M], 2.0, "ws")),
        ("00000000000000000002-1-bbbbbb.parquet", candles("BTCUSDT", [T0 + M], 3.0, "ws")),
    ]
    for name, df in [*old, ("_empty.parquet", candles("BTCUSDT", [], 1.0))]:
        (d / name).write_bytes(_encode(_conform(df).drop("tail_seq")))
    (d / "_compacted.json").write_text(json.dumps({}))
    want = pl.concat([candles("BTCUSDT", [T0], 2.0, "ws"), candles("BTCUSDT", [T0 + M], 3.0, "ws")])
    assert read_all(str(tmp_path)).equals(want)  # Polars: the name gives the order
    assert read_view(str(tmp_path)).equals(want)  # connect upgraded the files
    assert pl.read_parquet(d / old[1][0])["tail_seq"].to_list() == [2]
    assert "tail_seq" in pl.read_parquet(d / "_empty.parquet").columns
    compact_tail(lfs, TT, IV, grace_s=3600)
    assert scan_klines(tmp_path, TT, IV, tail=False).collect().sort(KEY).equals(want)
    # a record of the old form (bare names) still means: compacted
    (d / "_compacted.json").write_text(json.dumps({n: 1.0 for n, _ in old}))
    assert compact_tail(lfs, TT, IV, grace_s=3600).files_compacted == 0
