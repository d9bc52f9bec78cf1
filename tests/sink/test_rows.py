from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from processors.core.exceptions import ConfigError
from processors.core.records import TOPICS
from processors.sink.rows import (
    DEAD_LETTER_COLUMNS,
    SCORE_COLUMNS,
    TABLE_FOR_SCHEMA,
    TABLE_FOR_TOPIC,
    KafkaCoordinates,
    RowError,
    base_topic,
    control_event_row,
    dead_letter_row,
    params_json,
    score_row,
    to_row,
)

AT = KafkaCoordinates("scores", 3, 1234)


def test_every_topic_has_a_table_with_matching_columns() -> None:
    assert set(TABLE_FOR_TOPIC) == set(TOPICS)
    assert set(TABLE_FOR_SCHEMA) == {spec.schema for spec in TOPICS.values()}
    for spec in TABLE_FOR_TOPIC.values():
        assert len(set(spec.columns)) == len(spec.columns)
        assert spec.columns[-3:] == ("kafka_topic", "kafka_partition", "kafka_offset")


def test_score_row_flattens_detectors(make: SimpleNamespace) -> None:
    row = dict(zip(SCORE_COLUMNS, score_row(make.score("a" * 64), AT), strict=True))
    assert row["scores"] == {"mahalanobis": 0.98, "energy": 0.91, "knn": 0.97}
    assert row["raw_scores"] == {"mahalanobis": 41.5, "energy": -3.25, "knn": 0.75}
    assert row["thresholds"] == {"mahalanobis": 0.95, "energy": 0.95}  # knn: uncalibrated
    assert row["votes"] == {"mahalanobis": 1, "energy": 0, "knn": 1}
    assert (row["is_candidate"], row["calibrated"], row["role"]) == (1, 1, "production")
    assert row["scored_at"] == make.T0 + timedelta(seconds=2)
    assert row["scored_at"].tzinfo is not None
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == AT
    assert "embedding" not in row


def test_rows_are_deterministic(make: SimpleNamespace) -> None:
    record = make.candidate("b" * 64)
    assert to_row("candidates", record, 1, 2) == to_row("candidates", record, 1, 2)


def test_timestamps_become_utc(make: SimpleNamespace) -> None:
    record = make.score("a" * 64)
    record["scored_at"] = datetime(2025, 3, 14, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert score_row(record, AT)[SCORE_COLUMNS.index("scored_at")] == datetime(
        2025, 3, 14, 9, 0, tzinfo=UTC
    )
    record["scored_at"] = datetime(2025, 3, 14, 9, 0)  # naive = UTC, as in the Avro codec
    assert score_row(record, AT)[SCORE_COLUMNS.index("scored_at")] == datetime(
        2025, 3, 14, 9, 0, tzinfo=UTC
    )


def test_control_params_as_json_without_defaults(make: SimpleNamespace) -> None:
    event = make.control_event()
    row = control_event_row(event, KafkaCoordinates("control.events", 0, 9))
    params = json.loads(row[5])
    assert params == {
        "artifact_id": "sha256:abc",
        "detector": "mahalanobis",
        "model_version": "effnet-lite0@1",
        "reason": "calibration",
        "thresholds": {"knn": 0.9},
        "until": "2025-03-14T10:26:53.589Z",
        "value": 0.95,
    }
    assert params_json({"vote_k": None, "weights": {}, "extra": {}}) == "{}"


@pytest.mark.parametrize(
    ("topic", "base"),
    [
        ("scores", "scores"),
        ("images.raw", "images.raw"),
        ("dev.images.raw", "images.raw"),
        ("ci-42.images.dlq", "images.dlq"),
        ("x.control.events", "control.events"),
    ],
)
def test_base_topic(topic: str, base: str) -> None:
    assert base_topic(topic) == base


@pytest.mark.parametrize("topic", ["images", "raw", "xscores", "scores.v2"])
def test_unknown_topic_names_the_accepted_ones(topic: str) -> None:
    with pytest.raises(ConfigError, match=r"accepted .*candidates, control\.events, images\.dlq"):
        base_topic(topic)


def test_record_that_does_not_fit_names_its_coordinates(make: SimpleNamespace) -> None:
    record = make.score("a" * 64)
    del record["detectors"]
    with pytest.raises(RowError, match=r"skyloop\.ScoreRecord at dev\.scores\[1\]@77") as info:
        to_row("dev.scores", record, 1, 77)
    assert info.value.coordinates == KafkaCoordinates("dev.scores", 1, 77)


def test_dead_letter_row_carries_its_source(make: SimpleNamespace) -> None:
    at = KafkaCoordinates("images.dlq", 1, 5)
    named = make.dead_letter() | {"source": "ztf-public"}
    row = dict(zip(DEAD_LETTER_COLUMNS, dead_letter_row(named, at), strict=True))
    assert (row["source"], row["key"], row["processor"]) == ("ztf-public", "deadbeef", "score")
    # a record of the old schema (no field at all) and one that names no source: NULL
    old = make.dead_letter()
    del old["source"]
    for record in (old, make.dead_letter()):
        assert dead_letter_row(record, at)[DEAD_LETTER_COLUMNS.index("source")] is None
