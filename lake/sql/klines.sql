-- klines: every stored candle, one row per (trade_type, interval, symbol, candle_begin_time).
--
-- The partition files (klines_partitions) plus the live tail (klines_tail): a candle in the tail
-- replaces the same candle in a partition, so a candle being compacted from the tail into its
-- partition is counted once. The tail is read once per query (MATERIALIZED) so both uses see the
-- same files. When the lake has no tail (no `lake live` yet) lake.connect() defines klines as
-- klines_partitions alone.
CREATE OR REPLACE VIEW klines AS
WITH tail AS MATERIALIZED (SELECT * FROM klines_tail)
SELECT p.*
FROM klines_partitions AS p
ANTI JOIN tail USING (trade_type, "interval", symbol, candle_begin_time)
UNION ALL BY NAME
SELECT * FROM tail;
