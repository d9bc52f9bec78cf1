"""The sink's Avro landing path against the record path it replaces for scores.

Real parts: the Avro codec, chdb with every migration applied, the sink on the embedded broker.
The landing path must store exactly the rows :func:`score_row` builds, feed the views on
``scores`` like any insert, count what the record path counts, and never store a body the record
path would refuse (ClickHouse rejects the block; the batch then goes by records and the bad
message becomes a dead letter).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from processors.core.avro_peek import compile_peek
from processors.core.clickhouse import Client, connect
from processors.core.codec import HEADER_LEN, default_codec
from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_producer
from processors.core.progress import read_progress
from processors.core.records import TOPICS
from processors.sink.landing import LANDING_TABLE, ScoreLanding
from processors.sink.migrations import apply_migrations
from processors.sink.rows import SCORE_COLUMNS, KafkaCoordinates, score_row, table_for_topic
from processors.sink.writer import ClickHouseWriter, SinkError
from tests.sink.conftest import candidate, score
from tests.sink.test_sink_processor import running_sink, wait_for

CODEC = default_codec()
COLUMNS = ", ".join(SCORE_COLUMNS)


def _variants(n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Scores with every shape the table cares about: roles, nulls, flags, detector order."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        # ids of 9 and 64 characters: varint lengths of one and two bytes
        image_id = f"img-{i:05d}" if i % 2 else hashlib.sha256(b"%d" % i).hexdigest()
        record = score(image_id, source=rng.choice(["synth", "ztf", "hubble"]))
        record["role"] = rng.choice(["production", "shadow", "canary"])
        record["is_candidate"] = rng.random() < 0.3
        record["calibrated"] = rng.random() < 0.8
        record["control_offset"] = rng.randrange(-1, 10_000)
        record["latency_ms"] = rng.uniform(0.1, 900.0)
        rng.shuffle(record["detectors"])
        for detector in record["detectors"]:
            detector["threshold"] = None if rng.random() < 0.3 else rng.random()
            detector["raw"] = rng.uniform(-50, 50)
        size = rng.choice([0, 16, 2560, 20_000])  # lengths of one, two and three varint bytes
        record["embedding"] = None if i % 7 == 0 else rng.randbytes(size)
        records.append(record)
    return records


def _messages(records: list[dict[str, Any]]) -> list[tuple[int, int, bytes, tuple[int, int]]]:
    """``(partition, offset, value, embedding span)``, as the sink hands them to the landing."""
    landing = ScoreLanding(CODEC)
    values = [CODEC.encode(record, "skyloop.ScoreRecord") for record in records]
    return [(i % 4, 1000 + i, value, landing.peek(value)[4]) for i, value in enumerate(values)]


def _table(client: Client) -> list[tuple[Any, ...]]:
    return client.query(f"SELECT {COLUMNS} FROM scores ORDER BY kafka_offset").result_rows


@pytest.fixture
def two_databases(tmp_path: Path) -> Any:
    path = f"chdb://{tmp_path / 'ch'}"
    landed, recorded = connect(path, database="landed"), connect(path, database="recorded")
    try:
        apply_migrations(landed)
        apply_migrations(recorded)
        yield landed, recorded
    finally:
        landed.close()
        recorded.close()


def test_landed_rows_equal_the_record_paths_rows(two_databases: tuple[Client, Client]) -> None:
    landed, recorded = two_databases
    records = _variants(300)
    messages = _messages(records)
    landing = ScoreLanding(CODEC)
    ClickHouseWriter(landed).insert_avro(LANDING_TABLE, landing.block("scores", messages))
    rows = [
        score_row(CODEC.decode(value, "skyloop.ScoreRecord"), KafkaCoordinates("scores", p, o))
        for p, o, value, _ in messages
    ]
    ClickHouseWriter(recorded).insert_rows({"scores": (table_for_topic("scores"), rows)})
    assert len(_table(landed)) == 300
    assert _table(landed) == _table(recorded)
    # the views on scores see landed rows as any insert: the hourly aggregate counts them
    query = "SELECT uniqMerge(images) FROM hourly_scores"
    assert landed.command(query) == recorded.command(query) == 300


def test_peek_reads_what_a_full_decode_reads() -> None:
    landing = ScoreLanding(CODEC)
    for _, _, value, (start, end) in _messages(_variants(200, seed=9)):
        assert landing.accepts(value)
        record = CODEC.decode(value, "skyloop.ScoreRecord")
        expected = (record["image_id"], record["role"], record["is_candidate"])
        assert landing.peek(value)[:4] == (*expected, record["calibrated"])
        # the span covers the embedding's encoding: blanking it to the null branch decodes
        blanked = value[:start] + b"\x00" + value[end:]
        assert CODEC.decode(blanked, "skyloop.ScoreRecord") == {**record, "embedding": None}


def test_peek_reads_enums_unions_and_logical_types_past_arrays_and_maps() -> None:
    schema = CODEC.store.get("skyloop.CandidateRecord").raw
    wanted = ("image_id", "dec", "label_status", "detected_at", "control_offset")
    peek = compile_peek(schema, wanted)
    record = candidate("img-1")
    value = CODEC.encode(record, "skyloop.CandidateRecord")
    millis = round(record["detected_at"].timestamp() * 1000)  # a logical type: its long
    expected = (record["image_id"], record["dec"], record["label_status"], millis)
    assert peek(value, HEADER_LEN) == (*expected, record["control_offset"])
    with pytest.raises(ValueError, match="not in"):
        compile_peek(schema, ("no_such_field",))


def test_a_garbled_body_makes_clickhouse_refuse_the_whole_block(client: Client) -> None:
    messages = _messages(_variants(20))
    partition, offset, value, span = messages[7]
    messages[7] = (partition, offset, value[:-3], span)  # its last fields cut
    with pytest.raises(SinkError):
        ClickHouseWriter(client).insert_avro(
            LANDING_TABLE, ScoreLanding(CODEC).block("scores", messages)
        )
    assert client.command("SELECT count() FROM scores") == 0


def test_the_sink_lands_scores_and_dead_letters_garbled_ones(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    records = _variants(120, seed=3)
    for record in records:
        record["role"] = "production"
        record["embedding"] = bytes(2560)
    values = [CODEC.encode(r, "skyloop.ScoreRecord") for r in records]
    # Both headers still name the current schema. Cut inside its embedding: the peek sees the
    # embedding run past the end. Its last fields cut: only ClickHouse's parse of the whole
    # block can tell (its last byte is gone), and the sink stores that batch by the record path.
    bad = {30: values[30][:-100], 90: values[90][:-1]}
    values = [bad.get(n, value) for n, value in enumerate(values)]
    for n, (record, value) in enumerate(zip(records, values, strict=True)):
        producer.produce(
            settings.topic("scores"),
            key=record["image_id"].encode(),
            value=value,
            partition=n % TOPICS["scores"].partitions,
        )
    assert producer.flush(10) == 0
    progress = tmp_path / "progress"
    with running_sink(settings, kafka_bootstrap, progress):
        wait_for(lambda: read_progress(progress, "sink").get("consumed", 0) >= 122)
    counts = read_progress(progress, "sink")
    assert counts["landing_fallbacks"] >= 1  # the batch with score 90 went by records
    assert counts["scores"] == 118  # distinct served scores, counted from peeked fields
    assert counts["candidate_scores"] == sum(
        r["is_candidate"] for n, r in enumerate(records) if n not in bad
    )
    client = connect(settings.resolved_clickhouse_dsn)
    try:
        assert client.command("SELECT count() FROM scores FINAL") == 118
        letters = client.query(
            "SELECT original_topic, original_offset, error_class FROM dead_letters FINAL"
        ).result_rows
    finally:
        client.close()
    partitions = TOPICS["scores"].partitions
    expected = {("scores", n // partitions, "CorruptMessageError") for n in bad}
    assert set(letters) == expected
