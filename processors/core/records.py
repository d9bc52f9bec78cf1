"""Typed views of the Avro records on each topic, and the topic catalogue.

The Avro schemas in ``schemas/`` are the contract; these TypedDicts mirror them so the code is
type-checked. Timestamps are timezone-aware UTC datetimes (Avro timestamp-millis).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NotRequired, TypedDict

__all__ = [
    "CONTROLLER_GROUP",
    "DEAD_LETTER_RAW_MAX",
    "TOPICS",
    "Box",
    "CandidateRecord",
    "ControlEventRecord",
    "ControlParams",
    "CrossMatch",
    "DeadLetter",
    "DetectorOutput",
    "DetectorScore",
    "GroundTruth",
    "ImageFormat",
    "ImageRecord",
    "ScoreRecord",
    "ScoreRevision",
    "TopicSpec",
    "dead_letter",
]

ImageFormat = Literal["fits", "png", "jpeg"]


class GroundTruth(TypedDict):
    is_anomaly: bool
    kind: str | None
    segment: str | None
    boxes: NotRequired[list[Box]]


class ImageRecord(TypedDict):
    image_id: str
    source: str
    survey: str
    ra: float | None
    dec: float | None
    observed_at: datetime
    fetched_at: datetime
    format: ImageFormat
    pixels: bytes | None
    uri: str | None
    width: int
    height: int
    bands: int
    provenance: dict[str, str]
    truth: GroundTruth | None


class DetectorScore(TypedDict):
    detector: str
    raw: float
    score: float
    threshold: float | None
    vote: bool


class ScoreRecord(TypedDict):
    image_id: str
    source: str
    model_version: str
    backbone: str
    role: Literal["production", "shadow", "canary"]
    detectors: list[DetectorScore]
    ensemble_score: float
    votes_for: int
    votes_needed: int
    is_candidate: bool
    calibrated: bool
    batch_size: int
    latency_ms: float
    control_offset: int
    scored_at: datetime
    embedding: bytes | None
    calibration_id: str | None
    # the scored image, on served candidates only (what detect localizes); absent elsewhere
    image: NotRequired[ImageRecord | None]


class ScoreRevision(TypedDict):
    """A served decision decided again after a drift (``scores.revised``; the schema's docs)."""

    image_id: str
    source: str
    model_version: str
    revision: int
    detectors: list[DetectorScore]
    ensemble_score: float
    votes_for: int
    votes_needed: int
    is_candidate: bool
    was_candidate: bool
    calibration_id: str
    revised_calibration_id: str | None
    revision_event_id: str
    revised_at: datetime


class Box(TypedDict):
    label: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float


class CrossMatch(TypedDict):
    catalog: str
    object_id: str
    separation_arcsec: float
    # Added with defaults (null): records written before them still decode; the decoder always
    # fills them, writers may leave them out.
    magnitude: NotRequired[float | None]
    kind: NotRequired[str | None]


class DetectorOutput(TypedDict):
    model_version: str
    role: str
    boxes: list[Box]
    latency_ms: float


class CandidateRecord(TypedDict):
    image_id: str
    source: str
    model_version: str
    ensemble_score: float
    detector_scores: dict[str, float]
    ra: float | None
    dec: float | None
    boxes: list[Box]
    crossmatches: list[CrossMatch]
    label_status: Literal["pending", "pseudo_label", "rejected"]
    detector_model_version: str | None
    detected_at: datetime
    control_offset: int
    detector_role: NotRequired[str | None]
    detector_latency_ms: NotRequired[float | None]
    label_reason: NotRequired[str | None]
    sample_id: NotRequired[str | None]
    detector_outputs: NotRequired[list[DetectorOutput]]


class ControlParams(TypedDict, total=False):
    detector: str | None
    value: float | None
    model_version: str | None
    backbone: str | None
    artifact_id: str | None
    target_fpr: float | None
    vote_k: int | None
    thresholds: dict[str, float]
    weights: dict[str, float]
    fraction: float | None
    until: datetime | None
    reason: str | None
    extra: dict[str, str]


class ControlEventRecord(TypedDict):
    event_id: str
    type: str
    subject: str
    at: datetime
    issued_by: str
    params: ControlParams
    evidence: dict[str, float]
    caused_by: list[str]


class DeadLetter(TypedDict):
    original_topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    error_class: str
    message: str
    processor: str
    at: datetime
    source: str | None


DEAD_LETTER_RAW_MAX = 1_000_000
"""The most raw bytes a dead letter carries (the pipeline's producers write 2 MB at most)."""


def dead_letter(
    *,
    original_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes,
    error_class: str,
    message: str,
    processor: str,
    source: str | None = None,
) -> DeadLetter:
    """A DeadLetter stamped now; the message is cut to 2000 characters, the bytes kept whole
    up to :data:`DEAD_LETTER_RAW_MAX` (a dead letter must itself be producible: past that, the
    first bytes are kept and the message says how many of how many).

    ``source``: the image source the item came from, when known; dead letters are partitioned
    by it, like scores, so the controller sees a source's errors beside its scores.
    """
    if len(raw) > DEAD_LETTER_RAW_MAX:
        note = f" [raw cut to its first {DEAD_LETTER_RAW_MAX} of {len(raw)} bytes]"
        message = message[: 2000 - len(note)] + note
        raw = raw[:DEAD_LETTER_RAW_MAX]
    return DeadLetter(
        original_topic=original_topic,
        partition=partition,
        offset=offset,
        key=key,
        raw=raw,
        error_class=error_class,
        message=message[:2000],
        processor=processor,
        at=datetime.now(UTC),
        source=source,
    )


@dataclass(frozen=True)
class TopicSpec:
    """A topic of ARCHITECTURE.md, "Topology": its value schema and partition count.

    ``control.events`` has exactly one partition: the log is one total order. ``images.dlq``
    has as many as ``scores`` and is keyed the same way (by source), so the controller's
    per-source state sees a source's dead letters and scores in one partition. ``scores.revised``
    is keyed like ``scores`` (the image, on its source's partition): a revision lands where its
    image's score did.
    """

    name: str
    schema: str
    partitions: int


TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec("images.raw", "skyloop.ImageRecord", 4),
        TopicSpec("scores", "skyloop.ScoreRecord", 4),
        TopicSpec("scores.revised", "skyloop.ScoreRevision", 4),
        TopicSpec("candidates", "skyloop.CandidateRecord", 4),
        TopicSpec("control.events", "skyloop.ControlEvent", 1),
        TopicSpec("images.dlq", "skyloop.DeadLetter", 4),
    )
}

CONTROLLER_GROUP = "stats"
"""The controller's consumer group (its Faust app id) before ``group_prefix``: kept from when
the worker was called stats, so committed offsets and changelog topics stay valid; the scorer
reads the controller's position on ``scores`` under it."""
