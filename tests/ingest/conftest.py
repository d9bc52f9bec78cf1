"""Fixtures for the ingest tests: the shared real ZTF alert packets, packet rewriting, topics.

The packets are read where they are ($SKYLOOP_ZTF_ALERTS_DIR, default ../shared/data/ztf-alerts
from the repository root), never copied into the repository; tests skip where they are absent.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO_ROOT = Path(__file__).resolve().parents[2]
ZTF_ALERTS_ENV = "SKYLOOP_ZTF_ALERTS_DIR"


def ztf_alerts_path() -> Path:
    return Path(os.environ.get(ZTF_ALERTS_ENV) or REPO_ROOT.parent / "shared/data/ztf-alerts")


@pytest.fixture(scope="session")
def ztf_alerts_dir() -> Path:
    """The directory of real ZTF alert packets; skips the test where it is absent."""
    path = ztf_alerts_path()
    if not path.is_dir() or not any(path.glob("*.avro")):
        pytest.skip(f"no ZTF alert packets at {path} (set ${ZTF_ALERTS_ENV} to their directory)")
    return path


PACKET_NAME = re.compile(r"^(ZTF\w+|sim)_v[\w.]+_\d+\.avro$")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``ztf_packet_name`` runs once per readable packet (named per the README)."""
    if "ztf_packet_name" in metafunc.fixturenames:
        path = ztf_alerts_path()
        names = sorted(p.name for p in path.glob("*.avro")) if path.is_dir() else []
        readable = [n for n in names if PACKET_NAME.match(n)]
        metafunc.parametrize("ztf_packet_name", readable or ["(no packets)"])


def _first_record(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        return cast(dict[str, Any], reader.writer_schema), cast(dict[str, Any], next(reader))


@pytest.fixture(scope="session")
def first_record() -> Callable[[Path], tuple[dict[str, Any], dict[str, Any]]]:
    """``first_record(path)`` -> (writer schema, first alert record), read with fastavro alone."""
    return _first_record


@pytest.fixture(scope="session")
def rewrite_packet() -> Callable[..., bytes]:
    """``rewrite_packet(path, *mutations, schema=None)`` -> new packet bytes.

    Reads a real packet with its writer schema and writes one record per mutation (a function
    that edits a deep copy of the alert record in place); ``schema`` may edit the writer
    schema first (e.g. to add or drop fields, as a new schema version would).
    """

    def rewrite(
        path: Path,
        *mutations: Callable[[dict[str, Any]], None],
        schema: Callable[[dict[str, Any]], None] | None = None,
    ) -> bytes:
        import copy

        writer_schema, record = copy.deepcopy(_first_record(path))
        if schema is not None:
            schema(writer_schema)
        records = []
        for mutate in mutations or (lambda r: None,):
            copied = copy.deepcopy(record)
            mutate(copied)
            records.append(copied)
        buf = io.BytesIO()
        fastavro.writer(buf, fastavro.parse_schema(writer_schema), records)
        return buf.getvalue()

    return rewrite


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


def committed_offset(bootstrap: str, group_id: str, topic: str) -> int:
    """The offset ``group_id`` has committed on partition 0 of ``topic`` (negative: none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        (tp,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()
