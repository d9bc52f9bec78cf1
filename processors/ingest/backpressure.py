"""Backpressure: ingest waits while the scorers are more than ``ingest_max_lag`` images behind.

An endless source (a synthetic sky, a survey archive) can be read far faster than images are
scored; without a bound, ``images.raw`` grows without limit, the broker's memory with it, and
every control decision that acts at ingestion (a paused source, new weights) takes effect only
after the whole backlog is scored. :class:`ScoreLag` measures the scorers' lag on ``images.raw``
(high watermark minus the score group's committed offset, summed over partitions) with its own
client, which never joins the group; :meth:`ScoreLag.hold` waits, checking every ``interval_s``,
until the lag is back under the bound or ``stop`` is set. ``ingest_max_lag = 0`` disables it
(bulk loads into a topic that nothing consumes yet).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from processors.core.config import Settings
from processors.core.kafka import kafka_security
from processors.core.records import TOPICS

__all__ = ["ScoreLag"]

log = logging.getLogger(__name__)


class ScoreLag:
    def __init__(self, settings: Settings, bootstrap: str, interval_s: float = 0.25) -> None:
        self.max_lag = settings.ingest.max_lag
        self.interval_s = interval_s
        self.partitions = [
            TopicPartition(settings.topic("images.raw"), p)
            for p in range(TOPICS["images.raw"].partitions)
        ]
        self._client = Consumer(
            {
                **kafka_security(settings),
                "bootstrap.servers": bootstrap,
                "group.id": settings.group("score"),
                "enable.auto.commit": False,
            }
        )
        self.waited_s = 0.0

    def lag(self) -> int:
        """Images produced to ``images.raw`` that the score group has not committed yet."""
        total = 0
        for tp in self._client.committed(self.partitions, timeout=10):
            low, high = self._client.get_watermark_offsets(tp, timeout=10, cached=False)
            done = tp.offset if tp.offset >= 0 else low
            total += max(high - done, 0)
        return total

    def hold(self, stopped: Callable[[], bool]) -> float:
        """Wait while the lag is over the bound; returns the seconds waited."""
        if self.max_lag <= 0:
            return 0.0
        waited = 0.0
        while not stopped():
            try:
                if self.lag() <= self.max_lag:
                    break
            except KafkaException as exc:  # never block ingestion on a failed measurement
                log.warning("ingest: could not measure the scorers' lag: %s", exc)
                break
            time.sleep(self.interval_s)
            waited += self.interval_s
        self.waited_s += waited
        return waited

    def close(self) -> None:
        self._client.close()
