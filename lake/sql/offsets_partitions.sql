-- offsets_partitions: the period files of the offsets table (`lake offsets`; docs/offsets.md), one
-- file per (offset, symbol) and year (T >= 1h) or month (T < 1h). Every bin of a series that opens
-- before its tail start; the recent bins are in offsets_tail, and `offsets` is the two together.
--
-- Files: offsets/trade_type=<tt>/interval=<T>/offset=<k>/symbol=<SYM>/date=<YYYY-MM-DD>/data.parquet
-- (lakes written before the offsets tail may also hold a tail.parquet there: disjoint from
-- data.parquet, read alike, folded away by the series' next build).
CREATE OR REPLACE VIEW offsets_partitions AS
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
    [
        getvariable('lake_root') || '/_meta/schema/offsets/trade_type=_/interval=_/offset=_/symbol=_/date=_/schema.parquet',  -- first: see lake/store/schema_files.py
        getvariable('lake_root') || '/offsets/*/*/*/*/*/*.parquet'
    ],
    hive_partitioning = true,
    hive_types = {
        'trade_type': VARCHAR, 'interval': VARCHAR, 'offset': VARCHAR, 'symbol': VARCHAR, 'date': VARCHAR
    }
);
