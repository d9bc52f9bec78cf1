from __future__ import annotations

import io
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from processors.core.clickhouse import Client
from processors.core.codec import MAGIC, default_codec, default_schemas_dir
from processors.sink.rows import RowError
from processors.sink.writer import ClickHouseWriter

TABLES = ("images", "scores", "candidates", "control_events", "dead_letters")


def _counts(client: Client) -> dict[str, tuple[int, int]]:
    """(rows stored, distinct records) per table."""
    return {
        t: (
            int(client.command(f"SELECT count() FROM {t}")),  # type: ignore[arg-type]
            int(client.command(f"SELECT count() FROM {t} FINAL")),  # type: ignore[arg-type]
        )
        for t in TABLES
    }


def _batches(make: SimpleNamespace) -> dict[str, list]:
    images = [make.image("synth", i, anomaly=i == 0) for i in range(4)]
    ids = [img["image_id"] for img in images]
    return {
        "images.raw": [(img, i % 2, 100 + i) for i, img in enumerate(images)],
        "scores": [(make.score(i), 0, 10 + n) for n, i in enumerate(ids)]
        + [(make.score(ids[0], role="shadow"), 1, 50)],
        "candidates": [(make.candidate(ids[0]), 0, 7)],
        "control.events": [(make.control_event(), 0, 4)],
        "images.dlq": [(make.dead_letter(17), 0, 1), (make.dead_letter(-1), 0, 2)],
    }


def test_every_topic_round_trips_through_clickhouse(client: Client, make: SimpleNamespace) -> None:
    writer = ClickHouseWriter(client)
    batches = _batches(make)
    for topic, items in batches.items():
        assert writer.insert(topic, items) == len(items)

    img = batches["images.raw"][0][0]
    row = client.query(
        "SELECT source, ra, dec, observed_at, format, width, height, bands, pixels, provenance, "
        "truth_is_anomaly, truth_kind, truth_segment, kafka_topic, kafka_partition, kafka_offset "
        "FROM images FINAL WHERE image_id = {id:String}",
        parameters={"id": img["image_id"]},
        column_formats={"pixels": "bytes"},
    ).result_rows[0]
    assert row[:3] == ("synth", 150.0, -2.5)
    assert row[3].replace(tzinfo=make.T0.tzinfo) == make.T0  # millisecond precision kept
    assert row[4:8] == ("png", 16, 16, 3)
    assert row[8] == img["pixels"]
    assert row[9] == {"generator": "blobs", "seed": "0"}
    assert row[10:] == (1, "blob", "s0", "images.raw", 0, 100)
    no_truth = make.image("other", 9)
    writer.insert("images.raw", [(no_truth, 3, 9)])
    assert client.query(
        "SELECT dec, truth_is_anomaly, truth_kind FROM images FINAL WHERE source = 'other'"
    ).result_rows == [(None, None, None)]

    scores = client.query(
        "SELECT role, scores['knn'], thresholds, votes['energy'], ensemble_score, is_candidate, "
        "latency_ms, control_offset, scored_at FROM scores FINAL WHERE image_id = {id:String} "
        "ORDER BY role",
        parameters={"id": img["image_id"]},
    ).result_rows
    assert [s[0] for s in scores] == ["production", "shadow"]
    assert scores[0][1:8] == (0.97, {"mahalanobis": 0.95, "energy": 0.95}, 0, 0.9533, 1, 7.25, 4)
    assert scores[0][8].replace(tzinfo=make.T0.tzinfo) == make.T0 + timedelta(seconds=2)

    boxes = client.query(
        "SELECT b.label, b.confidence, b.x2 FROM candidates FINAL ARRAY JOIN boxes AS b "
        "ORDER BY b.confidence DESC"
    ).result_rows
    assert boxes == [("blob", 0.875, 9.5), ("streak", 0.5, 4.0)]
    assert client.query(
        "SELECT m.catalog, m.object_id, m.separation_arcsec, label_status, dec "
        "FROM candidates FINAL ARRAY JOIN crossmatches AS m"
    ).result_rows == [("gaia", "Gaia DR3 123", 0.42, "pseudo_label", None)]

    event = client.query(
        "SELECT type, subject, issued_by, value, detector, model_version, artifact_id, reason, "
        "evidence, caused_by, kafka_offset, JSONExtractFloat(params, 'thresholds', 'knn'), "
        "JSONExtractString(params, 'until') FROM control_events FINAL"
    ).result_rows
    assert event == [
        (
            "threshold.set",
            "synth",
            "controller",
            0.95,
            "mahalanobis",
            "effnet-lite0@1",
            "sha256:abc",
            "calibration",
            {"fpr": 0.01, "n": 5000.0},
            ["7f0c2a4e-1d2b-4c1e-9f00-000000000000"],
            4,
            0.9,
            "2025-03-14T10:26:53.589Z",
        )
    ]
    params = str(client.command("SELECT params FROM control_events FINAL"))
    assert json.loads(params)["value"] == 0.95

    dead = client.query(
        "SELECT original_topic, original_partition, original_offset, key, raw, error_class, "
        "processor FROM dead_letters FINAL ORDER BY original_offset",
        column_formats={"raw": "bytes"},
    ).result_rows
    assert dead == [
        ("images.raw", 2, -1, "deadbeef", b"\xc3\x01garbage\xff", "BadImageError", "score"),
        ("images.raw", 2, 17, "deadbeef", b"\xc3\x01garbage\xff", "BadImageError", "score"),
    ]


def test_redelivered_batches_do_not_change_distinct_counts(
    client: Client, make: SimpleNamespace
) -> None:
    writer = ClickHouseWriter(client)
    batches = _batches(make)
    first = writer.insert_many(batches)
    assert first == {
        "images": 4,
        "scores": 5,
        "candidates": 1,
        "control_events": 1,
        "dead_letters": 2,
    }
    once = _counts(client)
    assert all(stored == distinct for stored, distinct in once.values())

    # a crash before the offset commit: the same messages come again, one by one and prefixed
    for topic, items in batches.items():
        writer.insert(f"replay.{topic}", items)
    # the same dead letter produced again later by the same processor is the same record
    again = make.dead_letter(17)
    again["at"] += timedelta(minutes=3)
    writer.insert("images.dlq", [(again, 0, 3)])
    twice = _counts(client)
    for table in TABLES:
        assert twice[table][1] == once[table][1], table
        assert twice[table][0] > once[table][0], table  # stored twice until a merge
    # the latest delivery wins
    assert client.command("SELECT DISTINCT kafka_topic FROM scores FINAL") == "replay.scores"

    client.command("OPTIMIZE TABLE scores FINAL")
    assert client.command("SELECT count() FROM scores") == once["scores"][1]


def test_a_different_processor_or_payload_is_a_different_dead_letter(
    client: Client, make: SimpleNamespace
) -> None:
    writer = ClickHouseWriter(client)
    other_payload = make.dead_letter(-1)
    other_payload["raw"] = b"other bytes"
    writer.insert(
        "images.dlq",
        [
            (make.dead_letter(-1), 0, 1),
            (make.dead_letter(-1, processor="sink"), 0, 2),
            (other_payload, 0, 3),
        ],
    )
    assert client.command("SELECT count() FROM dead_letters FINAL") == 3


def test_empty_batch_sends_nothing(client: Client) -> None:
    writer = ClickHouseWriter(client)
    assert writer.insert("scores", []) == 0
    assert writer.insert_many({"scores": [], "images.raw": []}) == {"scores": 0, "images": 0}


def test_a_bad_record_stops_the_batch_before_anything_is_written(
    client: Client, make: SimpleNamespace
) -> None:
    writer = ClickHouseWriter(client)
    good = make.score("a" * 64)
    bad = make.score("b" * 64)
    bad["latency_ms"] = "slow"
    with pytest.raises(RowError, match=r"scores\[2\]@11"):
        writer.insert_many(
            {
                "images.raw": [(make.image("synth", 1), 0, 1)],
                "scores": [(good, 2, 10), (bad, 2, 11)],
            }
        )
    assert client.command("SELECT count() FROM scores") == 0
    assert client.command("SELECT count() FROM images") == 0


def _old_writer_dead_letter(record: dict[str, Any]) -> bytes:
    """``record`` as a producer of DeadLetter version 1 (before ``source``) encoded it."""
    raw = json.loads((default_schemas_dir() / "history" / "skyloop.DeadLetter.1.avsc").read_text())
    schema = parse_schema(raw, _write_hint=False)
    buf = io.BytesIO()
    buf.write(MAGIC)
    buf.write(bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")))
    fastavro.schemaless_writer(buf, schema, {k: v for k, v in record.items() if k != "source"})
    return buf.getvalue()


def test_dead_letter_source_lands_and_old_records_store_null(
    client: Client, make: SimpleNamespace
) -> None:
    codec = default_codec()
    named = make.dead_letter(17) | {"source": "ztf-public"}
    current = codec.decode(codec.encode(named, "skyloop.DeadLetter"), "skyloop.DeadLetter")
    old = codec.decode(_old_writer_dead_letter(make.dead_letter(18)), "skyloop.DeadLetter")
    assert old["source"] is None  # the reader schema's default
    ClickHouseWriter(client).insert("images.dlq", [(current, 0, 1), (old, 0, 2)])
    rows = client.query(
        "SELECT original_offset, source, error_class FROM dead_letters FINAL "
        "ORDER BY original_offset"
    ).result_rows
    assert rows == [(17, "ztf-public", "BadImageError"), (18, None, "BadImageError")]
