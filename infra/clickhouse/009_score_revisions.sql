-- skyloop warehouse, version 9: revised decisions (issue: revision since the change point).
--
-- When a drift is confirmed, the controller decides the images served between its change point
-- and the recalibration again under the recalibration and publishes one ScoreRevision per image
-- on scores.revised (ARCHITECTURE.md, "Self-correction"). The live decisions stay in scores as
-- they were published; score_revisions keeps every revision, one row per (image_id,
-- model_version, revision): a re-delivered revision replaces itself, a later revision of the
-- same image is another row. score_revisions_latest is each image's latest revision; the views
-- on it give the corrected catalogue:
--   scores_revised      every scores row with its latest revision applied (revision 0: never
--                       revised; live_is_candidate: the decision as served);
--   candidates_revised  every candidates row, withdrawn = 1 when its latest revision no longer
--                       flags it.
-- A revision that flags an image the live decision did not (a candidate it adds) gets its
-- candidates row from detect, which reads the image's pixels back from the images table.
-- The hourly aggregates (version 3) count the live decisions: revisions do not feed them.
-- Idempotent (IF NOT EXISTS), as every migration must be.

CREATE TABLE IF NOT EXISTS score_revisions
(
    image_id               String,
    source                 LowCardinality(String),
    model_version          LowCardinality(String),
    revision               UInt32 COMMENT 'the lane''s revision number, 1 for its first',
    scores                 Map(String, Float64) COMMENT 'calibrated score per detector under the revising calibration',
    raw_scores             Map(String, Float64),
    thresholds             Map(String, Float64),
    votes                  Map(String, UInt8),
    ensemble_score         Float64,
    votes_for              UInt16,
    votes_needed           UInt16,
    is_candidate           UInt8 COMMENT 'the revised decision',
    was_candidate          UInt8 COMMENT 'the decision as served live',
    calibration_id         String COMMENT 'the calibration.updated it was revised under',
    revised_calibration_id Nullable(String) COMMENT 'the calibration the live decision was made under',
    revision_event_id      String COMMENT 'the decisions.revised event with the evidence',
    revised_at             DateTime64(3, 'UTC'),
    kafka_topic            LowCardinality(String),
    kafka_partition        Int32,
    kafka_offset           Int64,
    ingested_at            DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (image_id, model_version, revision)
COMMENT 'scores.revised: served decisions decided again after a drift; one row per image, model and revision';

CREATE VIEW IF NOT EXISTS score_revisions_latest AS
SELECT
    image_id,
    model_version,
    max(revision) AS latest,
    argMax(is_candidate, revision) AS latest_is_candidate,
    argMax(ensemble_score, revision) AS latest_ensemble_score,
    argMax(calibration_id, revision) AS latest_calibration_id,
    argMax(revision_event_id, revision) AS latest_event_id
FROM score_revisions FINAL
GROUP BY image_id, model_version;

CREATE VIEW IF NOT EXISTS scores_revised AS
SELECT
    s.image_id AS image_id,
    s.source AS source,
    s.model_version AS model_version,
    s.role AS role,
    s.scored_at AS scored_at,
    s.calibrated AS calibrated,
    if(r.latest > 0, r.latest_is_candidate, s.is_candidate) AS is_candidate,
    if(r.latest > 0, r.latest_ensemble_score, s.ensemble_score) AS ensemble_score,
    s.is_candidate AS live_is_candidate,
    r.latest AS revision,
    r.latest_calibration_id AS revised_under,
    r.latest_event_id AS revision_event_id
FROM scores AS s FINAL
LEFT JOIN
score_revisions_latest AS r ON s.image_id = r.image_id AND s.model_version = r.model_version;

CREATE VIEW IF NOT EXISTS candidates_revised AS
SELECT
    c.*,
    toUInt8(r.latest > 0 AND r.latest_is_candidate = 0) AS withdrawn,
    r.latest AS revision,
    r.latest_event_id AS revision_event_id
FROM candidates AS c FINAL
LEFT JOIN
score_revisions_latest AS r ON c.image_id = r.image_id AND c.model_version = r.model_version;
