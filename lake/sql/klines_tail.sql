-- klines_tail: candles `lake live` stored moments ago, many symbols per file, not yet compacted into
-- their partition (see lake/store/tail.py). A candle can be here and in klines_partitions at once for
-- a short while after compaction; the `klines` view counts it once.
--
-- Files: klines_tail/trade_type=<tt>/interval=<iv>/<ns>-<pid>-<rand>.parquet (symbol is a column,
-- tail_seq the time the file was written). A file whose contents are recorded in its directory's
-- _compacted.json ({"<file>#<tail_seq>": unix time}) more than getvariable('tail_settled_s')
-- seconds ago (lake.store.tail.SETTLED_S) is skipped: its candles are in the partitions, where a
-- later write must not be hidden by this older copy until the file is retired (emptied, its name
-- reused later, so a query never finds a file it listed gone).
CREATE OR REPLACE VIEW klines_tail AS
WITH compacted AS (
    SELECT regexp_replace(b.filename, '[^/]*$', '') || f.name AS path
    FROM read_blob(getvariable('lake_root') || '/klines_tail/*/*/_compacted.json') AS b,
        unnest(json_keys(decode(b.content))) AS f(name)
    WHERE epoch(now()) - (decode(b.content)::JSON ->> f.name)::DOUBLE > getvariable('tail_settled_s')
)
SELECT
    trade_type,
    "interval",
    symbol,
    candle_begin_time,
    open,
    high,
    low,
    close,
    volume,
    quote_volume,
    trade_num,
    taker_buy_base_asset_volume,
    taker_buy_quote_asset_volume,
    source
FROM read_parquet(
    [
        getvariable('lake_root') || '/_meta/schema/klines_tail.v2/trade_type=_/interval=_/schema.parquet',  -- first: see lake/store/schema_files.py
        getvariable('lake_root') || '/klines_tail/*/*/*.parquet'
    ],
    hive_partitioning = true,
    hive_types = {'trade_type': VARCHAR, 'interval': VARCHAR},
    filename = true
)
WHERE filename || '#' || tail_seq NOT IN (SELECT path FROM compacted)
-- Two tail files can hold the same candle (a late websocket message, a REST repair): the later
-- file (tail_seq) wins.
QUALIFY row_number() OVER (
    PARTITION BY trade_type, "interval", symbol, candle_begin_time ORDER BY tail_seq DESC, filename DESC
) = 1;
