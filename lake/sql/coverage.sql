-- coverage: per (trade_type, interval, symbol) the first and last stored candle, how many there are,
-- how many an unbroken series would have, and the holes between first and last.
--
-- A hole is a run of missing candles. The parts of a hole inside ranges the exchange confirmed empty
-- (empty_ranges: maintenance, no trading) are exchange holes: their candles count in
-- exchange_missing. The other parts are missing data: holes counts those runs, missing their
-- candles, largest_hole the longest (a maintenance window with a lost candle beside it is 11
-- exchange_missing and 1 missing, as lake audit classifies it). The same rule as lake.store.coverage
-- (`lake status`).
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
    -- each hole once: the slots [a, b) from the one after a stored candle to the next stored one
    SELECT
        g.trade_type,
        g."interval",
        g.symbol,
        g.ms,
        g.gap,
        CASE
            WHEN g.ms IS NOT NULL THEN g.prev_slot_ms + g.ms
            ELSE epoch_ms(make_timestamp(g.prev_slot_ms * 1000) + INTERVAL 1 MONTH)  -- naive UTC
        END AS a,
        g.slot_ms AS b
    FROM gaps AS g
    WHERE g.gap > 0
),
inside AS (
    -- each part [x, y) of a hole inside a confirmed-empty range (a series' ranges are disjoint)
    SELECT
        h.trade_type,
        h."interval",
        h.symbol,
        h.ms,
        h.a,
        h.b,
        greatest(epoch_ms(e.range_start), h.a) AS x,
        least(epoch_ms(e.range_end), h.b) AS y
    FROM holes AS h
    JOIN empty_ranges AS e
        ON e.trade_type = h.trade_type
        AND e."interval" = h."interval"
        AND e.symbol = h.symbol
        AND epoch_ms(e.range_start) < h.b
        AND epoch_ms(e.range_end) > h.a
),
pieces AS (
    -- candles of each part: the inside parts (exchange), the missing parts before each of them and
    -- after the last, and the holes no range touches (missing whole)
    SELECT
        trade_type, "interval", symbol, TRUE AS exchange,
        slot_opens_before(y, a, ms) - slot_opens_before(x, a, ms) AS n
    FROM inside
    UNION ALL
    SELECT
        trade_type, "interval", symbol, FALSE,
        slot_opens_before(x, a, ms) - slot_opens_before(coalesce(lag(y) OVER w, a), a, ms)
    FROM inside
    WINDOW w AS (PARTITION BY trade_type, "interval", symbol, a ORDER BY x)
    UNION ALL
    SELECT trade_type, "interval", symbol, FALSE, slot_opens_before(b, a, ms) - slot_opens_before(max(y), a, ms)
    FROM inside
    GROUP BY trade_type, "interval", symbol, a, b, ms
    UNION ALL
    SELECT h.trade_type, h."interval", h.symbol, FALSE, h.gap
    FROM holes AS h
    ANTI JOIN inside AS i USING (trade_type, "interval", symbol, a)
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
        coalesce(sum(n) FILTER (WHERE NOT exchange), 0)::BIGINT AS missing,
        coalesce(sum(n) FILTER (WHERE exchange), 0)::BIGINT AS exchange_missing,
        count(*) FILTER (WHERE NOT exchange) AS holes,
        coalesce(max(n) FILTER (WHERE NOT exchange), 0) AS largest_hole
    FROM pieces
    WHERE n > 0
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
