"""The ZTF topic source against the embedded broker: every packet once, failures, commits."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.ingest.base import RawImage, SourceFailure, SourceItem
from processors.ingest.ztf import QualityCuts, ZtfTopicSource

GARBAGE = b"\x00\x01 this is not an alert packet"

MakeTopic = Callable[[list[bytes]], tuple[str, str]]


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[MakeTopic]:
    """``make_topic(values) -> (topic, group_id)``: a fresh 1-partition topic holding values.

    The clients are local to each call: a client alive at session end keeps a connection open,
    and the broker then waits out its stop timeout.
    """

    def make(values: list[bytes]) -> tuple[str, str]:
        token = uuid.uuid4().hex[:10]
        topic = f"ztf-alerts-{token}"
        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[
            topic
        ].result(timeout=10)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
        for i, value in enumerate(values):
            producer.produce(topic, value=value, key=str(i).encode())
        assert producer.flush(10) == 0
        return topic, f"ztf-test-{token}"

    yield make


def _offset(item: SourceItem) -> str:
    assert isinstance(item, RawImage)
    return item.provenance["kafka_offset"]


def _committed(bootstrap: str, group_id: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def test_every_packet_arrives_once_and_garbage_fails(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    packets = sorted(ztf_alerts_dir.glob("*.avro"))
    values = [p.read_bytes() for p in packets] + [GARBAGE]
    topic, group = make_topic(values)
    source = ZtfTopicSource(
        kafka_bootstrap,
        topic,
        group,
        cutout="triplet",
        quality=QualityCuts(min_rb=0.05),
        max_messages=len(values),
        idle_timeout_s=10,
    )
    items = list(source)
    images = [i for i in items if isinstance(i, RawImage)]
    failures = [i for i in items if isinstance(i, SourceFailure)]
    readable = [i for i, p in enumerate(packets) if not p.name.startswith("unreadable")]
    cut = {i for i, p in enumerate(packets) if p.name.startswith("sim_vpre2_877")}  # rb == 0
    assert sorted(int(i.provenance["kafka_offset"]) for i in images) == sorted(set(readable) - cut)
    assert all(i.bands == 3 and i.provenance["kafka_topic"] == topic for i in images)
    by_offset = {int(i.provenance["kafka_offset"]): i for i in images}
    assert by_offset[readable[0]].provenance["candid"] == packets[0].name.split("_")[-1][:-5]
    unreadable = [i for i, p in enumerate(packets) if p.name.startswith("unreadable")]
    assert [f.key for f in failures] == [f"{topic}/0/{i}" for i in [*unreadable, len(packets)]]
    assert [f.error_class for f in failures] == ["UnreadablePacket"] * 2 + ["NotAvro"]
    assert [f.raw for f in failures] == [values[i] for i in unreadable] + [GARBAGE]
    stats = source.stats
    assert (stats.packets, stats.yielded, stats.cut_by_reason) == (
        len(values),
        len(images),
        {"min_rb": 3},
    )
    assert _committed(kafka_bootstrap, group, topic) == len(values)


def test_offsets_are_committed_only_for_taken_items(
    ztf_alerts_dir: Path, kafka_bootstrap: str, make_topic: MakeTopic
) -> None:
    values = [p.read_bytes() for p in sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))]
    topic, group = make_topic(values)

    # on_next: item 1 is taken when item 2 is requested; item 2 is never confirmed
    on_next = ZtfTopicSource(kafka_bootstrap, topic, group, idle_timeout_s=10)
    stream = iter(on_next)
    assert [_offset(next(stream)), _offset(next(stream))] == ["0", "1"]
    stream.close()
    assert _committed(kafka_bootstrap, group, topic) == 1

    # manual: the same group resumes at the unconfirmed item (at least once), commits on demand
    manual = ZtfTopicSource(kafka_bootstrap, topic, group, commit="manual", idle_timeout_s=10)
    stream = iter(manual)
    assert [_offset(next(stream)) for _ in range(3)] == ["1", "2", "3"]
    manual.commit()
    assert _committed(kafka_bootstrap, group, topic) == 4
    next(stream)
    stream.close()
    assert _committed(kafka_bootstrap, group, topic) == 4
