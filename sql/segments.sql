-- segments: each series split into listing segments, the way `lake audit` splits it: a hole of at
-- least 2 days, or of at least 1 day with a price jump of 10% or more between the close before it and
-- the open after it, starts a new segment (a delisting and a later relisting; lostleaf's BHDS rule).
-- segment counts from 0 per (trade_type, interval, symbol).
CREATE OR REPLACE VIEW segments AS
WITH steps AS (
    SELECT
        k.trade_type,
        k."interval",
        k.symbol,
        k.candle_begin_time,
        k.open,
        lag(k.close) OVER w AS prev_close,
        epoch_ms(k.candle_begin_time) - epoch_ms(lag(k.candle_begin_time) OVER w)
            - coalesce(i.ms, 2592000000) AS hole_ms
    FROM klines AS k
    JOIN intervals AS i USING ("interval")
    WINDOW w AS (PARTITION BY k.trade_type, k."interval", k.symbol ORDER BY k.candle_begin_time)
),
marked AS (
    SELECT
        *,
        CASE
            WHEN hole_ms >= 2 * 86400000 THEN 1
            WHEN hole_ms >= 86400000 AND prev_close > 0 AND abs(open / prev_close - 1) >= 0.10 THEN 1
            ELSE 0
        END AS starts_segment
    FROM steps
),
numbered AS (
    SELECT
        *,
        sum(starts_segment) OVER (
            PARTITION BY trade_type, "interval", symbol ORDER BY candle_begin_time
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS segment
    FROM marked
)
SELECT
    trade_type,
    "interval",
    symbol,
    segment,
    min(candle_begin_time) AS first_open,
    max(candle_begin_time) AS last_open,
    count(*) AS candles
FROM numbered
GROUP BY trade_type, "interval", symbol, segment;
