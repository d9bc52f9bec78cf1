-- skyloop warehouse, version 7: scores land through ClickHouse's own Avro parser.
--
-- The sink inserts batches of ScoreRecord bodies as an Avro container file (FORMAT Avro) into
-- scores_landing, whose writer schema is the Kafka topic and coordinates (partition and offset
-- as one 12-byte fixed: little-endian Int32 then Int64) followed by every ScoreRecord field
-- (processors.sink.landing). The table keeps nothing (engine Null); its view builds each
-- scores row exactly as processors.sink.rows.score_row does: per-detector maps keyed by the
-- detector name in record order, thresholds only where set, the embedding and the optional
-- image left out (ClickHouse skips Avro fields without a column). Views on scores (the hourly
-- aggregates of version 3) see these rows as any other insert into scores.
-- Idempotent (IF NOT EXISTS), as every migration must be: ClickHouse DDL is not transactional.

CREATE TABLE IF NOT EXISTS scores_landing
(
    kafka_topic       String,
    kafka_coordinates FixedString(12),
    image_id        String,
    source          String,
    model_version   String,
    backbone        String,
    role            String,
    detectors       Array(Tuple(detector String, raw Float64, score Float64, threshold Nullable(Float64), vote Bool)),
    ensemble_score  Float64,
    votes_for       Int32,
    votes_needed    Int32,
    is_candidate    Bool,
    calibrated      Bool,
    batch_size      Int32,
    latency_ms      Float64,
    control_offset  Int64,
    scored_at       DateTime64(3, 'UTC')
)
ENGINE = Null
COMMENT 'ScoreRecord bodies in Avro as the sink receives them; scores_landing_mv turns them into scores rows';

CREATE MATERIALIZED VIEW IF NOT EXISTS scores_landing_mv TO scores AS
SELECT
    image_id,
    source,
    model_version,
    backbone,
    role,
    mapFromArrays(detectors.detector, detectors.score) AS scores,
    mapFromArrays(detectors.detector, detectors.raw) AS raw_scores,
    mapFromArrays(
        arrayFilter(d -> d.threshold IS NOT NULL, detectors).detector,
        arrayMap(d -> assumeNotNull(d.threshold), arrayFilter(d -> d.threshold IS NOT NULL, detectors))
    ) AS thresholds,
    mapFromArrays(detectors.detector, arrayMap(d -> toUInt8(d.vote), detectors)) AS votes,
    ensemble_score,
    votes_for,
    votes_needed,
    toUInt8(is_candidate) AS is_candidate,
    toUInt8(calibrated) AS calibrated,
    batch_size,
    latency_ms,
    control_offset,
    scored_at,
    kafka_topic,
    reinterpretAsInt32(substring(kafka_coordinates, 1, 4)) AS kafka_partition,
    reinterpretAsInt64(substring(kafka_coordinates, 5, 8)) AS kafka_offset
FROM scores_landing;
