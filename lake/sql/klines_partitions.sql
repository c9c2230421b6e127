-- klines_partitions: the candles stored in partition files (one row per trade_type, interval, symbol,
-- candle_begin_time). Query `klines` instead: it adds the candles `lake live` just wrote to the tail.
--
-- Files: klines/trade_type=<tt>/interval=<iv>/symbol=<SYM>/date=<YYYY-MM-DD>/data.parquet.
-- The lake root is bound by lake.connect() with SET VARIABLE lake_root (never pasted into SQL).
-- hive_types keeps every partition value a string: symbol=1000SHIBUSDT and interval=5m must not be
-- read as numbers. candle_begin_time is the UTC open time (TIMESTAMPTZ).
CREATE OR REPLACE VIEW klines_partitions AS
SELECT
    trade_type,
    "interval",
    symbol,
    candle_begin_time,
    open,
    high,
    low,
    close,
    volume,
    quote_volume,
    trade_num,
    taker_buy_base_asset_volume,
    taker_buy_quote_asset_volume,
    source
FROM read_parquet(
    [
        getvariable('lake_root') || '/_meta/schema/klines/trade_type=_/interval=_/symbol=_/date=_/schema.parquet',  -- first: see lake/store/schema_files.py
        getvariable('lake_root') || '/klines/*/*/*/*/*.parquet'
    ],
    hive_partitioning = true,
    hive_types = {'trade_type': VARCHAR, 'interval': VARCHAR, 'symbol': VARCHAR, 'date': VARCHAR}
);
