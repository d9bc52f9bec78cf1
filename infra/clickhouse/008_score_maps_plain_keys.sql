-- skyloop warehouse, version 8: the per-detector maps of scores keyed by plain String.
--
-- Measured on chdb 26.9 (ClickHouse's engine in process), 100,000 scores inserted into the
-- ReplacingMergeTree: 5.8 µs per row with Map(LowCardinality(String), ...) keys, 2.1 µs with
-- Map(String, ...); the rows must be put in sort-key order before a part is written, and
-- permuting maps of LowCardinality keys took most of the insert. Three detector names per row
-- gain nothing from a dictionary. Queries read the maps as before (scores['knn']).
-- Idempotent: modifying a column to the type it has is a no-op.

ALTER TABLE scores MODIFY COLUMN scores Map(String, Float64) COMMENT 'calibrated score per detector, in [0, 1]';
ALTER TABLE scores MODIFY COLUMN raw_scores Map(String, Float64) COMMENT 'each detector''s own statistic';
ALTER TABLE scores MODIFY COLUMN thresholds Map(String, Float64) COMMENT 'detectors without a threshold (uncalibrated) are absent';
ALTER TABLE scores MODIFY COLUMN votes Map(String, UInt8);
