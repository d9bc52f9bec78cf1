-- skyloop warehouse, version 1: one table per topic (ARCHITECTURE.md, "Topology").
-- earlier checksum: 3e7530a49b43bf320d95de2aea7048357b79a0cc65fd2b99cb79b5880fe2f74d
--
-- Every table is a ReplacingMergeTree whose ORDER BY is the record's identity
-- (ARCHITECTURE.md, "Guarantees"), so a re-delivered message replaces its earlier copy; the
-- version column is ingested_at (the latest write wins). Merges are eventual: queries that
-- count use FINAL, and `SELECT count() FROM <table> FINAL` is the number of distinct records.
-- No PARTITION BY on purpose: ReplacingMergeTree only deduplicates within a partition, and
-- every time column in a record may differ between two deliveries of "the same" record.
-- Timestamps are DateTime64(3, 'UTC') (Avro timestamp-millis). kafka_* is where the row was
-- read from, for replays and audits. Statements are idempotent (IF NOT EXISTS): ClickHouse DDL
-- is not transactional, so a failed migration is re-run from its first statement.

CREATE TABLE IF NOT EXISTS images
(
    image_id         String,
    source           LowCardinality(String),
    survey           LowCardinality(String),
    ra               Nullable(Float64) COMMENT 'degrees, ICRS',
    dec              Nullable(Float64) COMMENT 'degrees, ICRS',
    observed_at      DateTime64(3, 'UTC'),
    fetched_at       DateTime64(3, 'UTC'),
    format           LowCardinality(String) COMMENT 'fits, png or jpeg',
    width            UInt32,
    height           UInt32,
    bands            UInt16,
    pixels           String CODEC(ZSTD(3)) COMMENT 'encoded cutout as on the topic; empty when only uri is set',
    uri              Nullable(String),
    provenance       Map(LowCardinality(String), String),
    truth_is_anomaly Nullable(UInt8) COMMENT 'synthetic sources only; NULL = unknown',
    truth_kind       Nullable(String),
    truth_segment    Nullable(String),
    kafka_topic      LowCardinality(String),
    kafka_partition  Int32,
    kafka_offset     Int64,
    ingested_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY image_id
COMMENT 'images.raw: one row per image_id (sha256 of source and pixels)';

CREATE TABLE IF NOT EXISTS scores
(
    image_id        String,
    source          LowCardinality(String),
    model_version   LowCardinality(String),
    backbone        LowCardinality(String),
    role            LowCardinality(String) COMMENT 'production, shadow or canary',
    scores          Map(LowCardinality(String), Float64) COMMENT 'calibrated score per detector, in [0, 1]',
    raw_scores      Map(LowCardinality(String), Float64) COMMENT 'each detector''s own statistic',
    thresholds      Map(LowCardinality(String), Float64) COMMENT 'detectors without a threshold (uncalibrated) are absent',
    votes           Map(LowCardinality(String), UInt8),
    ensemble_score  Float64,
    votes_for       UInt16,
    votes_needed    UInt16,
    is_candidate    UInt8,
    calibrated      UInt8,
    batch_size      UInt32,
    latency_ms      Float64,
    control_offset  Int64 COMMENT 'offset of the last control event applied; -1 before any',
    scored_at       DateTime64(3, 'UTC'),
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (image_id, model_version, role)
COMMENT 'scores: one row per (image_id, model_version, role); the embedding is not stored';

CREATE TABLE IF NOT EXISTS candidates
(
    image_id               String,
    source                 LowCardinality(String),
    model_version          LowCardinality(String),
    ensemble_score         Float64,
    detector_scores        Map(LowCardinality(String), Float64),
    ra                     Nullable(Float64),
    dec                    Nullable(Float64),
    boxes                  Array(Tuple(
                               label LowCardinality(String),
                               confidence Float64,
                               x1 Float64, y1 Float64, x2 Float64, y2 Float64)),
    crossmatches           Array(Tuple(
                               catalog LowCardinality(String),
                               object_id String,
                               separation_arcsec Float64)),
    label_status           LowCardinality(String) COMMENT 'pending, pseudo_label or rejected',
    detector_model_version Nullable(String),
    detected_at            DateTime64(3, 'UTC'),
    control_offset         Int64,
    kafka_topic            LowCardinality(String),
    kafka_partition        Int32,
    kafka_offset           Int64,
    ingested_at            DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (image_id, model_version)
COMMENT 'candidates: one row per (image_id, model_version); boxes and crossmatches are arrays of named tuples (arrayJoin(boxes).label)';

CREATE TABLE IF NOT EXISTS control_events
(
    event_id        String,
    type            LowCardinality(String),
    subject         String,
    at              DateTime64(3, 'UTC'),
    issued_by       LowCardinality(String),
    params          String COMMENT 'ControlParams as JSON, null and empty fields left out (their Avro defaults)',
    model_version   Nullable(String),
    artifact_id     Nullable(String),
    value           Nullable(Float64),
    detector        Nullable(String),
    reason          Nullable(String),
    evidence        Map(LowCardinality(String), Float64),
    caused_by       Array(String),
    kafka_topic     LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY event_id
COMMENT 'control.events: the audit trail, one row per event_id; kafka_offset is the control offset';

CREATE TABLE IF NOT EXISTS dead_letters
(
    original_topic     LowCardinality(String),
    original_partition Int32,
    original_offset    Int64,
    key                Nullable(String),
    raw                String CODEC(ZSTD(3)),
    error_class        LowCardinality(String),
    message            String,
    processor          LowCardinality(String),
    at                 DateTime64(3, 'UTC'),
    kafka_topic        LowCardinality(String),
    kafka_partition    Int32,
    kafka_offset       Int64,
    ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
-- processor and a hash of raw extend the (topic, partition, offset) identity: two processors may
-- dead-letter the same input, and failures that never had an offset (-1) must not collapse.
ORDER BY (original_topic, original_partition, original_offset, processor, cityHash64(raw))
COMMENT 'images.dlq: messages no processor could handle, kept whole';
