"""Every message of a run's topics, read back as produced, before anything deduplicates it.

A :class:`Tap` is a thread with its own consumer, assigned every partition of ``images.raw``,
``scores``, ``candidates`` and ``images.dlq`` from offset 0, outside any consumer group (it
commits nothing and moves nobody's offsets). It keeps one :class:`Seen` per message: where it is
(topic, partition, offset), when it was produced (the message's create time, milliseconds of
the producer's wall clock), its key, and what the checker needs of its value: the record's
identity and the output it serves. A value that does not decode is kept as poison (``identity``
None), never dropped. ARCHITECTURE.md, "Topology" gives each topic's key and identity.

The tap must read while the run lives: the memory broker's log ends with ``skyloop run``. The
checker tells whether it saw everything (:func:`tools.chaos.checker.check` compares it with the
Kafka positions the sink stored), so a tap that fell behind is an error, never a silent pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from processors.core.codec import default_codec
from processors.core.records import TOPICS

__all__ = ["TAPPED", "Seen", "Tap", "identity_of"]

TAPPED = ("images.raw", "scores", "candidates", "images.dlq")
"""The topics the tap reads (``control.events`` is the controller's and is not an output)."""


@dataclass(frozen=True)
class Seen:
    """One message as it was on its topic.

    ``identity``: the record's identity in the topic's terms (``(image_id,)`` for images,
    ``(image_id, model_version, role)`` for scores, ``(image_id, model_version)`` for
    candidates, ``(original topic, partition, offset, processor)`` for dead letters), None for
    a value that does not decode. ``output``: what the record serves, for telling a redelivery
    that served the same thing from one that served something else (scores: the ensemble score,
    the candidate flag, the control offset it was made under; candidates: the score and the
    control offset).
    """

    topic: str
    partition: int
    offset: int
    produced_ms: int
    key: str | None
    identity: tuple[Any, ...] | None
    output: tuple[Any, ...] = ()
    flagged: bool = False
    """scores: ``is_candidate`` of a served role (production or canary)."""

    @property
    def image_id(self) -> str | None:
        return str(self.identity[0]) if self.identity and self.topic != "images.dlq" else None


def identity_of(topic: str, record: dict[str, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(identity, served output) of a decoded record of ``topic``."""
    if topic == "images.raw":
        return (record["image_id"],), ()
    if topic == "scores":
        output: tuple[Any, ...] = (
            round(float(record["ensemble_score"]), 9),
            bool(record["is_candidate"]),
            int(record["control_offset"]),
        )
        return (record["image_id"], record["model_version"], record["role"]), output
    if topic == "candidates":
        served = (round(float(record["ensemble_score"]), 9), int(record["control_offset"]))
        return (record["image_id"], record["model_version"]), served
    if topic == "images.dlq":
        ident = (
            record["original_topic"],
            record["partition"],
            record["offset"],
            record["processor"],
        )
        return ident, ()
    raise ValueError(f"the tap does not read {topic!r}")


def decode(
    topic: str, partition: int, offset: int, produced_ms: int, key: bytes | None, value: bytes
) -> Seen:
    """A :class:`Seen` for one raw message (poison when the value does not decode)."""
    text_key = key.decode(errors="replace") if key is not None else None
    try:
        record = default_codec().decode(value, TOPICS[topic].schema)
        identity, output = identity_of(topic, record)
    except Exception:  # any undecodable value is poison, whatever the codec raised
        return Seen(topic, partition, offset, produced_ms, text_key, None)
    flagged = (
        topic == "scores"
        and bool(record["is_candidate"])
        and record["role"] in ("production", "canary")
    )
    return Seen(topic, partition, offset, produced_ms, text_key, identity, output, flagged)


class Tap:
    """Reads :data:`TAPPED` of a run from the beginning until :meth:`stop`; see the module."""

    def __init__(self, bootstrap: str, topic_prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = topic_prefix
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._scored: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-tap", daemon=True)

    def start(self) -> Tap:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> list[Seen]:
        """Stop reading and return what was seen, in the order read."""
        self._stop.set()
        self._thread.join(timeout_s)
        return self.snapshot()

    def scored(self) -> int:
        """Distinct images with a production score read so far."""
        with self._lock:
            return len(self._scored)

    def scored_after(self, partition_wall: dict[int, float]) -> set[int]:
        """The ``scores`` partitions (of those given) with a record produced after their time."""
        with self._lock:
            return {
                s.partition
                for s in self.seen
                if s.topic == "scores"
                and s.partition in partition_wall
                and s.produced_ms / 1000 > partition_wall[s.partition]
            }

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def _run(self) -> None:
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"chaos-tap-{time.time_ns()}",  # never joins: assign() only
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.message.max.bytes": 4_000_000,
                "fetch.queue.backoff.ms": 20,
            }
        )
        consumer.assign(
            [
                TopicPartition(f"{self.prefix}{t}", p, 0)
                for t in TAPPED
                for p in range(TOPICS[t].partitions)
            ]
        )
        cut = len(self.prefix)
        try:
            while not self._stop.is_set():
                batch = consumer.consume(500, 0.2)
                got = []
                for m in batch:
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            self.errors.append(str(err))
                        continue
                    got.append(
                        decode(
                            (m.topic() or "")[cut:],
                            m.partition() or 0,
                            m.offset() or 0,
                            m.timestamp()[1],
                            m.key(),
                            m.value() or b"",
                        )
                    )
                if got:
                    with self._lock:
                        self.seen.extend(got)
                        self._scored.update(
                            s.identity[0]
                            for s in got
                            if s.topic == "scores" and s.identity and s.identity[2] == "production"
                        )
        finally:
            consumer.close()
