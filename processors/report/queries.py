"""The SQL of the daily report, in one place so dashboards can reuse it.

Conventions every query keeps:

- Tables are read with ``FINAL``, so each figure counts distinct records (ReplacingMergeTree
  merges are eventual) and agrees with ``SELECT count() FROM <table> FINAL``.
- A window is the half-open interval ``[start, end)`` passed as server-side parameters
  ``{start:DateTime64(3, 'UTC')}`` and ``{end:DateTime64(3, 'UTC')}``. Each table is windowed
  by its own event time: ``images.fetched_at``, ``scores.scored_at``,
  ``candidates.detected_at``, ``control_events.at``, ``dead_letters.at``.
- "Scored", "flagged", latency and quality figures use the production role only; shadow and
  canary scores appear in :data:`MODELS` alone.
- Tables are unqualified: they are read from the client's database.
- Results are ordered deterministically (ties broken by an id), so reports are reproducible.

The self-correction section's queries live in :mod:`processors.report.correction_queries` and the
learning loop's in :mod:`processors.report.learning_queries`; this module re-exports the former,
so :data:`QUERIES` still names every windowed query of the daily report.
"""

from __future__ import annotations

from processors.report import picture_queries as pq
from processors.report.correction_queries import (
    CALIBRATIONS,
    CONTROL_EVENT_COUNTS,
    DRIFT_DETECTIONS,
    PAUSES,
    REVISIONS,
    THRESHOLD_EVENTS,
)
from processors.report.sql import in_window

__all__ = [
    "CALIBRATIONS",
    "CONTROL_EVENTS",
    "CONTROL_EVENT_COUNTS",
    "DEAD_LETTERS_BY_CLASS",
    "DRIFT_DETECTIONS",
    "MODELS",
    "PAUSES",
    "PER_SOURCE",
    "QUERIES",
    "SCORE_HISTOGRAM",
    "SUMMARY",
    "TABLES",
    "TABLES_PRESENT",
    "THRESHOLD_EVENTS",
    "THROUGHPUT",
    "TOP_CANDIDATES",
    "TRUTH_BY_KIND",
    "TRUTH_METRICS",
    "ZTF_OBJECTS",
]

TABLES: tuple[str, ...] = ("images", "scores", "candidates", "control_events", "dead_letters")
"""The tables the report reads."""

TABLES_PRESENT = """
SELECT name FROM system.tables
WHERE database = currentDatabase() AND name IN {tables:Array(String)}
ORDER BY name
"""


SUMMARY = f"""
SELECT
    (SELECT count() FROM images FINAL WHERE {in_window("fetched_at")}) AS images,
    (SELECT count() FROM scores FINAL WHERE {in_window("scored_at")}) AS scores,
    (SELECT countIf(role = 'production') FROM scores FINAL
        WHERE {in_window("scored_at")}) AS production_scores,
    (SELECT countIf(role = 'production' AND is_candidate = 1) FROM scores FINAL
        WHERE {in_window("scored_at")}) AS flagged,
    (SELECT count() FROM candidates FINAL WHERE {in_window("detected_at")}) AS candidates,
    (SELECT count() FROM control_events FINAL WHERE {in_window("at")}) AS control_events,
    (SELECT count() FROM dead_letters FINAL WHERE {in_window("at")}) AS dead_letters,
    (SELECT count() FROM images FINAL) AS images_total,
    (SELECT count() FROM scores FINAL) AS scores_total,
    (SELECT countIf(role = 'production') FROM scores FINAL) AS production_scores_total,
    (SELECT countIf(role = 'production' AND is_candidate = 1) FROM scores FINAL) AS flagged_total,
    (SELECT count() FROM candidates FINAL) AS candidates_total,
    (SELECT count() FROM control_events FINAL) AS control_events_total,
    (SELECT count() FROM dead_letters FINAL) AS dead_letters_total
"""
"""One row: record counts in the window and in all time (``*_total``)."""

PER_SOURCE = f"""
WITH
    img AS (
        SELECT source, count() AS images FROM images FINAL
        WHERE {in_window("fetched_at")} GROUP BY source),
    sc AS (
        SELECT source, count() AS scored, countIf(is_candidate = 1) AS flagged,
               countIf(calibrated = 0) AS uncalibrated,
               avg(latency_ms) AS mean_latency_ms,
               quantileExact(0.95)(latency_ms) AS p95_latency_ms
        FROM scores FINAL
        WHERE role = 'production' AND {in_window("scored_at")} GROUP BY source),
    cand AS (
        SELECT source, count() AS candidates FROM candidates FINAL
        WHERE {in_window("detected_at")} GROUP BY source),
    dl AS (
        SELECT multiIf(d.named != '', d.named,
                       startsWith(d.original_topic, 'source:'), substring(d.original_topic, 8),
                       toString(i.source)) AS source,
               count() AS dead_letters
        FROM (
            SELECT original_topic, ifNull(key, '') AS key, ifNull(source, '') AS named
            FROM dead_letters FINAL
            WHERE {in_window("at")}
        ) AS d
        LEFT JOIN (SELECT image_id, source FROM images FINAL) AS i ON d.key = i.image_id
        GROUP BY source),
    names AS (
        SELECT DISTINCT source FROM (
            SELECT toString(source) AS source FROM img
            UNION ALL SELECT toString(source) FROM sc
            UNION ALL SELECT toString(source) FROM cand
            UNION ALL SELECT toString(source) FROM dl))
SELECT
    names.source AS source,
    img.images AS images,
    sc.scored AS scored,
    sc.flagged AS flagged,
    if(sc.scored > sc.uncalibrated, sc.flagged / (sc.scored - sc.uncalibrated), NULL)
        AS candidate_rate,
    cand.candidates AS candidates,
    if(sc.scored > 0, sc.mean_latency_ms, NULL) AS mean_latency_ms,
    if(sc.scored > 0, sc.p95_latency_ms, NULL) AS p95_latency_ms,
    dl.dead_letters AS dead_letters,
    sc.uncalibrated AS uncalibrated
FROM names
LEFT JOIN img ON img.source = names.source
LEFT JOIN sc ON sc.source = names.source
LEFT JOIN cand ON cand.source = names.source
LEFT JOIN dl ON dl.source = names.source
ORDER BY source = '', source
"""
"""One row per source seen in the window. The candidate rate is flagged / calibrated scores
(an uncalibrated image cannot be flagged; those are ``uncalibrated``). Dead letters are
attributed to the source they name (``dead_letters.source``, set when the failing processor
could tell), else by their original
topic when it is ``source:<name>`` (failures of an image source, before Kafka), else through
their key (the image id); the rest have source ``''``."""

MODELS = f"""
SELECT model_version, role, any(backbone) AS backbone, count() AS scored,
       countIf(is_candidate = 1) AS flagged, countIf(calibrated = 1) AS calibrated,
       avg(latency_ms) AS mean_latency_ms
FROM scores FINAL
WHERE {in_window("scored_at")}
GROUP BY model_version, role
ORDER BY role = 'production' DESC, role, model_version
"""
"""Scores per model version and role (production, shadow, canary)."""

SCORE_HISTOGRAM = f"""
SELECT source, is_candidate,
       toUInt32(least(greatest(ifNotFinite(floor(ensemble_score * {{bins:UInt32}}), 0.0), 0.0),
                      {{bins:UInt32}} - 1.0)) AS bin,
       count() AS n
FROM scores FINAL
WHERE role = 'production' AND calibrated = 1 AND {in_window("scored_at")}
GROUP BY source, is_candidate, bin
ORDER BY source, is_candidate, bin
"""
"""Calibrated production ensemble scores (the mean calibrated detector score) binned on [0, 1]
into ``bins`` bins, per source and verdict; scores outside [0, 1] fall in the end bins,
non-finite ones in the first. Uncalibrated scores have no score on this scale (their 0 is a
placeholder) and are left out; the verdict is the vote, not this mean (see
:mod:`processors.report.picture_queries` for the statistic the vote thresholds)."""

THROUGHPUT = f"""
SELECT source, toStartOfHour(fetched_at) AS hour, count() AS images
FROM images FINAL
WHERE {in_window("fetched_at")}
GROUP BY source, hour
ORDER BY source, hour
"""
"""Images fetched per source and hour."""

TOP_CANDIDATES = f"""
SELECT s.image_id AS image_id, s.source AS source, s.model_version AS model_version,
       s.ensemble_score AS ensemble_score, s.votes_for AS votes_for,
       s.votes_needed AS votes_needed, s.scored_at AS scored_at,
       i.format AS format, i.pixels AS pixels, i.ra AS ra, i.dec AS dec,
       i.truth_is_anomaly AS truth_is_anomaly, i.truth_kind AS truth_kind,
       c.label_status AS label_status, length(c.boxes) AS boxes, c.boxes AS box_list,
       arrayStringConcat(arrayMap(b -> tupleElement(b, 'label'), c.boxes), ', ') AS box_labels,
       arrayStringConcat(arrayMap(
           m -> concat(tupleElement(m, 'catalog'), ':', tupleElement(m, 'object_id')),
           c.crossmatches), ', ') AS crossmatches
FROM (
    SELECT image_id, source, model_version, ensemble_score, votes_for, votes_needed, scored_at
    FROM scores FINAL
    WHERE role = 'production' AND is_candidate = 1 AND {in_window("scored_at")}
    ORDER BY ensemble_score DESC, image_id
    LIMIT {{limit:UInt32}}
) AS s
LEFT JOIN (
    SELECT image_id, format, pixels, ra, dec, truth_is_anomaly, truth_kind
    FROM images FINAL
    WHERE image_id IN (
        SELECT image_id FROM scores FINAL
        WHERE role = 'production' AND is_candidate = 1 AND {in_window("scored_at")})
) AS i ON i.image_id = s.image_id
LEFT JOIN (
    SELECT image_id, model_version, label_status, boxes, crossmatches
    FROM candidates FINAL
) AS c ON c.image_id = s.image_id AND c.model_version = s.model_version
ORDER BY ensemble_score DESC, image_id
"""
"""The ``limit`` highest-scoring flagged production scores with their image and, where the
detector has run, its boxes (``box_list``: label, confidence, xyxy in image pixels) and
cross-matches. ``pixels`` is binary: read it as bytes."""

TRUTH_METRICS = f"""
SELECT source, tp, fp, fn, tn,
       tp / nullIf(tp + fp, 0) AS precision,
       tp / nullIf(tp + fn, 0) AS recall,
       fp / nullIf(fp + tn, 0) AS fpr
FROM (
    SELECT s.source AS source,
           countIf(i.truth = 1 AND s.flagged = 1) AS tp,
           countIf(i.truth = 0 AND s.flagged = 1) AS fp,
           countIf(i.truth = 1 AND s.flagged = 0) AS fn,
           countIf(i.truth = 0 AND s.flagged = 0) AS tn
    FROM (
        SELECT image_id, source, is_candidate AS flagged FROM scores FINAL
        WHERE role = 'production' AND {in_window("scored_at")}
    ) AS s
    INNER JOIN (
        SELECT image_id, assumeNotNull(truth_is_anomaly) AS truth FROM images FINAL
        WHERE truth_is_anomaly IS NOT NULL
    ) AS i ON i.image_id = s.image_id
    GROUP BY source
)
ORDER BY source
"""
"""Confusion counts of the production verdict (is_candidate) against ground truth, per source;
only images whose truth is known (synthetic sources) take part."""

TRUTH_BY_KIND = f"""
SELECT s.source AS source, ifNull(i.kind, '') AS kind, count() AS anomalies,
       countIf(s.flagged = 1) AS detected, detected / anomalies AS recall
FROM (
    SELECT image_id, source, is_candidate AS flagged FROM scores FINAL
    WHERE role = 'production' AND {in_window("scored_at")}
) AS s
INNER JOIN (
    SELECT image_id, truth_kind AS kind FROM images FINAL WHERE truth_is_anomaly = 1
) AS i ON i.image_id = s.image_id
GROUP BY source, kind
ORDER BY source, kind
"""
"""Recall per source and anomaly kind (synthetic sources)."""

ZTF_OBJECTS = f"""
SELECT i.object_id AS object_id, count() AS images,
       argMax((i.ra, i.dec), (i.observed_at, i.candid, i.image_id)) AS position,
       tupleElement(position, 1) AS ra, tupleElement(position, 2) AS dec,
       min(i.magpsf) AS best_magpsf, max(i.rb) AS max_rb,
       if(countIf(s.calibrated) > 0, maxIf(s.ensemble_score, s.calibrated), NULL) AS max_score,
       sum(s.is_candidate) AS flagged,
       countIf(s.image_id != '') AS scored, countIf(s.calibrated) AS calibrated,
       min(i.observed_at) AS first_seen, max(i.observed_at) AS last_seen
FROM (
    SELECT image_id, observed_at, toInt64OrZero(provenance['candid']) AS candid,
           if(mapContains(provenance, 'objectId'), provenance['objectId'],
              provenance['object_id']) AS object_id,
           coalesce(toFloat64OrNull(provenance['ra']), ra) AS ra,
           coalesce(toFloat64OrNull(provenance['dec']), dec) AS dec,
           toFloat64OrNull(provenance['magpsf']) AS magpsf,
           toFloat64OrNull(provenance['rb']) AS rb
    FROM images FINAL
    WHERE (mapContains(provenance, 'objectId') OR mapContains(provenance, 'object_id'))
      AND {in_window("fetched_at")}
) AS i
LEFT JOIN (
    SELECT image_id, ensemble_score, is_candidate, calibrated
    FROM scores FINAL WHERE role = 'production'
) AS s ON s.image_id = i.image_id
GROUP BY object_id
ORDER BY flagged DESC, max_score DESC, object_id
LIMIT {{limit:UInt32}}
"""
"""ZTF objects (images whose provenance has ``objectId``, as in alert packets, or
``object_id``, as the ZTF ingest writes it) with their latest position (ra and dec of one
alert: the latest, ties broken by the higher candid, then image_id), brightest
magnitude, best real-bogus score and the production verdicts on their cutouts: images scored,
how many of those were calibrated, and the best ensemble score among the calibrated ones
(NULL when none was: an uncalibrated score is not a score on the calibrated scale)."""

CONTROL_EVENTS = f"""
SELECT at, type, subject, issued_by, params, evidence, caused_by, event_id, kafka_offset
FROM control_events FINAL
WHERE {in_window("at")}
ORDER BY at, kafka_offset, event_id
LIMIT {{limit:UInt32}}
"""
"""The control-event audit trail of the window, in time order."""

DEAD_LETTERS_BY_CLASS = f"""
SELECT error_class, processor, original_topic, count() AS n,
       argMin(message, at) AS example, min(at) AS first_at, max(at) AS last_at
FROM dead_letters FINAL
WHERE {in_window("at")}
GROUP BY error_class, processor, original_topic
ORDER BY n DESC, error_class, processor, original_topic
"""
"""Dead letters grouped by error class, processor and original topic, with the first message."""

QUERIES: dict[str, str] = {
    "summary": SUMMARY,
    "per_source": PER_SOURCE,
    "models": MODELS,
    "score_histogram": SCORE_HISTOGRAM,
    "throughput": THROUGHPUT,
    "top_candidates": TOP_CANDIDATES,
    "truth_metrics": TRUTH_METRICS,
    "truth_by_kind": TRUTH_BY_KIND,
    "ztf_objects": ZTF_OBJECTS,
    "control_events": CONTROL_EVENTS,
    "control_event_counts": CONTROL_EVENT_COUNTS,
    "drift_detections": DRIFT_DETECTIONS,
    "revisions": REVISIONS,
    "calibrations": CALIBRATIONS,
    "pauses": PAUSES,
    "threshold_events": THRESHOLD_EVENTS,
    "dead_letters_by_class": DEAD_LETTERS_BY_CLASS,
    "vote_margins": pq.VOTE_MARGINS,
    "votes": pq.VOTES,
    "uncalibrated": pq.UNCALIBRATED,
    "flag_windows": pq.FLAG_WINDOWS,
    "target_rates": pq.TARGET_RATES,
    "control_marks": pq.CONTROL_MARKS,
    "sky_positions": pq.SKY_POSITIONS,
    "processing_rate": pq.PROCESSING_RATE,
    "activity": pq.ACTIVITY,
}
"""Every windowed report query by name. Parameters: ``start``, ``end`` and, where used,
``limit`` (UInt32), ``bins`` (UInt32, even for ``vote_margins``), ``window`` (UInt32, images
per flag-rate window) and ``bin_s`` (UInt32, seconds per rate bin); ``threshold_events`` and
``target_rates`` read from the log's start."""
