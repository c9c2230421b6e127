-- latest: the last closed candle of every (trade_type, interval, symbol): the newest stored candle
-- (lake stores only closed candles: backfills stop before the forming one, live stores x=true
-- events). No wall-clock filter: against the simulator, whose clock may run ahead of this machine's,
-- one hid every candle newer than local time. Zero-volume candles count: a quiet interval must not
-- move a trading symbol back in time. A delisted futures contract keeps producing zero-volume
-- "zombie" candles, so check volume (or exchange_info's status) before taking a symbol with volume 0
-- for live; the segments view leaves such candles out.
CREATE OR REPLACE VIEW latest AS
SELECT k.*
FROM klines AS k
QUALIFY row_number() OVER (
    PARTITION BY k.trade_type, k."interval", k.symbol ORDER BY k.candle_begin_time DESC
) = 1;
