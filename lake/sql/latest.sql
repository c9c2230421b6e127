-- latest: the last closed candle of every (trade_type, interval, symbol): the newest stored candle
-- whose close time (open + interval) is not in the future. Zero-volume candles count: a quiet
-- interval must not move a trading symbol back in time. A delisted futures contract keeps producing
-- zero-volume "zombie" candles, so check volume (or exchange_info's status) before taking a symbol
-- with volume 0 for live; the segments view leaves such candles out.
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
