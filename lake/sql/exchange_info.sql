-- exchange_info: every distinct exchangeInfo snapshot per trade type (lake/store/tables.py), one row
-- per (snapshot_time, symbol): status, assets, contract type, tick/lot sizes, …
--
-- Files: exchange_info/trade_type=<tt>/date=<YYYY-MM-DD>/data.parquet.
CREATE OR REPLACE VIEW exchange_info AS
-- partition columns last, in path order, whichever order DuckDB gives hive columns in
SELECT * EXCLUDE (trade_type, date), trade_type, date
FROM read_parquet(
    [
        getvariable('lake_root') || '/_meta/schema/exchange_info/trade_type=_/date=_/schema.parquet',  -- first: see lake/store/schema_files.py
        getvariable('lake_root') || '/exchange_info/*/*/*.parquet'
    ],
    hive_partitioning = true,
    hive_types = {'trade_type': VARCHAR, 'date': VARCHAR}
);
