"""A lake on a real S3 endpoint is readable from DuckDB (lake.connect) and Polars (scan_klines)."""

import time

import polars as pl

from lake.query.connect import connect
from lake.store.fs import LakeFS
from lake.store.klines import scan_klines, write_klines
from tests.store.helpers import frame, opens, t0_ms


def test_duckdb_and_polars_read_an_s3_lake(lake_root: str) -> None:
    for sym in ("BTCUSDT", "1000SHIBUSDT"):
        write_klines(lake_root, "usdt_perp", "5m", sym, frame(opens(t0_ms(), 600)))
    con = connect(lake_root)
    try:
        rows = con.sql(
            "SELECT symbol, count(*) AS n, max(candle_begin_time) AS last FROM klines GROUP BY symbol ORDER BY symbol"
        ).pl()
        cov = con.sql("SELECT symbol, missing FROM coverage ORDER BY symbol").pl()
    finally:
        con.close()
    assert rows["symbol"].to_list() == ["1000SHIBUSDT", "BTCUSDT"] and rows["n"].to_list() == [600, 600]
    assert cov["missing"].to_list() == [0, 0]
    lazy = scan_klines(lake_root, "usdt_perp", "5m", ["1000SHIBUSDT"]).select(pl.len()).collect()
    assert lazy.item() == 600


def test_an_open_connection_sees_files_written_after_its_first_query(lake_root: str) -> None:
    write_klines(lake_root, "usdt_perp", "5m", "BTCUSDT", frame(opens(t0_ms(), 600)))
    con = connect(lake_root)
    try:
        first = con.sql("SELECT count(*) FROM klines").fetchall()
        # another writer (a backfill, lake live: another process, so not this process's s3fs
        # instance and its caches) adds a symbol and a later month of the first one
        other = LakeFS(lake_root, storage_options={"skip_instance_cache": True})
        write_klines(other, "usdt_perp", "5m", "ETHUSDT", frame(opens(t0_ms(), 300)))
        write_klines(other, "usdt_perp", "5m", "BTCUSDT", frame(opens(t0_ms() + 40 * 86_400_000, 10)))
        time.sleep(1.2)  # object-store listings are cached for a second
        after = con.sql("SELECT symbol, count(*) FROM klines GROUP BY symbol ORDER BY symbol").fetchall()
    finally:
        con.close()
    assert first == [(600,)]
    assert after == [("BTCUSDT", 610), ("ETHUSDT", 300)]


def test_a_query_on_s3_lists_the_prefix_once_and_never_asks_for_sizes(lake_root: str, monkeypatch) -> None:
    if not lake_root.startswith("s3://"):
        return  # object stores only
    import s3fs

    for i in range(12):
        write_klines(lake_root, "usdt_perp", "5m", f"S{i:02d}USDT", frame(opens(t0_ms(), 600)))
    calls: dict[str, int] = {}
    real = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[method] = calls.get(method, 0) + 1
        return await real(self, method, *args, **kwargs)

    con = connect(lake_root)
    try:
        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
        for _ in range(2):
            time.sleep(1.1)  # past any listing-cache expiry
            calls.clear()
            assert con.sql("SELECT count(*) FROM klines_partitions").fetchall() == [(7200,)]
            # one flat listing per glob (DuckDB globs twice per query), not one per directory
            # (27 for these 12 symbols and their partitions); no HEAD for each file's size
            assert calls.get("list_objects_v2", 0) <= 2 and calls.get("head_object", 0) == 0, calls
    finally:
        con.close()
