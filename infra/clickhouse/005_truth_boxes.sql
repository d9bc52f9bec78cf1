-- skyloop warehouse: where a synthetic image's anomalies are (GroundTruth.boxes), so localization
-- can be scored against truth in SQL and by tools/bench/learning.py. Never read by scoring.
--
-- Empty for real images and for images written before the field existed. Idempotent.

ALTER TABLE images ADD COLUMN IF NOT EXISTS truth_boxes Array(Tuple(
    label LowCardinality(String), x1 Float64, y1 Float64, x2 Float64, y2 Float64
)) AFTER truth_segment;
