"""Messages from outside producers against the embedded broker (processors.core.admission):
keyless and oversized records on images.raw reach the real scorer, keyless and oversized
events reach the control fold. Nothing crashes, nothing is dropped without a dead letter."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer, TopicPartition

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.events import EventType, new_event
from processors.core.kafka import ControlFollower, ensure_topics, make_consumer
from processors.core.records import DEAD_LETTER_RAW_MAX, TOPICS
from processors.score.backbone import Backbone
from tests.score.test_processor import Scorer, sky

CODEC = default_codec()
BIG = 3_000_000  # over the default kafka.max_message_bytes (2 MB)


@pytest.fixture
def outsider(settings: Settings, kafka_bootstrap: str) -> Iterator[Producer]:
    """A producer of the outside world: no key unless given, and a larger message limit."""
    ensure_topics(settings, kafka_bootstrap)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 8_000_000})
    yield producer
    producer.flush(10)


def _outputs(settings: Settings, bootstrap: str, n: int, timeout_s: float = 90) -> list[tuple]:
    """(topic, key, record) of the next ``n`` scores and dead letters."""
    reader = make_consumer(settings, bootstrap, f"{settings.kafka.group_prefix}.outside-reader")
    reader.assign(
        [TopicPartition(settings.topic("scores"), p, 0) for p in range(TOPICS["scores"].partitions)]
        + [
            TopicPartition(settings.topic("images.dlq"), p, 0)
            for p in range(TOPICS["images.dlq"].partitions)
        ]
    )
    out: list[tuple] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in reader.consume(n - len(out), 0.2):
                if msg.error() or msg.value() is None:
                    continue
                base = (msg.topic() or "")[len(settings.kafka.topic_prefix) :]
                schema = "skyloop.ScoreRecord" if base == "scores" else "skyloop.DeadLetter"
                out.append((base, msg.key(), CODEC.decode(msg.value() or b"", schema)))
    finally:
        reader.close()
    return out


def test_keyless_and_oversized_images_from_outside(
    settings: Settings, kafka_bootstrap: str, lite0: Backbone, outsider: Producer
) -> None:
    settings = settings.model_copy(update={"batch_size": 8, "batch_max_wait_ms": 50})
    keyless, after = sky("outside", 5, 2)
    topic = settings.topic("images.raw")
    with Scorer(settings, kafka_bootstrap, lite0) as scorer:
        outsider.produce(topic, value=CODEC.encode(keyless, "skyloop.ImageRecord"))
        outsider.produce(topic, value=b"\x00 not avro, and no key")
        outsider.produce(topic, key=b"big", value=b"\x01" * BIG, partition=1)
        assert outsider.flush(30) == 0
        scorer.produce([after])  # the pipeline's own producer, keyed, after the outsiders
        outputs = _outputs(settings, kafka_bootstrap, 4)
        assert not scorer.errors
    scores = {r["image_id"]: (key, r) for t, key, r in outputs if t == "scores"}
    letters = {r["error_class"]: (key, r) for t, key, r in outputs if t == "images.dlq"}
    assert set(scores) == {keyless["image_id"], after["image_id"]}
    # the keyless record's score is keyed by the id its record carries: the key is derived
    assert scores[keyless["image_id"]][0] == keyless["image_id"].encode()
    assert set(letters) == {"CorruptMessageError", "OversizedMessage"}
    garbage_key, garbage = letters["CorruptMessageError"]
    assert garbage_key in (None, b"") and garbage["key"] is None
    assert garbage["raw"] == b"\x00 not avro, and no key"
    big_key, big = letters["OversizedMessage"]
    assert big_key == b"big" and big["key"] == b"big"
    assert (
        f"message of {BIG} bytes" in big["message"] and "kafka.max_message_bytes" in big["message"]
    )
    assert f"first {DEAD_LETTER_RAW_MAX} of {BIG} bytes" in big["message"]
    assert big["raw"] == b"\x01" * DEAD_LETTER_RAW_MAX


def test_keyless_events_fold_and_oversized_ones_are_refused_unread(
    settings: Settings, kafka_bootstrap: str, outsider: Producer
) -> None:
    topic = settings.topic("control.events")
    paused = new_event(EventType.PIPELINE_PAUSED, "pipeline", "operator:ana", {"reason": "x"})
    huge = new_event(EventType.SOURCE_PAUSED, "sky", "operator:ana", {"reason": "y" * BIG})
    follower = ControlFollower(settings, kafka_bootstrap).start()
    try:
        outsider.produce(topic, value=CODEC.encode(huge, "skyloop.ControlEvent"), partition=0)
        outsider.produce(topic, value=CODEC.encode(paused, "skyloop.ControlEvent"), partition=0)
        assert outsider.flush(30) == 0
        assert follower.wait_for_offset(2, 30)
        reason = follower.refusal_at(0, timeout_s=5)
        assert (
            reason is not None
            and f"{len(CODEC.encode(huge, 'skyloop.ControlEvent'))} bytes" in reason
        )
        assert "kafka.max_message_bytes" in reason
        assert follower.refusal_at(1, timeout_s=5) is None  # keyless, applied
        state = follower.state
        assert state.pipeline_paused is not None
        assert not state.is_source_paused("sky")
        assert not follower.has_event(huge["event_id"]) and follower.has_event(paused["event_id"])
    finally:
        follower.close()
