"""The durable embedded broker keeps records and committed offsets across a crash."""

from __future__ import annotations

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.core.stack import EmbeddedBroker


def _consume(bootstrap: str, group: str, limit: int, idle_s: float = 8.0) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe(["durable"])
    got: list[bytes] = []
    last = time.monotonic()
    try:
        while len(got) < limit and time.monotonic() - last < idle_s:
            for m in consumer.consume(min(50, limit - len(got)), 0.5):
                if m.error() is None:
                    got.append(m.value() or b"")
                    last = time.monotonic()
        if got:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return got


def test_records_and_committed_offsets_survive_a_kill_9_of_the_broker(tmp_path: Path) -> None:
    storage = tmp_path / "broker"
    first = EmbeddedBroker(log_path=tmp_path / "b1.log", storage_dir=storage).start()
    try:
        admin = AdminClient({"bootstrap.servers": first.bootstrap_servers})
        for future in admin.create_topics([NewTopic("durable", 1, 1)]).values():
            future.result()
        producer = Producer({"bootstrap.servers": first.bootstrap_servers})
        for i in range(100):
            producer.produce("durable", value=f"{i}".encode())
        assert producer.flush(30) == 0
        assert _consume(first.bootstrap_servers, "g", 40) == [f"{i}".encode() for i in range(40)]
    finally:
        # a crash: no clean shutdown of the broker or its storage
        for proc in (first._proc, first._bucket):
            assert proc is not None
            proc.kill()
            proc.wait()
    with EmbeddedBroker(log_path=tmp_path / "b2.log", storage_dir=storage) as second:
        committed = Consumer({"bootstrap.servers": second.bootstrap_servers, "group.id": "g"})
        try:
            (tp,) = committed.committed([TopicPartition("durable", 0)], timeout=10)
        finally:
            committed.close()
        assert tp.offset == 40
        rest = _consume(second.bootstrap_servers, "g", 100)
        assert rest == [f"{i}".encode() for i in range(40, 100)]  # resumed: none lost, none twice
