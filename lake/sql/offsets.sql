-- offsets: candles of a target interval at every offset, resampled from a base interval
-- (`lake offsets`; semantics in docs/offsets.md). One row per (trade_type, interval, offset, symbol,
-- candle_begin_time); offset is its name ('0m', '5m', … '55m' for 1h from 5m), n_base the number of
-- base candles the bin holds.
--
-- Files: offsets/trade_type=<tt>/interval=<T>/offset=<k>/symbol=<SYM>/date=<YYYY-MM-DD>/data.parquet,
-- and tail.parquet next to it for a series' most recent bins (the two never share a bin), so the glob
-- takes every *.parquet of a period directory.
CREATE OR REPLACE VIEW offsets AS
SELECT
    trade_type,
    "interval",
    "offset",
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
    n_base
FROM read_parquet(
    getvariable('lake_root') || '/offsets/*/*/*/*/*/*.parquet',
    hive_partitioning = true,
    hive_types = {
        'trade_type': VARCHAR, 'interval': VARCHAR, 'offset': VARCHAR, 'symbol': VARCHAR, 'date': VARCHAR
    }
);
