-- offsets_tail: the recent bins of the offsets table, of many series per file, until a build folds
-- them into offsets_partitions (lake/transform/tail.py has the rules; this is the same rule).
--
-- Files: offsets_tail/trade_type=<tt>/interval=<T>/<version>.parquet, immutable, later names newer.
-- A file holds per symbol a *layer* (a coverage row: "offset" NULL, tail_from = its start; then all
-- the symbol's bins opening at or after it) and/or a *fold marker* ("offset" and tail_from NULL: the
-- symbol's rows in older files are in the period files now). A layer counts if its file is not older
-- than the symbol's newest marker, and its bins count before the earliest start of a newer counting
-- layer of the symbol, so each bin is visible once and the newest version wins. The files are read
-- once per query (MATERIALIZED) so every use sees the same ones.
CREATE OR REPLACE VIEW offsets_tail AS
WITH tail_rows AS MATERIALIZED (
    SELECT *
    FROM read_parquet(
        [
            getvariable('lake_root') || '/_meta/schema/offsets_tail/trade_type=_/interval=_/schema.parquet',  -- first: see lake/store/schema_files.py
            getvariable('lake_root') || '/offsets_tail/*/*/*.parquet'
        ],
        hive_partitioning = true,
        hive_types = {'trade_type': VARCHAR, 'interval': VARCHAR},
        filename = true
    )
),
folded AS (
    SELECT trade_type, "interval", symbol, max(filename) AS upto
    FROM tail_rows
    WHERE "offset" IS NULL AND tail_from IS NULL
    GROUP BY ALL
),
layers AS (
    SELECT
        c.trade_type,
        c."interval",
        c.symbol,
        c.filename,
        min(c.tail_from) OVER (
            PARTITION BY c.trade_type, c."interval", c.symbol
            ORDER BY c.filename
            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING
        ) AS cut
    FROM tail_rows AS c
    LEFT JOIN folded AS f USING (trade_type, "interval", symbol)
    WHERE c."offset" IS NULL AND c.tail_from IS NOT NULL AND (f.upto IS NULL OR c.filename >= f.upto)
)
SELECT
    r.trade_type,
    r."interval",
    r."offset",
    r.symbol,
    r.candle_begin_time,
    r.open,
    r.high,
    r.low,
    r.close,
    r.volume,
    r.quote_volume,
    r.trade_num,
    r.taker_buy_base_asset_volume,
    r.taker_buy_quote_asset_volume,
    r.n_base
FROM tail_rows AS r
JOIN layers AS l USING (trade_type, "interval", symbol, filename)
WHERE r."offset" IS NOT NULL AND (l.cut IS NULL OR r.candle_begin_time < l.cut);
