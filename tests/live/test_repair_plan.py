"""Where catch-up starts for a symbol, from what the lake holds."""

from __future__ import annotations

from lake.binance.intervals import parse_interval
from lake.binance.klines import klines_from_rest
from lake.live.repair import catchup_start, last_stored
from lake.store.klines import write_klines

IV = parse_interval("1m")
M = 60_000
E = 1_700_000_040_000 - 1_700_000_040_000 % M


def test_nothing_stored_takes_history() -> None:
    assert catchup_start(IV, E, last=None, watermark=None, history=100) == E - 100 * M
    assert catchup_start(IV, E, last=None, watermark=E - 5 * M, history=0) is None


def test_after_last_or_after_older_watermark() -> None:
    assert catchup_start(IV, E, last=E - 10 * M, watermark=None, history=100) == E - 9 * M
    # a killed run left holes after its watermark: start there, backfill's plan finds them
    assert catchup_start(IV, E, last=E - 2 * M, watermark=E - 20 * M, history=100) == E - 19 * M
    assert catchup_start(IV, E, last=E - M, watermark=E - M, history=100) is None


def test_last_stored_reads_the_newest_partition(tmp_path) -> None:
    assert last_stored(tmp_path, "usdt_perp", "1m", "BTCUSDT") is None
    day = 86_400_000
    rows = [
        [t, "1", "2", "0.5", "1.5", "10", t + M - 1, "15", 3, "5", "7", "0"]
        for t in (E - day, E - M, E - 2 * M)
    ]
    write_klines(tmp_path, "usdt_perp", "1m", "BTCUSDT", klines_from_rest(rows))
    assert last_stored(tmp_path, "usdt_perp", "1m", "BTCUSDT") == E - M
