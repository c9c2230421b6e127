-- latest: the last closed candle of every (trade_type, interval, symbol): the newest stored candle
-- whose close time (open + interval) is not in the future.
CREATE OR REPLACE VIEW latest AS
SELECT k.*
FROM klines AS k
JOIN intervals AS i USING ("interval")
WHERE CASE
    WHEN i.ms IS NOT NULL THEN k.candle_begin_time + to_milliseconds(i.ms) <= now()
    ELSE k.candle_begin_time + to_months(i.months) <= now()
END
QUALIFY row_number() OVER (
    PARTITION BY k.trade_type, k."interval", k.symbol ORDER BY k.candle_begin_time DESC
) = 1;
