-- coverage: per (trade_type, interval, symbol) the first and last stored candle, how many there are,
-- how many an unbroken series would have, and the holes between first and last.
--
-- A hole is a run of missing candles; holes counts the runs, missing the candles, largest_hole the
-- longest run. Holes the exchange confirmed empty (maintenance) are counted too: `lake status`
-- tells them apart.
CREATE OR REPLACE VIEW coverage AS
WITH gaps AS (
    SELECT
        k.trade_type,
        k."interval",
        k.symbol,
        k.candle_begin_time,
        CASE
            WHEN i.ms IS NOT NULL THEN
                (epoch_ms(k.candle_begin_time)
                 - epoch_ms(lag(k.candle_begin_time) OVER w)) // i.ms - 1
            ELSE date_diff('month', lag(k.candle_begin_time) OVER w, k.candle_begin_time) - 1
        END AS gap
    FROM klines AS k
    JOIN intervals AS i USING ("interval")
    WINDOW w AS (PARTITION BY k.trade_type, k."interval", k.symbol ORDER BY k.candle_begin_time)
)
SELECT
    trade_type,
    "interval",
    symbol,
    min(candle_begin_time) AS first_open,
    max(candle_begin_time) AS last_open,
    count(*) AS candles,
    count(*) + coalesce(sum(gap), 0) AS expected,
    coalesce(sum(gap), 0) AS missing,
    count(*) FILTER (WHERE gap > 0) AS holes,
    coalesce(max(gap), 0) AS largest_hole
FROM gaps
GROUP BY trade_type, "interval", symbol;
