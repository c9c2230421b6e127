"""The DuckDB views against what the store holds (real DuckDB, real files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lake.query import VIEWS, connect
from lake.query.connect import glob_escape
from lake.schema import KLINE_COLUMNS
from lake.store.coverage import coverage
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from lake.store.tables import EXCHANGE_INFO_SCHEMA, write_exchange_info, write_funding
from lake.transform.build import build_offsets, scan_offsets
from tests.transform.helpers import T0_MS, random_candles

REPO = Path(__file__).resolve().parents[2]


def _norm(df: pl.DataFrame) -> pl.DataFrame:
    """DuckDB hands TIMESTAMPTZ back as µs in 'Etc/UTC'; the lake's frames use ms in 'UTC'."""
    return df.with_columns(pl.col("candle_begin_time").dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))


def _lake(
    root: Path, symbols: tuple[str, ...] = ("BTCUSDT", "1000SHIBUSDT"), count: int = 600
) -> pl.DataFrame:
    frames = []
    for i, s in enumerate(symbols):
        df = random_candles(i, 300_000, count, hole_rate=0.0)
        write_klines(root, "usdt_perp", "5m", s, df)
        frames.append(df.with_columns(pl.lit(s).alias("symbol")))
    return pl.concat(frames)


def test_sql_files_ship_with_the_package() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "sql").glob("*.sql")}
    packaged = {p.name: p.read_bytes() for p in (REPO / "lake" / "sql").glob("*.sql")}
    assert set(top) == {f"{v}.sql" for v in VIEWS}
    assert top == packaged
    assert (REPO / "sql").resolve() == (REPO / "lake" / "sql").resolve(), "sql/ is a link to lake/sql/"


def test_empty_lake_connects_and_every_view_is_empty(tmp_path: Path) -> None:
    con = connect(tmp_path)
    for view in VIEWS:
        assert con.sql(f"SELECT count(*) FROM {view}").fetchall() == [(0 if view != "intervals" else 16,)]  # noqa: S608
    cols = [r[0] for r in con.sql("DESCRIBE offsets").fetchall()]
    assert (
        cols[:5] == ["trade_type", "interval", "offset", "symbol", "candle_begin_time"]
        and cols[-1] == "n_base"
    )


@pytest.mark.parametrize("name", ["plain", "it's", "data [old]", "a*b?c"])
def test_klines_view_equals_the_store_whatever_the_root_is_called(tmp_path: Path, name: str) -> None:
    root = tmp_path / name
    want = _lake(root).sort("symbol", "candle_begin_time")
    con = connect(root)
    got = _norm(con.sql("SELECT * FROM klines ORDER BY symbol, candle_begin_time").pl())
    assert got["trade_type"].unique().to_list() == ["usdt_perp"] and got["interval"].unique().to_list() == [
        "5m"
    ]
    assert sorted(got["symbol"].unique().to_list()) == ["1000SHIBUSDT", "BTCUSDT"]  # strings, not numbers
    assert_frame_equal(got.select("symbol", *KLINE_COLUMNS), want.select("symbol", *KLINE_COLUMNS))


def test_root_is_a_bound_value() -> None:
    assert glob_escape("/x/it's [a]*?") == "/x/it's [[]a][*][?]"


def test_offsets_view_equals_scan_offsets(tmp_path: Path) -> None:
    _lake(tmp_path)
    build_offsets(tmp_path, "usdt_perp", "1h")
    con = connect(tmp_path)
    got = _norm(con.sql('SELECT * EXCLUDE (trade_type, "interval") FROM offsets ORDER BY ALL').pl())
    want = scan_offsets(tmp_path, "usdt_perp", "1h").collect()
    assert_frame_equal(got.select(want.columns), want.sort(got.columns).select(want.columns))
    assert set(got["offset"]) == {f"{5 * i}m" for i in range(12)}


def test_coverage_counts_holes(tmp_path: Path) -> None:
    df = random_candles(1, 300_000, 100, hole_rate=0.0)
    holed = df.filter(~pl.int_range(pl.len()).is_in([5, 6, 7, 50]))
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", holed)
    write_klines(tmp_path, "usdt_spot", "1M", "ETHUSDT", _monthly([0, 1, 3]))
    rows = connect(tmp_path).sql("SELECT * FROM coverage ORDER BY trade_type").pl().to_dicts()
    perp = rows[0]
    assert (perp["candles"], perp["expected"], perp["missing"], perp["holes"], perp["largest_hole"]) == (
        96,
        100,
        4,
        2,
        3,
    )
    spot = rows[1]
    assert (spot["candles"], spot["expected"], spot["missing"], spot["holes"]) == (3, 4, 1, 1)


def test_coverage_tells_exchange_holes_from_missing_data(tmp_path: Path) -> None:
    """Holes inside a range the exchange confirmed empty count apart (exchange_missing), exactly as
    lake.store.coverage classifies them; a range that covers only part of a hole explains that part."""
    ms5 = 300_000
    df = random_candles(1, ms5, 200, hole_rate=0.0)
    t0 = int(df["candle_begin_time"].dt.epoch("ms")[0])
    holed = df.filter(~pl.int_range(pl.len()).is_in([*range(10, 16), *range(40, 43), 100, 150, 151]))
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", holed)
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", df)
    write_klines(tmp_path, "usdt_spot", "1M", "ETHUSDT", _monthly([0, 1, 3, 7]))
    add_empty_ranges(tmp_path, "usdt_perp", "5m", "ETHUSDT", [
        EmptyRange(t0 + 9 * ms5, t0 + 17 * ms5),    # holds the hole 10-15 (and more)
        EmptyRange(t0 + 41 * ms5, t0 + 43 * ms5),   # only part of the hole 40-42: 40 is missing
        EmptyRange(t0 + 100 * ms5, t0 + 101 * ms5),  # exactly the hole 100
        EmptyRange(t0 + 300 * ms5, t0 + 310 * ms5),  # after the last candle
    ])  # fmt: skip
    july = int(dt.datetime(2024, 8, 1, tzinfo=dt.UTC).timestamp() * 1000)
    add_empty_ranges(tmp_path, "usdt_spot", "1M", "ETHUSDT", [
        EmptyRange(int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000), july)
    ])  # fmt: skip
    con = connect(tmp_path)
    got = con.sql("SELECT * FROM coverage ORDER BY ALL").pl()
    rows = {(r["trade_type"], r["interval"], r["symbol"]): r for r in got.to_dicts()}
    cols = ("candles", "expected", "missing", "exchange_missing", "holes", "largest_hole")
    # missing 40, 150-151 (two holes, the longest 2); confirmed 10-15, 41-42, 100
    assert tuple(rows[("usdt_perp", "5m", "ETHUSDT")][c] for c in cols) == (188, 200, 3, 9, 2, 2)
    assert tuple(rows[("usdt_perp", "5m", "BTCUSDT")][c] for c in cols) == (200, 200, 0, 0, 0, 0)
    # months 2 (not explained) and 4-6 (May-July inside the range)
    assert tuple(rows[("usdt_spot", "1M", "ETHUSDT")][c] for c in cols) == (4, 8, 1, 3, 1, 1)
    for cov in coverage(tmp_path):
        row = rows[(cov.trade_type, cov.interval, cov.symbol)]
        assert (row["missing"], row["exchange_missing"], row["candles"]) == (
            cov.missing,
            cov.exchange_missing,
            cov.rows,
        )
        assert row["holes"] == sum(h.kind == "missing" for h in cov.holes)
    ranges = con.sql("SELECT * FROM empty_ranges ORDER BY ALL").pl()
    assert ranges.height == 5
    assert ranges.filter(pl.col("symbol") == "ETHUSDT", pl.col("interval") == "5m")["range_start"].dt.epoch(
        "ms"
    ).to_list() == [t0 + k * ms5 for k in (9, 41, 100, 300)]


def test_coverage_counts_off_grid_candles_in_their_slot(tmp_path: Path) -> None:
    """Binance's 2018 history has candles opening off the grid (hh:mm:14.789); each fills the slot it
    falls in, for the view and lake.store.coverage alike, so only the real hole (2 candles) counts."""
    m1 = 60_000
    df = random_candles(4, m1, 60, hole_rate=0.0)
    i = pl.int_range(pl.len())
    df = df.with_columns(
        pl.when((i >= 10) & (i <= 20)).then(pl.col("candle_begin_time") + dt.timedelta(milliseconds=14_789))
        .otherwise(pl.col("candle_begin_time"))
    ).filter(~i.is_in([40, 41]))  # fmt: skip
    write_klines(tmp_path, "usdt_spot", "1m", "BTCUSDT", df)
    # issue #77's shape in 1h: 08:00, then 09:28:14.789 (the 09:00 slot), then 10:00
    hours = random_candles(5, 3_600_000, 3, hole_rate=0.0)
    hours = hours.with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(pl.col("candle_begin_time") + dt.timedelta(minutes=28, milliseconds=14_789))
        .otherwise(pl.col("candle_begin_time"))
    )  # fmt: skip
    write_klines(tmp_path, "usdt_spot", "1h", "BTCUSDT", hours)
    weeks = random_candles(6, 7 * 86_400_000, 5, start_ms=1_704_067_200_000, hole_rate=0.0)  # Mondays
    write_klines(tmp_path, "usdt_spot", "1w", "BTCUSDT", weeks.filter(pl.int_range(pl.len()) != 2))
    rows = {r["interval"]: r for r in connect(tmp_path).sql("SELECT * FROM coverage").pl().to_dicts()}
    cols = ("candles", "expected", "missing", "holes")
    assert tuple(rows["1m"][c] for c in cols) == (58, 60, 2, 1)
    assert tuple(rows["1h"][c] for c in cols) == (3, 3, 0, 0)
    assert tuple(rows["1w"][c] for c in cols) == (4, 5, 1, 1)
    for cov in coverage(tmp_path):
        row = rows[cov.interval]
        assert (cov.rows, cov.expected, cov.missing, len(cov.holes)) == tuple(row[c] for c in cols)
    assert rows["1m"]["first_open"].timestamp() * 1000 == T0_MS


def test_empty_ranges_view_is_empty_on_a_young_lake(tmp_path: Path) -> None:
    _lake(tmp_path, ("BTCUSDT",), 12)
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM empty_ranges").fetchone() == (0,)
    row = con.execute("SELECT missing, exchange_missing FROM coverage").fetchone()
    assert row == (0, 0)


def _monthly(months: list[int]) -> pl.DataFrame:
    base = random_candles(2, 300_000, len(months), hole_rate=0.0)
    opens = [dt.datetime(2024, 1 + m, 1, tzinfo=dt.UTC) for m in months]
    return base.with_columns(pl.Series("candle_begin_time", opens).dt.cast_time_unit("ms"))


def test_latest_is_the_newest_stored_candle_whatever_the_local_clock(tmp_path: Path) -> None:
    # lake stores closed candles only (backfills stop before the forming one, live keeps x=true), so
    # latest needs no clock. It used to drop candles closing after the local now(): with the
    # simulator's clock ahead of this machine's (the README tour), latest stayed hours behind.
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start = now - dt.timedelta(minutes=now.minute % 5) + dt.timedelta(hours=3)  # "the exchange's" time
    df = random_candles(3, 300_000, 11, start_ms=int(start.timestamp() * 1000), hole_rate=0.0)
    write_klines(tmp_path, "usdt_perp", "5m", "ETHUSDT", df)
    row = connect(tmp_path).sql("SELECT * FROM latest").pl().to_dicts()
    assert len(row) == 1 and row[0]["candle_begin_time"] == start + dt.timedelta(minutes=50)
    assert row[0]["close"] == df["close"][10]


def test_exchange_info_and_funding_appear_when_written(tmp_path: Path) -> None:
    _lake(tmp_path, ("BTCUSDT",), 12)
    assert connect(tmp_path).sql("SELECT count(*) FROM funding").fetchall() == [(0,)]
    t = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    write_funding(
        tmp_path,
        "usdt_perp",
        "BTCUSDT",
        pl.DataFrame(
            {
                "funding_time": [t, t + dt.timedelta(hours=8)],
                "funding_rate": [1e-4, -2e-4],
                "mark_price": [1.0, 2.0],
            }
        ),
    )
    info = {c: [None] for c in EXCHANGE_INFO_SCHEMA} | {
        "snapshot_time": [t],
        "symbol": ["BTCUSDT"],
        "status": ["TRADING"],
    }
    write_exchange_info(tmp_path, "usdt_perp", pl.DataFrame(info, schema=EXCHANGE_INFO_SCHEMA))
    con = connect(tmp_path)
    assert con.sql("SELECT symbol, sum(funding_rate) FROM funding GROUP BY ALL").fetchall() == [
        ("BTCUSDT", pytest.approx(-1e-4))
    ]
    assert con.sql("SELECT trade_type, symbol, status FROM exchange_info").fetchall() == [
        ("usdt_perp", "BTCUSDT", "TRADING")
    ]


def test_compare_view_is_the_seeds_metric(tmp_path: Path) -> None:
    _lake(tmp_path, ("BTCUSDT",), 300)
    build_offsets(tmp_path, "usdt_perp", "1h", offsets="0m,30m")
    con = connect(tmp_path)
    con.execute(
        """CREATE OR REPLACE VIEW reference AS
        SELECT * EXCLUDE (n_base, high, volume), high * 2 AS high,
               CASE WHEN candle_begin_time = (SELECT min(candle_begin_time) FROM offsets)
                    THEN volume * 1.25 ELSE volume END AS volume
        FROM offsets
        UNION ALL BY NAME
        (SELECT trade_type, "interval", "offset", symbol, TIMESTAMPTZ '2030-01-01 00:00:00+00' AS candle_begin_time,
               1.0 AS open, 1.0 AS high, 1.0 AS low, 1.0 AS close, 1.0 AS volume, 1.0 AS quote_volume,
               1 AS trade_num, 1.0 AS taker_buy_base_asset_volume, 1.0 AS taker_buy_quote_asset_volume
        FROM offsets WHERE "offset" = '0m' LIMIT 1)"""
    )
    rows = {
        (r[0], r[1]): r[2:]
        for r in con.sql('SELECT "offset", "column", max_rel_error, missing FROM compare').fetchall()
    }
    assert rows[("0m", "open")] == (0.0, 1) and rows[("30m", "open")] == (0.0, 0)
    assert rows[("0m", "high")][0] == pytest.approx(0.5)  # |x / 2x - 1|
    assert rows[("0m", "volume")][0] == pytest.approx(0.2)  # |x / 1.25x - 1|, first bin of offset 0m
    assert rows[("30m", "volume")][0] == 0.0


def test_views_see_files_written_after_connect(tmp_path: Path) -> None:
    _lake(tmp_path, ("BTCUSDT",), 12)
    con = connect(tmp_path)
    assert con.sql("SELECT count(*) FROM klines").fetchall() == [(12,)]
    write_klines(
        tmp_path,
        "usdt_perp",
        "5m",
        "BTCUSDT",
        random_candles(9, 300_000, 12, start_ms=T0_MS + 86_400_000, hole_rate=0.0),
    )
    assert con.sql("SELECT count(*) FROM klines").fetchall() == [(24,)]


def test_watermark_view_once_a_feed_has_one(tmp_path: Path) -> None:
    from lake.live.watermark import write_watermark

    assert connect(tmp_path).sql("SELECT count(*) FROM watermark").fetchall() == [(0,)]
    t = T0_MS + 3_600_000
    write_watermark(tmp_path, "usdt_perp", "5m", t, symbols=3, updated_at_ms=t + 310_000)
    got = (
        connect(tmp_path)
        .sql('SELECT trade_type, "interval", watermark_ms, symbols FROM watermark')
        .fetchall()
    )
    assert got == [("usdt_perp", "5m", t, 3)]


def test_latest_is_the_last_closed_candle_even_without_trades(tmp_path: Path) -> None:
    """latest is the last closed candle, as the issue defines it, zero-volume ones included: a quiet
    interval of a trading symbol must not push it back in time. Zero-volume "zombie" candles of a
    delisted contract show volume 0 there; the segments view and lake audit leave them out."""
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start = now - dt.timedelta(minutes=now.minute % 5) - dt.timedelta(minutes=50)
    for sym, quiet in (("FTTUSDT", 6), ("ETHUSDT", 0)):
        df = random_candles(
            4, 300_000, 10, start_ms=int(start.timestamp() * 1000), hole_rate=0.0, zero_rate=0
        )
        vol = [1.0] * (10 - quiet) + [0.0] * quiet
        write_klines(tmp_path, "usdt_perp", "5m", sym, df.with_columns(volume=pl.Series(vol)))
    rows = (
        connect(tmp_path)
        .sql("SELECT symbol, candle_begin_time, volume FROM latest ORDER BY symbol")
        .fetchall()
    )
    assert rows == [
        ("ETHUSDT", start + dt.timedelta(minutes=45), 1.0),
        ("FTTUSDT", start + dt.timedelta(minutes=45), 0.0),
    ]


def test_a_stray_file_where_a_directory_goes_is_ignored(tmp_path: Path) -> None:
    """A file dropped at a directory level (klines/notes.txt, a symbol= file) does not break connect."""
    _lake(tmp_path, ("BTCUSDT",), 12)
    (tmp_path / "klines" / "notes.txt").write_text("x")
    (tmp_path / "klines" / "trade_type=usdt_perp" / "interval=5m" / "symbol=JUNK").write_text("x")
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM klines_partitions").fetchone() == (12,)


def test_connect_refuses_a_root_that_does_not_exist(tmp_path: Path) -> None:
    # A notebook started in notebooks/ with the default "lake-data" got empty views and no error.
    from lake.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no lake at"):
        connect(tmp_path / "lake-dat")
    connect(tmp_path).close()  # an empty lake that exists is fine


def test_scans_refuse_a_root_that_does_not_exist(tmp_path: Path) -> None:
    # they returned empty frames: a mistyped root read as an empty lake
    from lake.errors import NotFoundError
    from lake.store.klines import scan_klines
    from lake.transform.build import scan_offsets

    for scan in (scan_klines, scan_offsets):
        with pytest.raises(NotFoundError, match="no lake at"):
            scan(tmp_path / "lake-dat", "usdt_perp", "5m")
        assert scan(tmp_path, "usdt_perp", "5m").collect().height == 0  # an empty lake that exists
    assert not (tmp_path / "lake-dat").exists()


def test_overlapping_confirmed_empty_ranges_are_merged_not_counted_twice(tmp_path: Path) -> None:
    """A confirmed-empty file edited by hand (or by another tool) may hold overlapping, unsorted
    ranges: [15, 25) and [12, 18) over the hole of slots 10-29 explain slots 12-24, so 13 exchange
    holes and 7 missing candles (10-11 and 25-29), in the view and in lake.store.coverage alike (the
    view said 7 and 16, coverage 10 and 10)."""
    ms5 = 300_000
    df = random_candles(3, ms5, 60, hole_rate=0.0)
    t0 = int(df["candle_begin_time"].dt.epoch("ms")[0])
    write_klines(
        tmp_path, "usdt_perp", "5m", "ETHUSDT", df.filter(~pl.int_range(pl.len()).is_between(10, 29))
    )
    path = tmp_path / "_meta/empty/klines/trade_type=usdt_perp/interval=5m/symbol=ETHUSDT.json"
    path.parent.mkdir(parents=True)
    path.write_text(f"[[{t0 + 15 * ms5}, {t0 + 25 * ms5}], [{t0 + 12 * ms5}, {t0 + 18 * ms5}]]")
    con = connect(tmp_path)
    (row,) = con.sql("SELECT missing, exchange_missing, holes FROM coverage").fetchall()
    assert row == (7, 13, 2)
    (cov,) = coverage(tmp_path)
    assert (cov.missing, cov.exchange_missing) == (7, 13)
    assert [(h.kind, h.missing) for h in cov.holes] == [("missing", 2), ("exchange", 13), ("missing", 5)]
    ranges = con.sql("SELECT range_start, range_end FROM empty_ranges").pl()
    assert ranges.select(pl.all().dt.epoch("ms")).rows() == [(t0 + 12 * ms5, t0 + 25 * ms5)]
