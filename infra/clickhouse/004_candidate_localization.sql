-- skyloop warehouse: who localized a candidate, how long it took, and why it is (or is not) a
-- pseudo-label (CandidateRecord, schema version 2; processors/detect).
--
-- Nullable: candidates written before the fields existed have none. Idempotent (IF NOT EXISTS),
-- as every migration must be: ClickHouse DDL is not transactional.

ALTER TABLE candidates ADD COLUMN IF NOT EXISTS detector_role Nullable(String) AFTER control_offset;
ALTER TABLE candidates ADD COLUMN IF NOT EXISTS detector_latency_ms Nullable(Float64) AFTER detector_role;
ALTER TABLE candidates ADD COLUMN IF NOT EXISTS label_reason Nullable(String) AFTER detector_latency_ms;
ALTER TABLE candidates ADD COLUMN IF NOT EXISTS sample_id Nullable(String) AFTER label_reason;
