"""The DuckDB view over the watermark files (``lake.live.watermark.WATERMARK_VIEW_SQL``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from lake.binance.klines import klines_from_rest
from lake.live.watermark import WATERMARK_VIEW_SQL, register_watermark_view, write_watermark
from lake.query.connect import connect
from lake.store.klines import write_klines

M5 = 300_000
T = 1_741_000_000_000 - 1_741_000_000_000 % M5


def test_view_sql_is_the_shipped_file() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "sql" / "watermark.sql").read_text(encoding="utf-8") == WATERMARK_VIEW_SQL


def test_empty_stand_in_before_any_watermark(tmp_path: Path) -> None:
    con = connect(tmp_path)
    try:
        assert not register_watermark_view(con, tmp_path)
        assert con.sql("SELECT count(*) FROM watermark").fetchall() == [(0,)]
    finally:
        con.close()


def test_view_reads_every_feed_and_filters_klines(tmp_path: Path) -> None:
    rows = [
        [T + k * M5, "1", "2", "0.5", "1.5", "10", T + (k + 1) * M5 - 1, "15", 3, "5", "7", "0"]
        for k in range(4)
    ]
    write_klines(tmp_path, "usdt_perp", "5m", "BTCUSDT", klines_from_rest(rows))
    write_watermark(tmp_path, "usdt_perp", "5m", T + 2 * M5, symbols=1, updated_at_ms=T + 3 * M5 + 5_000)
    write_watermark(tmp_path, "usdt_spot", "1m", T, symbols=9, updated_at_ms=T + 61_000)
    con = connect(tmp_path)
    try:
        assert register_watermark_view(con, tmp_path)
        got = con.sql(
            'SELECT trade_type, "interval", watermark, next_open, symbols FROM watermark ORDER BY 1'
        ).fetchall()
        utc = dt.UTC
        assert [(a, b, w.astimezone(utc), n.astimezone(utc), s) for a, b, w, n, s in got] == [
            ("usdt_perp", "5m", dt.datetime.fromtimestamp((T + 2 * M5) / 1000, utc),
             dt.datetime.fromtimestamp((T + 3 * M5) / 1000, utc), 1),
            ("usdt_spot", "1m", dt.datetime.fromtimestamp(T / 1000, utc),
             dt.datetime.fromtimestamp((T + 60_000) / 1000, utc), 9),
        ]  # fmt: skip
        complete = con.sql(
            'SELECT count(*) FROM klines k JOIN watermark w USING (trade_type, "interval") '
            "WHERE k.candle_begin_time <= w.watermark"
        ).fetchall()
        assert complete == [(3,)]
    finally:
        con.close()
