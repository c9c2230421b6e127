-- offsets: candles of a target interval at every offset, resampled from a base interval
-- (`lake offsets`; semantics in docs/offsets.md). One row per (trade_type, interval, offset, symbol,
-- candle_begin_time); offset is its name ('0m', '5m', … '55m' for 1h from 5m), n_base the number of
-- base candles the bin holds.
--
-- The period files (offsets_partitions) hold each series' bins before its tail start, the tail
-- (offsets_tail) those from it on, so the two never share a bin. (While a build folds a series'
-- tail into its period files, a query can see the folded bins twice, for the duration of one batch
-- of writes: docs/offsets.md.)
CREATE OR REPLACE VIEW offsets AS
SELECT * FROM offsets_partitions
UNION ALL BY NAME
SELECT * FROM offsets_tail;
