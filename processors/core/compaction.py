"""Compaction of changelog topics on the embedded broker, done by the hot log's rotation.

The in-memory broker never compacts (ARCHITECTURE.md, "The local stack"): a Faust table's
changelog keeps every value ever written, although a restored table needs only the latest value
per key. With the table's writer stopped (the rotation stops the controller), :func:`compact`
rewrites each changelog topic to that: it reads every partition to its end, keeps the last
record per key (a tombstone removes the key), deletes the topic (``DeleteTopics`` frees its
memory), creates it again with the same partition count, and writes the kept records back, each
in its own partition, in the order of their last offsets, each its own record batch (the broker's
high watermark is right only for one-record batches, and Faust's recovery reads up to it).

It suits tables kept in memory (Faust's ``memory://`` store, the controller's), which restore
from a changelog's first offset: a store that persists its changelog offsets (RocksDB) would
find them past the end of the rewritten topic.

Invariants: the table a changelog rebuilds (last value per key, tombstones delete) is the same
before and after; afterwards a topic holds at most one record per live key. Nothing may write
the topics meanwhile. The kept records are checked by reading the new topic back; a failure
raises :class:`~processors.core.exceptions.StackError`, which ends ``skyloop run`` unfinished
(``--resume`` continues it from ClickHouse: ARCHITECTURE.md, "Guarantees").
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.core.config import Settings
from processors.core.exceptions import StackError
from processors.core.kafka import kafka_security

__all__ = [
    "Compacted",
    "client_config",
    "compact",
    "compact_in_child",
    "latest_per_key",
    "read_changelog",
]

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None, Any]
"""(key, value, headers) of one changelog record."""


@dataclass(frozen=True)
class Compacted:
    """One topic's compaction: records before and after, bytes (keys and values) before/after."""

    topic: str
    records_before: int
    records_after: int
    bytes_before: int
    bytes_after: int


def _size(records: Iterable[Record]) -> int:
    return sum(len(k or b"") + len(v or b"") for k, v, _ in records)


def read_changelog(
    config: Mapping[str, Any], topic: str, quiet_s: float = 0.5, timeout_s: float = 120
) -> dict[int, list[Record]]:
    """Every record of ``topic`` per partition, in offset order.

    Reads until every partition reported its end and nothing came for ``quiet_s`` (the end alone
    is not trusted: the broker's high watermark is wrong after batched writes). Joins no group.
    ``config``: the client's (``bootstrap.servers`` and security, :func:`client_config`).
    """
    consumer = Consumer(
        {
            **config,
            "group.id": f"skyloop-compaction-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 20,
        }
    )
    out: dict[int, list[Record]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        partitions = sorted(meta.partitions)
        out = {p: [] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        at_end: set[int] = set()
        last = time.monotonic()
        deadline = last + timeout_s
        while len(at_end) < len(partitions) or time.monotonic() - last < quiet_s:
            if time.monotonic() > deadline:
                raise StackError(f"compaction: {topic} not read to its end in {timeout_s:.0f}s")
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(int(msg.partition() or 0))
                    continue
                raise StackError(f"compaction: reading {topic}: {error}")
            partition = int(msg.partition() or 0)
            at_end.discard(partition)
            out[partition].append((msg.key(), msg.value(), msg.headers()))
            last = time.monotonic()
    finally:
        consumer.close()
    return out


def latest_per_key(records: Iterable[Record]) -> list[Record]:
    """The last record of each key, in the order of those last records; tombstones remove.

    >>> latest_per_key([(b"a", b"1", None), (b"b", b"2", None), (b"a", b"3", None),
    ...                 (b"b", None, None)])
    [(b'a', b'3', None)]
    """
    kept: dict[bytes | None, Record] = {}
    for record in records:
        kept.pop(record[0], None)
        if record[1] is not None:
            kept[record[0]] = record
    return list(kept.values())


def _recreate(admin: AdminClient, topic: str, partitions: int, timeout_s: float) -> None:
    for future in admin.delete_topics([topic], operation_timeout=timeout_s).values():
        future.result()
    deadline = time.monotonic() + timeout_s
    while topic in admin.list_topics(timeout=timeout_s).topics:
        if time.monotonic() > deadline:
            raise StackError(f"compaction: {topic} still listed {timeout_s:.0f}s after deletion")
        time.sleep(0.05)
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    for future in admin.create_topics([new], operation_timeout=timeout_s).values():
        future.result()


def _write(config: Mapping[str, Any], topic: str, kept: dict[int, list[Record]]) -> None:
    producer = Producer(
        {
            **config,
            "acks": "all",
            "linger.ms": 0,
            "batch.num.messages": 1,  # one record per batch: the high watermark stays right
            "max.in.flight.requests.per.connection": 1,  # order kept on a retry
        }
    )
    failed: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for partition, records in kept.items():
        for key, value, headers in records:
            producer.produce(
                topic, key=key, value=value, partition=partition, headers=headers,
                on_delivery=delivered,
            )  # fmt: skip
            producer.poll(0)
    if producer.flush(60) or failed:
        raise StackError(f"compaction: writing {topic} back failed: {failed[:3]}")


def client_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """What a client of ``bootstrap`` needs: the address and the security settings."""
    return {**kafka_security(settings), "bootstrap.servers": bootstrap}


def compact(
    config: Mapping[str, Any], topics: Iterable[str], timeout_s: float = 30
) -> list[Compacted]:
    """Compact each existing topic of ``topics`` (module docstring); its writer must be down."""
    admin = AdminClient(dict(config))
    existing = admin.list_topics(timeout=timeout_s).topics
    done = []
    for topic in topics:
        if topic not in existing:
            continue
        before = read_changelog(config, topic)
        kept = {p: latest_per_key(records) for p, records in before.items()}
        _recreate(admin, topic, len(existing[topic].partitions), timeout_s)
        _write(config, topic, kept)
        after = read_changelog(config, topic)
        if {p: [r[:2] for r in rs] for p, rs in after.items()} != {
            p: [r[:2] for r in rs] for p, rs in kept.items()
        }:
            raise StackError(f"compaction: {topic} read back differs from what was written")
        result = Compacted(
            topic,
            sum(map(len, before.values())),
            sum(map(len, after.values())),
            sum(_size(rs) for rs in before.values()),
            sum(_size(rs) for rs in after.values()),
        )
        log.info("compaction: %s", result)
        done.append(result)
    return done


def compact_in_child(
    settings: Settings, bootstrap: str, topics: Iterable[str], timeout_s: float = 300
) -> list[Compacted]:
    """:func:`compact` in a child process (``python -m processors.core.compaction``).

    Why: the records read pass through the caller's heap and librdkafka's fetch buffers; in the
    long-lived supervisor of ``skyloop run`` that kept 5 to 13 MB more after each rotation
    (measured, BENCHMARKS.md). A child returns it all when it exits.
    """
    job = {"config": client_config(settings, bootstrap), "topics": list(topics)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "processors.core.compaction"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"compaction: not done in {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        raise StackError(f"compaction failed (exit {done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    return [Compacted(**item) for item in json.loads(lines[-1] if lines else "[]")]


def main() -> int:
    """The child's side of :func:`compact_in_child`: a job on stdin, the results on stdout."""
    job = json.loads(sys.stdin.read())
    print(json.dumps([asdict(c) for c in compact(job["config"], job["topics"])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
