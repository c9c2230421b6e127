-- segments: each series split into listing segments, the way `lake audit` splits it (lostleaf's BHDS
-- rule). Only candles with trades (volume > 0) count: zero-volume candles repeat the last trade's
-- close, and a delisted futures contract keeps producing them ("zombie" candles). Between two traded
-- candles, a hole of at least 2 days, or of at least 1 day with a price jump of 10% or more between
-- the close before it and the open after it, starts a new segment (a delisting and a later relisting).
-- A candle fills the slot its open time falls in (2018 candles may open off the grid), so a hole is
-- measured between slots, and 1M slots are calendar months.
-- segment counts from 0 per (trade_type, interval, symbol); first_open and last_open are its first
-- and last traded candles; candles counts every stored candle between them, zero-volume ones too.
-- Zero-volume candles outside every segment (a zombie tail after delisting) are in none.
CREATE OR REPLACE VIEW segments AS
WITH slots AS (
    SELECT
        k.trade_type,
        k."interval",
        k.symbol,
        k.candle_begin_time,
        k.open,
        k.close,
        k.volume > 0 AS traded,
        i.ms,
        kline_slot_ms(k.candle_begin_time, k."interval", i.ms) AS slot_ms
    FROM klines AS k
    JOIN intervals AS i USING ("interval")
),
steps AS (
    -- for every candle, the slot and close of the previous traded candle
    SELECT
        *,
        last_value(CASE WHEN traded THEN slot_ms END IGNORE NULLS) OVER w AS prev_slot_ms,
        last_value(CASE WHEN traded THEN close END IGNORE NULLS) OVER w AS prev_close
    FROM slots
    WINDOW w AS (
        PARTITION BY trade_type, "interval", symbol ORDER BY candle_begin_time
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    )
),
marked AS (
    SELECT
        *,
        CASE
            WHEN NOT traded OR prev_slot_ms IS NULL THEN 0
            ELSE slot_ms - CASE
                WHEN ms IS NOT NULL THEN prev_slot_ms + ms
                ELSE epoch_ms(make_timestamp(prev_slot_ms * 1000) + INTERVAL 1 MONTH)  -- naive UTC
            END
        END AS hole_ms
    FROM steps
),
numbered AS (
    SELECT
        *,
        sum(
            CASE
                WHEN hole_ms >= 2 * 86400000 THEN 1
                WHEN hole_ms >= 86400000 AND prev_close > 0 AND abs(open / prev_close - 1) >= 0.10 THEN 1
                ELSE 0
            END
        ) OVER (
            PARTITION BY trade_type, "interval", symbol ORDER BY candle_begin_time
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        )::BIGINT AS segment
    FROM marked
),
bounded AS (
    SELECT
        *,
        min(candle_begin_time) FILTER (WHERE traded) OVER s AS first_open,
        max(candle_begin_time) FILTER (WHERE traded) OVER s AS last_open
    FROM numbered
    WINDOW s AS (PARTITION BY trade_type, "interval", symbol, segment)
)
SELECT
    trade_type,
    "interval",
    symbol,
    segment,
    first_open,
    last_open,
    count(*) AS candles
FROM bounded
WHERE candle_begin_time BETWEEN first_open AND last_open
GROUP BY trade_type, "interval", symbol, segment, first_open, last_open;
