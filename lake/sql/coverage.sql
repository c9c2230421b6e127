-- coverage: per (trade_type, interval, symbol) the first and last stored candle, how many there are,
-- how many an unbroken series would have, and the holes between first and last.
--
-- A hole is a run of missing candles. A hole that lies inside a range the exchange confirmed empty
-- (empty_ranges: maintenance, no trading) is an exchange hole: its candles count in
-- exchange_missing. Every other hole is missing data: holes counts those runs, missing their
-- candles, largest_hole the longest. The same rule as lake.store.coverage (`lake status`).
CREATE OR REPLACE VIEW coverage AS
WITH slots AS (
    -- a candle fills the slot its open time falls in (kline_slot_ms, intervals.sql)
    SELECT
        k.trade_type,
        k."interval",
        k.symbol,
        k.candle_begin_time,
        i.ms,
        kline_slot_ms(k.candle_begin_time, k."interval", i.ms) AS slot_ms
    FROM klines AS k
    JOIN intervals AS i USING ("interval")
),
gaps AS (
    SELECT
        trade_type,
        "interval",
        symbol,
        candle_begin_time,
        ms,
        slot_ms,
        lag(slot_ms) OVER w AS prev_slot_ms,
        -- -1 for a second candle in a slot: expected (candles + gaps) still counts slots
        CASE
            WHEN ms IS NOT NULL THEN (slot_ms - lag(slot_ms) OVER w) // ms - 1
            ELSE date_diff('month', make_timestamp(lag(slot_ms) OVER w * 1000), make_timestamp(slot_ms * 1000)) - 1
        END AS gap
    FROM slots
    WINDOW w AS (PARTITION BY trade_type, "interval", symbol ORDER BY candle_begin_time)
),
holes AS (
    -- each hole once, with whether one confirmed-empty range holds all of it (the first missing
    -- open to the next stored one)
    SELECT
        g.trade_type,
        g."interval",
        g.symbol,
        g.gap,
        EXISTS (
            SELECT 1
            FROM empty_ranges AS e
            WHERE e.trade_type = g.trade_type
              AND e."interval" = g."interval"
              AND e.symbol = g.symbol
              AND epoch_ms(e.range_start) <= CASE
                  WHEN g.ms IS NOT NULL THEN g.prev_slot_ms + g.ms
                  ELSE epoch_ms(make_timestamp(g.prev_slot_ms * 1000) + INTERVAL 1 MONTH)  -- naive UTC
              END
              AND g.slot_ms <= epoch_ms(e.range_end)
        ) AS exchange
    FROM gaps AS g
    WHERE g.gap > 0
),
per_series AS (
    SELECT
        trade_type,
        "interval",
        symbol,
        min(candle_begin_time) AS first_open,
        max(candle_begin_time) AS last_open,
        count(*) AS candles,
        (count(*) + coalesce(sum(gap), 0))::BIGINT AS expected
    FROM gaps
    GROUP BY trade_type, "interval", symbol
),
per_holes AS (
    SELECT
        trade_type,
        "interval",
        symbol,
        coalesce(sum(gap) FILTER (WHERE NOT exchange), 0)::BIGINT AS missing,
        coalesce(sum(gap) FILTER (WHERE exchange), 0)::BIGINT AS exchange_missing,
        count(*) FILTER (WHERE NOT exchange) AS holes,
        coalesce(max(gap) FILTER (WHERE NOT exchange), 0) AS largest_hole
    FROM holes
    GROUP BY trade_type, "interval", symbol
)
SELECT
    s.trade_type,
    s."interval",
    s.symbol,
    s.first_open,
    s.last_open,
    s.candles,
    s.expected,
    coalesce(h.missing, 0) AS missing,
    coalesce(h.exchange_missing, 0) AS exchange_missing,
    coalesce(h.holes, 0) AS holes,
    coalesce(h.largest_hole, 0) AS largest_hole
FROM per_series AS s
LEFT JOIN per_holes AS h USING (trade_type, "interval", symbol);
