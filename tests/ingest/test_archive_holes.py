"""What the lake holds per planning unit, and the holes left for REST after the archive."""

from __future__ import annotations

import datetime as dt

from lake.ingest.archive.plan import UnitState
from lake.ingest.archive.runner import lake_holes, lake_units
from lake.store.fs import LakeFS
from lake.store.klines import write_klines
from lake.store.meta import EmptyRange, add_empty_ranges
from tests.store.helpers import frame

DAY = 86_400_000
MIN = 60_000
D0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)


def test_units_and_holes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lfs = LakeFS(tmp_path)
    day0 = list(range(D0, D0 + DAY, MIN))
    day1 = [
        t for t in range(D0 + DAY, D0 + 2 * DAY, MIN) if not (D0 + DAY + 3600_000 <= t < D0 + DAY + 7200_000)
    ]
    write_klines(lfs, "usdt_spot", "1m", "BTCUSDT", frame(day0 + day1))
    add_empty_ranges(
        lfs, "usdt_spot", "1m", "BTCUSDT", [EmptyRange(D0 + DAY + 3600_000, D0 + DAY + 5400_000)]
    )
    u = lake_units(lfs, "usdt_spot", "1m", "BTCUSDT", D0, D0 + 3 * DAY)
    assert u == {D0: UnitState(1440, 0), D0 + DAY: UnitState(1380, 30), D0 + 2 * DAY: UnitState(0, 0)}
    holes = lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", D0 - DAY, D0 + 3 * DAY)
    assert holes == [
        (D0 - DAY, D0),  # before the first stored candle
        (D0 + DAY + 5400_000, D0 + DAY + 7200_000),  # the half hour not recorded as empty
        (D0 + 2 * DAY, D0 + 3 * DAY),  # the tail
    ]
    assert lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", D0, D0 + DAY) == []
    # Unaligned bounds: only whole candles inside the range count.
    assert lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", D0 + 2 * DAY + 30_000, D0 + 2 * DAY + 150_000) == [
        (D0 + 2 * DAY + MIN, D0 + 2 * DAY + 150_000)
    ]


def test_monthly_interval_holes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lfs = LakeFS(tmp_path)
    jan, feb, mar, apr = (
        int(dt.datetime(2024, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2, 3, 4)
    )
    write_klines(lfs, "usdt_spot", "1M", "BTCUSDT", frame([jan, mar]))
    assert lake_holes(lfs, "usdt_spot", "1M", "BTCUSDT", jan, apr + 1) == [(feb, mar), (apr, apr + 1)]


def test_empty_partition_dir_left_by_a_killed_writer_is_skipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found by the SIGKILL test: a writer killed after makedirs, before its rename, leaves date=… empty.
    lfs = LakeFS(tmp_path)
    write_klines(lfs, "usdt_spot", "1m", "BTCUSDT", frame([D0]))
    (tmp_path / "klines/trade_type=usdt_spot/interval=1m/symbol=BTCUSDT/date=2024-01-02").mkdir()
    assert lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", D0, D0 + MIN) == []
    assert lake_units(lfs, "usdt_spot", "1m", "BTCUSDT", D0, D0 + 2 * DAY)[D0 + DAY] == UnitState(0, 0)


def test_irregular_open_times_fill_their_slot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Feb 2018 (binance-public-data #14, #77): after the 02-08/09 outage Binance's 1m candles opened
    at hh:mm:14.789 for a while, then back on the grid. Each such candle stands for its minute: the
    only holes are the outage and the minutes no candle opens in."""
    lfs = LakeFS(tmp_path)
    day = int(dt.datetime(2018, 2, 9, tzinfo=dt.UTC).timestamp() * 1000)
    irregular = 1518168494789  # 2018-02-09 09:28:14.789
    aligned_before = list(range(day, day + 3 * 60 * MIN, MIN))  # 00:00-02:59
    shifted = list(range(irregular, irregular + 30 * MIN, MIN))  # 09:28:14.789 … 09:57:14.789
    aligned_after = list(range(irregular - 14_789 + 30 * MIN, day + DAY, MIN))  # 09:58 on
    write_klines(lfs, "usdt_spot", "1m", "BTCUSDT", frame(aligned_before + shifted + aligned_after))
    assert lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", day, day + DAY) == [
        (day + 3 * 60 * MIN, irregular - 14_789)  # 03:00-09:28, the outage
    ]
    # The slot of an irregular candle at the very start of the range is held as well.
    assert (
        lake_holes(lfs, "usdt_spot", "1m", "BTCUSDT", irregular - 14_789, irregular - 14_789 + 5 * MIN) == []
    )
    stored = lake_units(lfs, "usdt_spot", "1m", "BTCUSDT", day, day + DAY)[day]
    assert stored == UnitState(180 + 30 + (1440 - 598), 0)


def test_irregular_monthly_open_fills_its_month(tmp_path) -> None:  # type: ignore[no-untyped-def]
    lfs = LakeFS(tmp_path)
    jan, feb, mar = (int(dt.datetime(2018, m, 1, tzinfo=dt.UTC).timestamp() * 1000) for m in (1, 2, 3))
    write_klines(lfs, "usdt_spot", "1M", "BTCUSDT", frame([jan, feb + 14_789]))
    assert lake_holes(lfs, "usdt_spot", "1M", "BTCUSDT", jan, mar + 1) == [(mar, mar + 1)]
