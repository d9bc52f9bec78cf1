"""Pure mapping from a decoded topic record and its Kafka coordinates to a ClickHouse row.

One :class:`TableSpec` per base topic (``images.raw``, ``scores``, ``candidates``,
``control.events``, ``images.dlq``) names the table, its explicit column list and the function
that builds a row in that column order. The functions do no I/O and are deterministic: the same
record at the same coordinates always gives the same row, which is what makes re-inserting a
re-delivered batch harmless (the tables are ReplacingMergeTree on the record's identity).
Columns filled by ClickHouse (``ingested_at``) are not part of the rows. The column lists are
in :mod:`processors.sink.columns` (re-exported here).

Timestamps are written as aware UTC datetimes; a naive datetime is taken as UTC, as the Avro
codec does for timestamp-millis.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from processors.core.exceptions import ConfigError, SkyloopError
from processors.core.records import (
    TOPICS,
    CandidateRecord,
    ControlEventRecord,
    DeadLetter,
    DetectorScore,
    ImageRecord,
    ScoreRecord,
    ScoreRevision,
)
from processors.sink.columns import (
    CANDIDATE_COLUMNS,
    CONTROL_EVENT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    IMAGE_COLUMNS,
    REVISION_COLUMNS,
    SCORE_COLUMNS,
)

__all__ = [
    "CANDIDATE_COLUMNS",
    "CONTROL_EVENT_COLUMNS",
    "DEAD_LETTER_COLUMNS",
    "IMAGE_COLUMNS",
    "REVISION_COLUMNS",
    "SCORE_COLUMNS",
    "TABLE_FOR_SCHEMA",
    "TABLE_FOR_TOPIC",
    "KafkaCoordinates",
    "Row",
    "RowError",
    "TableSpec",
    "base_topic",
    "build_row",
    "candidate_row",
    "control_event_row",
    "dead_letter_row",
    "image_row",
    "params_json",
    "revision_row",
    "score_row",
    "table_for_topic",
    "to_row",
]

Row = tuple[Any, ...]


class KafkaCoordinates(NamedTuple):
    """Where a record was read: the actual topic name (prefixed or not), partition, offset."""

    topic: str
    partition: int
    offset: int


class RowError(SkyloopError):
    """A record does not fit its table (missing field, wrong type); names where it was read."""

    def __init__(self, message: str, coordinates: KafkaCoordinates) -> None:
        super().__init__(message)
        self.coordinates = coordinates


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def image_row(record: ImageRecord, at: KafkaCoordinates) -> Row:
    """Row of ``images``; missing pixels (``uri`` only) become an empty string."""
    truth = record.get("truth")
    return (
        record["image_id"],
        record["source"],
        record["survey"],
        _opt_float(record.get("ra")),
        _opt_float(record.get("dec")),
        _utc(record["observed_at"]),
        _utc(record["fetched_at"]),
        record["format"],
        int(record["width"]),
        int(record["height"]),
        int(record["bands"]),
        bytes(record.get("pixels") or b""),
        record.get("uri"),
        dict(record.get("provenance") or {}),
        None if truth is None else int(bool(truth["is_anomaly"])),
        None if truth is None else truth.get("kind"),
        None if truth is None else truth.get("segment"),
        [
            (b["label"], float(b["x1"]), float(b["y1"]), float(b["x2"]), float(b["y2"]))
            for b in ((truth.get("boxes") if truth else None) or [])
        ],
        *at,
    )


def _detector_maps(detectors: list[DetectorScore]) -> Row:
    """Calibrated score, raw score, threshold (only where set: none while uncalibrated) and
    vote per detector, keyed by detector name in the record's order: the four map columns
    ``scores`` and ``score_revisions`` share."""
    return (
        {d["detector"]: float(d["score"]) for d in detectors},
        {d["detector"]: float(d["raw"]) for d in detectors},
        {d["detector"]: float(d["threshold"]) for d in detectors if d["threshold"] is not None},
        {d["detector"]: int(bool(d["vote"])) for d in detectors},
    )


def score_row(record: ScoreRecord, at: KafkaCoordinates) -> Row:
    """Row of ``scores``: per-detector maps keyed by detector name, in the record's order.

    A detector whose threshold is null (uncalibrated) has no entry in ``thresholds``. The
    embedding is not stored (it is large and only the score processor's calibration reads it).
    """
    return (
        record["image_id"],
        record["source"],
        record["model_version"],
        record["backbone"],
        record.get("role") or "production",
        *_detector_maps(record["detectors"]),
        float(record["ensemble_score"]),
        int(record["votes_for"]),
        int(record["votes_needed"]),
        int(bool(record["is_candidate"])),
        int(bool(record["calibrated"])),
        int(record["batch_size"]),
        float(record["latency_ms"]),
        int(record["control_offset"]),
        _utc(record["scored_at"]),
        *at,
    )


def revision_row(record: ScoreRevision, at: KafkaCoordinates) -> Row:
    """Row of ``score_revisions``: the detector maps as in :func:`score_row`."""
    return (
        record["image_id"],
        record["source"],
        record["model_version"],
        int(record["revision"]),
        *_detector_maps(record["detectors"]),
        float(record["ensemble_score"]),
        int(record["votes_for"]),
        int(record["votes_needed"]),
        int(bool(record["is_candidate"])),
        int(bool(record["was_candidate"])),
        record["calibration_id"],
        record.get("revised_calibration_id"),
        record["revision_event_id"],
        _utc(record["revised_at"]),
        *at,
    )


def candidate_row(record: CandidateRecord, at: KafkaCoordinates) -> Row:
    """Row of ``candidates``; boxes and cross-matches become arrays of tuples in record order."""
    return (
        record["image_id"],
        record["source"],
        record["model_version"],
        float(record["ensemble_score"]),
        {name: float(value) for name, value in record["detector_scores"].items()},
        _opt_float(record.get("ra")),
        _opt_float(record.get("dec")),
        [
            (
                b["label"],
                float(b["confidence"]),
                float(b["x1"]),
                float(b["y1"]),
                float(b["x2"]),
                float(b["y2"]),
            )
            for b in record.get("boxes") or []
        ],
        [
            (m["catalog"], m["object_id"], float(m["separation_arcsec"]))
            for m in record.get("crossmatches") or []
        ],
        record.get("label_status") or "pending",
        record.get("detector_model_version"),
        _utc(record["detected_at"]),
        int(record["control_offset"]),
        record.get("detector_role"),
        _opt_float(record.get("detector_latency_ms")),
        record.get("label_reason"),
        record.get("sample_id"),
        [_opt_float(m.get("magnitude")) for m in record.get("crossmatches") or []],
        [m.get("kind") for m in record.get("crossmatches") or []],
        *at,
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in sorted(value.items())}
    return value


def params_json(params: Mapping[str, Any]) -> str:
    """ControlParams as compact JSON with sorted keys; null and empty fields are left out.

    Left-out fields are exactly those at their Avro default, so the JSON loses nothing.

    >>> params_json({"detector": None, "value": 0.9, "thresholds": {}, "reason": "drift"})
    '{"reason":"drift","value":0.9}'
    """
    kept = {k: _json_value(v) for k, v in params.items() if v is not None and v != {}}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


def control_event_row(record: ControlEventRecord, at: KafkaCoordinates) -> Row:
    """Row of ``control_events``: params as JSON plus the most queried params as columns."""
    params = record.get("params") or {}
    return (
        record["event_id"],
        record["type"],
        record["subject"],
        _utc(record["at"]),
        record["issued_by"],
        params_json(params),
        params.get("model_version"),
        params.get("artifact_id"),
        _opt_float(params.get("value")),
        params.get("detector"),
        params.get("reason"),
        {name: float(value) for name, value in (record.get("evidence") or {}).items()},
        list(record.get("caused_by") or []),
        *at,
    )


def dead_letter_row(record: DeadLetter, at: KafkaCoordinates) -> Row:
    """Row of ``dead_letters``; the key is decoded as UTF-8 (invalid bytes replaced).

    ``source`` is NULL when the record has none: written before the field existed (the codec
    fills the default) or built by code that could not tell the image source.
    """
    key = record.get("key")
    return (
        record["original_topic"],
        int(record["partition"]),
        int(record["offset"]),
        None if key is None else bytes(key).decode("utf-8", errors="replace"),
        bytes(record["raw"]),
        record["error_class"],
        record["message"],
        record["processor"],
        _utc(record["at"]),
        record.get("source"),
        *at,
    )


@dataclass(frozen=True)
class TableSpec:
    """The table a base topic is written to, its columns, and its row function."""

    topic: str
    schema: str
    table: str
    columns: tuple[str, ...]
    to_row: Callable[[Any, KafkaCoordinates], Row]


TABLE_FOR_TOPIC: dict[str, TableSpec] = {
    spec.topic: spec
    for spec in (
        TableSpec("images.raw", TOPICS["images.raw"].schema, "images", IMAGE_COLUMNS, image_row),
        TableSpec("scores", TOPICS["scores"].schema, "scores", SCORE_COLUMNS, score_row),
        TableSpec(
            "scores.revised",
            TOPICS["scores.revised"].schema,
            "score_revisions",
            REVISION_COLUMNS,
            revision_row,
        ),
        TableSpec(
            "candidates",
            TOPICS["candidates"].schema,
            "candidates",
            CANDIDATE_COLUMNS,
            candidate_row,
        ),
        TableSpec(
            "control.events",
            TOPICS["control.events"].schema,
            "control_events",
            CONTROL_EVENT_COLUMNS,
            control_event_row,
        ),
        TableSpec(
            "images.dlq",
            TOPICS["images.dlq"].schema,
            "dead_letters",
            DEAD_LETTER_COLUMNS,
            dead_letter_row,
        ),
    )
}
"""Base topic name → table spec; covers every topic of ``TOPICS``."""

TABLE_FOR_SCHEMA: dict[str, TableSpec] = {spec.schema: spec for spec in TABLE_FOR_TOPIC.values()}
"""Avro full name of the value schema (``skyloop.ScoreRecord``) → table spec."""


def base_topic(topic: str) -> str:
    """The base topic of ``topic``, which may carry a prefix (``dev.images.raw`` → ``images.raw``).

    Raises :class:`ConfigError` naming the accepted base topics when none matches.
    """
    if topic in TABLE_FOR_TOPIC:
        return topic
    for base in sorted(TABLE_FOR_TOPIC, key=len, reverse=True):
        if topic.endswith("." + base):
            return base
    accepted = ", ".join(sorted(TABLE_FOR_TOPIC))
    raise ConfigError(
        f"topic {topic!r} has no ClickHouse table; accepted (optionally prefixed): {accepted}"
    )


def table_for_topic(topic: str) -> TableSpec:
    """The table spec of a (possibly prefixed) topic name."""
    return TABLE_FOR_TOPIC[base_topic(topic)]


def build_row(spec: TableSpec, record: Mapping[str, Any], at: KafkaCoordinates) -> Row:
    """``spec.to_row(record, at)``, raising :class:`RowError` (with the coordinates) when the
    record does not fit its table, so a caller can dead-letter that one message."""
    try:
        return spec.to_row(record, at)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RowError(
            f"{spec.schema} at {at.topic}[{at.partition}]@{at.offset} does not fit table "
            f"{spec.table}: {type(exc).__name__}: {exc}",
            at,
        ) from exc


def to_row(topic: str, record: Mapping[str, Any], partition: int, offset: int) -> Row:
    """The row of ``record`` read from ``topic`` at ``partition``/``offset`` (see build_row)."""
    return build_row(table_for_topic(topic), record, KafkaCoordinates(topic, partition, offset))
