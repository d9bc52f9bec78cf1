-- skyloop warehouse, version 6: each cross-match's magnitude and kind (CrossMatch.magnitude, .kind).
--
-- Arrays parallel to candidates.crossmatches (element i describes crossmatches[i]), so the tuple
-- type of crossmatches, and every query that reads it, stays as it was. Candidates written before
-- have empty arrays; a match whose catalog gives no magnitude or kind has NULL there.
-- "Next to a bright star": a match of kind 'star' with a magnitude <= 14 within its
-- magnitude-scaled radius (processors.detect.crossmatch.near_bright_star).
-- Idempotent (IF NOT EXISTS), as every migration must be: ClickHouse DDL is not transactional.

ALTER TABLE candidates ADD COLUMN IF NOT EXISTS crossmatch_magnitudes Array(Nullable(Float64)) AFTER crossmatches;
ALTER TABLE candidates ADD COLUMN IF NOT EXISTS crossmatch_kinds Array(Nullable(String)) AFTER crossmatch_magnitudes;
