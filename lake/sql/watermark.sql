-- watermark: readiness of each live feed (`lake live`), one row per (trade_type, interval).
-- `watermark` is the candle_begin_time of the last period for which every live symbol's candle is
-- stored (or confirmed absent by the exchange), and every earlier period since the feed started:
-- candles with candle_begin_time <= watermark will not change. It only moves forward and is written
-- after the data it covers. `next_open`: the first period not yet guaranteed; `updated_at`: the
-- exchange's (server) time of the update.
--
-- Files: _meta/live/<trade_type>/<interval>.json (one JSON object each, replaced atomically).
-- A `lake live --symbols …` run speaks only for its symbols: its watermark is kept apart
-- (_meta/live/<trade_type>/subsets/, see `lake status`) and is not in this view.
--
--   SELECT k.* FROM klines k JOIN watermark w USING (trade_type, "interval")
--   WHERE k.candle_begin_time <= w.watermark;          -- only complete periods
CREATE OR REPLACE VIEW watermark AS
SELECT
    trade_type,
    "interval",
    to_timestamp(watermark_ms / 1000.0) AS watermark,
    next_open::TIMESTAMPTZ AS next_open,
    symbols,
    to_timestamp(updated_at_ms / 1000.0) AS updated_at,
    watermark_ms
FROM read_json(
    getvariable('lake_root') || '/_meta/live/*/*.json',
    format = 'unstructured',
    columns = {
        trade_type: 'VARCHAR', "interval": 'VARCHAR', watermark_ms: 'BIGINT', next_open: 'VARCHAR',
        symbols: 'BIGINT', updated_at_ms: 'BIGINT'
    }
);
