-- compare: our offsets against a reference table, the seed's metric: per (trade_type, interval,
-- offset, symbol) and column, max(|ours / theirs - 1|) over the reference's candles.
--
-- `reference` has the offsets columns (trade_type, interval, offset, symbol, candle_begin_time, the
-- OHLC and volume columns). Until something defines it (`lake compare` loads the Quantclass files;
-- from Python: CREATE OR REPLACE VIEW reference AS ...), it is empty.
-- Equal values count as 0 error (also 0 = 0); a reference candle we lack has no error and shows in
-- `missing`; a NaN value (either side) has no error either, as the seed's pandas max skips NaN
-- (DuckDB's max would rank it above every error); max_rel_error is NULL when no value of that
-- symbol and offset was compared. Only the reference's candles are here: ours it has no row of
-- (`extra`, `unreferenced_symbols`) are counted by `lake compare`, which reads only the offsets of
-- the reference's hours for them.
CREATE VIEW IF NOT EXISTS reference AS
SELECT
    NULL::VARCHAR AS trade_type,
    NULL::VARCHAR AS "interval",
    NULL::VARCHAR AS "offset",
    NULL::VARCHAR AS symbol,
    NULL::TIMESTAMPTZ AS candle_begin_time,
    NULL::DOUBLE AS open,
    NULL::DOUBLE AS high,
    NULL::DOUBLE AS low,
    NULL::DOUBLE AS close,
    NULL::DOUBLE AS volume,
    NULL::DOUBLE AS quote_volume,
    NULL::BIGINT AS trade_num,
    NULL::DOUBLE AS taker_buy_base_asset_volume,
    NULL::DOUBLE AS taker_buy_quote_asset_volume
WHERE false;

CREATE OR REPLACE MACRO lake_rel_error(ours, theirs) AS
    CASE
        WHEN ours IS NULL OR theirs IS NULL OR isnan(ours::DOUBLE) OR isnan(theirs::DOUBLE) THEN NULL
        WHEN ours = theirs THEN 0.0
        WHEN theirs = 0 THEN 'inf'::DOUBLE
        ELSE abs(ours::DOUBLE / theirs::DOUBLE - 1.0)
    END;

CREATE OR REPLACE VIEW compare AS
WITH per_series AS (
    SELECT
        r.trade_type,
        r."interval",
        r."offset",
        r.symbol,
        count(*) AS reference_rows,
        count(o.candle_begin_time) AS matched,
        max(lake_rel_error(o.open, r.open)) AS open,
        max(lake_rel_error(o.close, r.close)) AS close,
        max(lake_rel_error(o.high, r.high)) AS high,
        max(lake_rel_error(o.low, r.low)) AS low,
        max(lake_rel_error(o.volume, r.volume)) AS volume,
        max(lake_rel_error(o.quote_volume, r.quote_volume)) AS quote_volume,
        max(lake_rel_error(o.trade_num, r.trade_num)) AS trade_num,
        max(lake_rel_error(o.taker_buy_base_asset_volume, r.taker_buy_base_asset_volume))
            AS taker_buy_base_asset_volume,
        max(lake_rel_error(o.taker_buy_quote_asset_volume, r.taker_buy_quote_asset_volume))
            AS taker_buy_quote_asset_volume
    FROM reference AS r
    LEFT JOIN offsets AS o
        ON o.trade_type = r.trade_type
        AND o."interval" = r."interval"
        AND o."offset" = r."offset"
        AND o.symbol = r.symbol
        AND o.candle_begin_time = r.candle_begin_time
    GROUP BY r.trade_type, r."interval", r."offset", r.symbol
)
SELECT
    trade_type,
    "interval",
    "offset",
    symbol,
    "column",
    max_rel_error,
    reference_rows,
    matched,
    reference_rows - matched AS missing
FROM per_series
UNPIVOT INCLUDE NULLS (
    max_rel_error FOR "column" IN (
        open, close, high, low, volume, quote_volume, trade_num,
        taker_buy_base_asset_volume, taker_buy_quote_asset_volume
    )
);
