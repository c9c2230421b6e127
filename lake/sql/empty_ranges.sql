-- empty_ranges: time ranges in which the exchange confirmed a series has no candles (maintenance, no
-- trading), one row per range: candles opening in [range_start, range_end) do not exist.
--
-- Backfills record them when REST confirms a hole empty (lake/store/meta.py), so that later runs do
-- not refetch them and `coverage` can tell an exchange hole from missing data.
--
-- Files: _meta/empty/klines/trade_type=<tt>/interval=<iv>/symbol=<SYM>.json, each a JSON array of
-- [start_ms, end_ms] pairs. A file that is not such an array (damaged: it is only a cache of what
-- the exchange answered) is passed over, as lake.store.meta does, instead of failing every query
-- of coverage: read as bytes, cast, and kept only when every element is a pair.
CREATE OR REPLACE VIEW empty_ranges AS
WITH files AS (
    SELECT
        regexp_extract(
            filename,
            'trade_type=([^/]*)/interval=([^/]*)/symbol=([^/]*)\.json$',
            ['trade_type', 'interval', 'symbol']
        ) AS k,
        TRY_CAST(try(decode(content)) AS BIGINT[][]) AS pairs
    FROM read_blob(getvariable('lake_root') || '/_meta/empty/klines/*/*/*.json')
),
ranges AS (
    SELECT k, unnest(pairs) AS pair
    FROM files
    WHERE pairs IS NOT NULL
        AND k.symbol <> ''
        AND coalesce(
            list_bool_and(list_transform(pairs, lambda p: len(p) = 2 AND p[1] IS NOT NULL AND p[2] IS NOT NULL)),
            true
        )
)
SELECT
    k.trade_type AS trade_type,
    k."interval" AS "interval",
    k.symbol AS symbol,
    make_timestamptz(pair[1] * 1000) AS range_start,
    make_timestamptz(pair[2] * 1000) AS range_end
FROM ranges;
