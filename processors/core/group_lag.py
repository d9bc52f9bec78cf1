"""Where a consumer group stands on a topic, read by a client that never joins the group.

Ingest's backpressure (the score group on ``images.raw``) and the scorer's control-lag bound
(the controller's group on ``scores``) both read a group's committed offsets next to each
partition's watermarks; this is that reading. The embedded broker's high watermark is the last
batch's first offset + 1 (ARCHITECTURE.md, "The local stack"), so a lag read from it is short
by up to a batch per partition.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from processors.core.config import Settings
from processors.core.kafka import kafka_security
from processors.core.records import TOPICS

__all__ = ["GroupProbe", "Position"]


@dataclass(frozen=True)
class Position:
    """One partition: the group's committed offset (-1: none yet) and the watermarks."""

    committed: int
    low: int
    high: int


class GroupProbe:
    """Reads ``group``'s positions on topic ``base`` (its base name). Raises KafkaException
    when the broker does not answer within ``timeout_s``."""

    def __init__(
        self, settings: Settings, bootstrap: str, group: str, base: str, timeout_s: float = 10.0
    ) -> None:
        self.partitions = [
            TopicPartition(settings.topic(base), p) for p in range(TOPICS[base].partitions)
        ]
        self.timeout_s = timeout_s
        self._client = Consumer(
            {
                **kafka_security(settings),
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
            }
        )

    def positions(self) -> list[Position]:
        out = []
        for tp in self._client.committed(self.partitions, timeout=self.timeout_s):
            low, high = self._client.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
            out.append(Position(tp.offset if tp.offset >= 0 else -1, low, high))
        return out

    def close(self) -> None:
        self._client.close()
