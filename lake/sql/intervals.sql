-- intervals: every Binance kline interval and its length (the list in lake/binance/intervals.py).
-- ms is NULL for 1M, a calendar month; months is 1 for it. Used by coverage and latest.
CREATE OR REPLACE VIEW intervals AS
SELECT * FROM (
    VALUES
        ('1s', 1000, NULL),
        ('1m', 60000, NULL),
        ('3m', 180000, NULL),
        ('5m', 300000, NULL),
        ('15m', 900000, NULL),
        ('30m', 1800000, NULL),
        ('1h', 3600000, NULL),
        ('2h', 7200000, NULL),
        ('4h', 14400000, NULL),
        ('6h', 21600000, NULL),
        ('8h', 28800000, NULL),
        ('12h', 43200000, NULL),
        ('1d', 86400000, NULL),
        ('3d', 259200000, NULL),
        ('1w', 604800000, NULL),
        ('1M', NULL, 1)
) AS t("interval", ms, months);

-- kline_slot_ms(t, interval, ms): the open time (ms since the epoch, UTC) of the interval slot a
-- candle opening at t fills. A candle may open off the grid (Binance's 2018 history has opens at
-- 09:28:14.789), so holes are counted between slots. 1w slots start on Mondays (1970-01-05 is the
-- first), 1M slots on the 1st of a UTC month whatever the session's time zone. Used by coverage and
-- segments.
CREATE OR REPLACE MACRO kline_slot_ms(t, iv, ms) AS CASE
    WHEN ms IS NOT NULL THEN
        epoch_ms(t) - (epoch_ms(t) - CASE WHEN iv = '1w' THEN 345600000 ELSE 0 END) % ms
    ELSE epoch_ms(timezone('UTC', date_trunc('month', timezone('UTC', t))))
END;

-- slot_opens_before(t, a, ms): how many slots of the grid through a (an open time, ms since the
-- epoch) open in [a, t); ms NULL: calendar months (a on the 1st of a UTC month). Used by coverage to
-- count the parts of a hole.
CREATE OR REPLACE MACRO slot_opens_before(t, a, ms) AS CASE
    WHEN t <= a THEN 0
    WHEN ms IS NOT NULL THEN (t - a + ms - 1) // ms
    ELSE date_diff('month', make_timestamp(a * 1000), make_timestamp(t * 1000))
        + CASE WHEN make_timestamp(t * 1000) > date_trunc('month', make_timestamp(t * 1000)) THEN 1 ELSE 0 END
END;
