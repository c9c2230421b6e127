-- empty_ranges: time ranges in which the exchange confirmed a series has no candles (maintenance, no
-- trading), one row per range: candles opening in [range_start, range_end) do not exist.
--
-- Backfills record them when REST confirms a hole empty (lake/store/meta.py), so that later runs do
-- not refetch them and `coverage` can tell an exchange hole from missing data.
--
-- Files: _meta/empty/klines/trade_type=<tt>/interval=<iv>/symbol=<SYM>.json, each a JSON array of
-- [start_ms, end_ms] pairs. A file that is not such an array (damaged: it is only a cache of what
-- the exchange answered) is passed over, as lake.store.meta does, instead of failing every query
-- of coverage: read as bytes, cast, and kept only when every element is a pair. Ranges that overlap
-- or touch (a file edited by hand; lake's writers merge them) are merged, as lake.store.meta does,
-- so that coverage never counts a slot twice.
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
),
pairs AS (
    SELECT k.trade_type AS tt, k."interval" AS iv, k.symbol AS sym, pair[1] AS a, pair[2] AS b
    FROM ranges
    WHERE pair[2] > pair[1]
),
marked AS (
    SELECT
        *,
        -- 1 where a range starts after every earlier one ended: the first range of a merged one
        CASE
            WHEN a <= max(b) OVER (
                PARTITION BY tt, iv, sym ORDER BY a, b ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
            ) THEN 0
            ELSE 1
        END AS opens
    FROM pairs
),
numbered AS (
    SELECT *, sum(opens) OVER (PARTITION BY tt, iv, sym ORDER BY a, b ROWS UNBOUNDED PRECEDING) AS n
    FROM marked
)
SELECT
    tt AS trade_type,
    iv AS "interval",
    sym AS symbol,
    make_timestamptz(min(a) * 1000) AS range_start,
    make_timestamptz(max(b) * 1000) AS range_end
FROM numbered
GROUP BY tt, iv, sym, n;
