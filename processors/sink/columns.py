"""The explicit column lists of the ClickHouse tables the sink writes, in insert order.

One tuple per table (``images``, ``scores``, ``score_revisions``, ``candidates``,
``control_events``, ``dead_letters``), matching the migrations of ``infra/clickhouse``; every
table ends with the Kafka coordinates of the record it came from. The row functions of
:mod:`processors.sink.rows` build their tuples in exactly this order. Columns filled by
ClickHouse (``ingested_at``) are not listed.
"""

from __future__ import annotations

__all__ = [
    "CANDIDATE_COLUMNS",
    "CONTROL_EVENT_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "IMAGE_COLUMNS",
    "KAFKA_COLUMNS",
    "REVISION_COLUMNS",
    "SCORE_COLUMNS",
]

KAFKA_COLUMNS = ("kafka_topic", "kafka_partition", "kafka_offset")

IMAGE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source",
    "survey",
    "ra",
    "dec",
    "observed_at",
    "fetched_at",
    "format",
    "width",
    "height",
    "bands",
    "pixels",
    "uri",
    "provenance",
    "truth_is_anomaly",
    "truth_kind",
    "truth_segment",
    "truth_boxes",
    *KAFKA_COLUMNS,
)
SCORE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source",
    "model_version",
    "backbone",
    "role",
    "scores",
    "raw_scores",
    "thresholds",
    "votes",
    "ensemble_score",
    "votes_for",
    "votes_needed",
    "is_candidate",
    "calibrated",
    "batch_size",
    "latency_ms",
    "control_offset",
    "scored_at",
    *KAFKA_COLUMNS,
)
CANDIDATE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source",
    "model_version",
    "ensemble_score",
    "detector_scores",
    "ra",
    "dec",
    "boxes",
    "crossmatches",
    "label_status",
    "detector_model_version",
    "detected_at",
    "control_offset",
    "detector_role",
    "detector_latency_ms",
    "label_reason",
    "sample_id",
    "crossmatch_magnitudes",
    "crossmatch_kinds",
    *KAFKA_COLUMNS,
)
CONTROL_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "type",
    "subject",
    "at",
    "issued_by",
    "params",
    "model_version",
    "artifact_id",
    "value",
    "detector",
    "reason",
    "evidence",
    "caused_by",
    *KAFKA_COLUMNS,
)
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "original_topic",
    "original_partition",
    "original_offset",
    "key",
    "raw",
    "error_class",
    "message",
    "processor",
    "at",
    "source",
    *KAFKA_COLUMNS,
)
REVISION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "source",
    "model_version",
    "revision",
    "scores",
    "raw_scores",
    "thresholds",
    "votes",
    "ensemble_score",
    "votes_for",
    "votes_needed",
    "is_candidate",
    "was_candidate",
    "calibration_id",
    "revised_calibration_id",
    "revision_event_id",
    "revised_at",
    *KAFKA_COLUMNS,
)
