-- empty_ranges: time ranges in which the exchange confirmed a series has no candles (maintenance, no
-- trading), one row per range: candles opening in [range_start, range_end) do not exist.
--
-- Backfills record them when REST confirms a hole empty (lake/store/meta.py), so that later runs do
-- not refetch them and `coverage` can tell an exchange hole from missing data.
--
-- Files: _meta/empty/klines/trade_type=<tt>/interval=<iv>/symbol=<SYM>.json, each a JSON array of
-- [start_ms, end_ms] pairs.
CREATE OR REPLACE VIEW empty_ranges AS
SELECT
    trade_type,
    "interval",
    regexp_extract(filename, 'symbol=([^/]*)\.json$', 1) AS symbol,
    make_timestamptz(json[1] * 1000) AS range_start,
    make_timestamptz(json[2] * 1000) AS range_end
FROM read_json(
    getvariable('lake_root') || '/_meta/empty/klines/*/*/*.json',
    format = 'array',
    records = false,
    columns = {'json': 'BIGINT[]'},
    hive_partitioning = true,
    hive_types = {'trade_type': VARCHAR, 'interval': VARCHAR},
    filename = true
);
