-- skyloop warehouse, version 3: hourly per-source aggregates for the dashboards, and a
-- dead_letters identity that keeps every failure.
--
-- dead_letters: version 1 ordered by (origin topic, partition, offset, processor, hash of raw).
-- Failures with no offset of their own (-1: an image a source could not fetch or decode) and the
-- same bytes from the same origin and processor collapsed into one row. A dead letter's own place
-- on images.dlq tells two such failures apart, while a re-delivered dead letter keeps its place
-- and still replaces itself. Rows with a real origin offset keep their origin identity, so a
-- failure dead-lettered twice (a batch redelivered before its commit) stays one row.
-- The table is rebuilt: copy into dead_letters_v3, swap atomically (EXCHANGE), drop the old copy.
-- Every statement is safe to re-run from the first, whatever step a previous run stopped at:
-- the first one only drops a half-built copy or, after the swap, the old table.
--
-- Hourly aggregates: AggregatingMergeTree tables fed by materialized views on every insert, and
-- back-filled here from the rows already stored. Records may be delivered more than once, so
-- counts are uniq* states of the record identity (re-inserts and a re-run back-fill count once);
-- latency quantiles are quantile states (a duplicated row barely moves them). Read them with
-- the -Merge combinators, or through the view hourly_source_stats. Hours are UTC.

DROP TABLE IF EXISTS dead_letters_v3;

CREATE TABLE dead_letters_v3
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
    source             Nullable(String),
    kafka_topic        LowCardinality(String),
    kafka_partition    Int32,
    kafka_offset       Int64,
    ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
ORDER BY (original_topic, original_partition, original_offset, processor, cityHash64(raw),
          if(original_offset < 0, kafka_partition, -1), if(original_offset < 0, kafka_offset, -1))
COMMENT 'images.dlq: messages no processor could handle, kept whole; one row per failure';

INSERT INTO dead_letters_v3
    (original_topic, original_partition, original_offset, key, raw, error_class, message,
     processor, at, source, kafka_topic, kafka_partition, kafka_offset, ingested_at)
SELECT original_topic, original_partition, original_offset, key, raw, error_class, message,
       processor, at, source, kafka_topic, kafka_partition, kafka_offset, ingested_at
FROM dead_letters;

EXCHANGE TABLES dead_letters AND dead_letters_v3;

DROP TABLE IF EXISTS dead_letters_v3;

-- scores per (hour, source, model_version, role)
CREATE TABLE IF NOT EXISTS hourly_scores
(
    hour           DateTime('UTC'),
    source         LowCardinality(String),
    model_version  LowCardinality(String),
    role           LowCardinality(String),
    images         AggregateFunction(uniq, String),
    flags          AggregateFunction(uniqIf, String, UInt8),
    calibrated     AggregateFunction(uniqIf, String, UInt8),
    ensemble_score AggregateFunction(avg, Float64),
    latency_ms     AggregateFunction(quantiles(0.5, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (source, hour, model_version, role)
COMMENT 'scores by UTC hour of scored_at: distinct images, flagged (is_candidate), latency quantiles';

CREATE MATERIALIZED VIEW IF NOT EXISTS hourly_scores_mv TO hourly_scores AS
SELECT toStartOfHour(scored_at) AS hour, source, model_version, role,
       uniqState(image_id) AS images,
       uniqIfState(image_id, is_candidate) AS flags,
       uniqIfState(image_id, calibrated) AS calibrated,
       avgState(ensemble_score) AS ensemble_score,
       quantilesState(0.5, 0.9, 0.99)(latency_ms) AS latency_ms
FROM scores
GROUP BY hour, source, model_version, role;

INSERT INTO hourly_scores
SELECT toStartOfHour(scored_at) AS hour, source, model_version, role,
       uniqState(image_id), uniqIfState(image_id, is_candidate), uniqIfState(image_id, calibrated),
       avgState(ensemble_score), quantilesState(0.5, 0.9, 0.99)(latency_ms)
FROM scores
GROUP BY hour, source, model_version, role;

-- images per (hour, source), by the hour they were fetched
CREATE TABLE IF NOT EXISTS hourly_images
(
    hour   DateTime('UTC'),
    source LowCardinality(String),
    images AggregateFunction(uniq, String),
    bytes  AggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (source, hour)
COMMENT 'images by UTC hour of fetched_at: distinct image ids, cutout bytes';

CREATE MATERIALIZED VIEW IF NOT EXISTS hourly_images_mv TO hourly_images AS
SELECT toStartOfHour(fetched_at) AS hour, source,
       uniqState(image_id) AS images, sumState(toUInt64(length(pixels))) AS bytes
FROM images
GROUP BY hour, source;

INSERT INTO hourly_images
SELECT toStartOfHour(fetched_at) AS hour, source,
       uniqState(image_id), sumState(toUInt64(length(pixels)))
FROM images
GROUP BY hour, source;

-- dead letters per (hour, source, processor, error_class); source '' = unknown
CREATE TABLE IF NOT EXISTS hourly_dead_letters
(
    hour         DateTime('UTC'),
    source       LowCardinality(String),
    processor    LowCardinality(String),
    error_class  LowCardinality(String),
    dead_letters AggregateFunction(uniq, UInt64) COMMENT 'uniq of a hash of the dead_letters sort key'
)
ENGINE = AggregatingMergeTree
ORDER BY (source, hour, processor, error_class)
COMMENT 'dead letters by UTC hour of at, counted by the dead_letters identity';

CREATE MATERIALIZED VIEW IF NOT EXISTS hourly_dead_letters_mv TO hourly_dead_letters AS
SELECT toStartOfHour(at) AS hour, ifNull(source, '') AS source, processor, error_class,
       uniqState(cityHash64(original_topic, original_partition, original_offset, processor,
                            cityHash64(raw), if(original_offset < 0, kafka_partition, -1),
                            if(original_offset < 0, kafka_offset, -1))) AS dead_letters
FROM dead_letters
GROUP BY hour, source, processor, error_class;

INSERT INTO hourly_dead_letters
SELECT toStartOfHour(at) AS hour, ifNull(source, '') AS source, processor, error_class,
       uniqState(cityHash64(original_topic, original_partition, original_offset, processor,
                            cityHash64(raw), if(original_offset < 0, kafka_partition, -1),
                            if(original_offset < 0, kafka_offset, -1)))
FROM dead_letters
GROUP BY hour, source, processor, error_class;

-- one row per (hour, source): what the dashboards plot (served scores only: role production)
CREATE VIEW IF NOT EXISTS hourly_source_stats AS
SELECT hour, source,
       sum(n_images) AS images,
       sum(n_scored) AS scored,
       sum(n_flags) AS flags,
       if(sum(n_scored) = 0, 0, sum(n_flags) / sum(n_scored)) AS flag_rate,
       sum(n_dead_letters) AS dead_letters,
       max(p50) AS latency_p50_ms,
       max(p90) AS latency_p90_ms,
       max(p99) AS latency_p99_ms
FROM
(
    SELECT hour, toString(source) AS source, uniqMerge(images) AS n_images, 0 AS n_scored,
           0 AS n_flags, 0 AS n_dead_letters, 0.0 AS p50, 0.0 AS p90, 0.0 AS p99
    FROM hourly_images GROUP BY hour, source
    UNION ALL
    SELECT hour, toString(source), 0, images, flags, 0, q[1], q[2], q[3]
    FROM
    (
        SELECT hour, source, uniqMerge(images) AS images, uniqIfMerge(flags) AS flags,
               quantilesMerge(0.5, 0.9, 0.99)(latency_ms) AS q
        FROM hourly_scores WHERE role = 'production' GROUP BY hour, source
    )
    UNION ALL
    SELECT hour, toString(source), 0, 0, 0, uniqMerge(dead_letters), 0.0, 0.0, 0.0
    FROM hourly_dead_letters GROUP BY hour, source
)
GROUP BY hour, source;
