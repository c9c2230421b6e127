-- latest: the last closed candle with trades of every (trade_type, interval, symbol): the newest
-- stored candle whose close time (open + interval) is not in the future and whose volume is > 0.
-- Zero-volume candles are skipped: a delisted futures contract keeps producing them ("zombie"
-- candles, OHLC frozen at the last trade), which would make it look live; for a symbol that merely
-- had a quiet interval, the candle shown is the last one with a trade (its close is the same price).
CREATE OR REPLACE VIEW latest AS
SELECT k.*
FROM klines AS k
JOIN intervals AS i USING ("interval")
WHERE k.volume > 0
  AND CASE
    WHEN i.ms IS NOT NULL THEN k.candle_begin_time + to_milliseconds(i.ms) <= now()
    ELSE k.candle_begin_time + to_months(i.months) <= now()
END
QUALIFY row_number() OVER (
    PARTITION BY k.trade_type, k."interval", k.symbol ORDER BY k.candle_begin_time DESC
) = 1;
