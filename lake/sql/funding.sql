-- funding: funding rates of perpetuals (lake/store/tables.py), one row per
-- (trade_type, symbol, funding_time) with funding_rate and mark_price.
--
-- Files: funding/trade_type=<tt>/symbol=<SYM>/data.parquet.
CREATE OR REPLACE VIEW funding AS
-- partition columns last, in path order, whichever order DuckDB gives hive columns in
SELECT * EXCLUDE (trade_type, symbol), trade_type, symbol
FROM read_parquet(
    [
        getvariable('lake_root') || '/_meta/schema/funding/trade_type=_/symbol=_/schema.parquet',  -- first: see lake/store/schema_files.py
        getvariable('lake_root') || '/funding/*/*/*.parquet'
    ],
    hive_partitioning = true,
    hive_types = {'trade_type': VARCHAR, 'symbol': VARCHAR}
);
