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

from confluent_kafka import KafkaException

from processors.core.config import Settings
from processors.core.group_lag import GroupProbe

__all__ = ["ScoreLag"]

log = logging.getLogger(__name__)


class ScoreLag:
    def __init__(self, settings: Settings, bootstrap: str, interval_s: float = 0.25) -> None:
        self.max_lag = settings.ingest.max_lag
        self.interval_s = interval_s
        self._probe = GroupProbe(settings, bootstrap, settings.group("score"), "images.raw")
        self.waited_s = 0.0

    def lag(self) -> int:
        """Images produced to ``images.raw`` that the score group has not committed yet."""
        return sum(
            max(p.high - (p.committed if p.committed >= 0 else p.low), 0)
            for p in self._probe.positions()
        )

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
        self._probe.close()
