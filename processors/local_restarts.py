"""The stop condition of ``skyloop run`` for processors restarted during the run.

A restarted processor's progress file starts from zero, so :func:`processors.local.run_local`
reads the truth here instead: a restarted sink's counts from its ClickHouse tables, a restarted
controller's position from its group's committed offsets against the sink's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from processors.core.config import Settings
from processors.core.exceptions import SkyloopError
from processors.core.kafka import kafka_security
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor
from processors.core.warehouse_rows import SinkSql
from processors.resume_log import Stored
from processors.topology import resolve

__all__ = ["RestartedTruth"]

_SINK_COUNTS_SQL = """
SELECT
  (SELECT uniqExact(image_id) FROM images) AS images,
  (SELECT uniqExact(image_id) FROM scores
    WHERE role = 'production' OR (role = 'canary' AND calibrated)) AS scores,
  (SELECT uniqExact(image_id) FROM scores
    WHERE (role = 'production' OR (role = 'canary' AND calibrated)) AND is_candidate)
    AS candidate_scores,
  (SELECT uniqExact(image_id) FROM candidates) AS candidates,
  (SELECT uniqExact(event_id) FROM control_events) AS control_events,
  (SELECT uniqExact(tuple(image_id, model_version, revision)) FROM score_revisions) AS revisions,
  (SELECT uniqExact(image_id) FROM score_revisions WHERE is_candidate AND NOT was_candidate)
    AS revised_in,
  (SELECT uniqExact(image_id) FROM (
    SELECT image_id FROM scores
      WHERE (role = 'production' OR (role = 'canary' AND calibrated)) AND is_candidate
    UNION ALL
    SELECT image_id FROM score_revisions WHERE is_candidate AND NOT was_candidate))
    AS candidates_expected,
  (SELECT uniqExact(tuple(original_topic, original_partition, original_offset, key))
    FROM dead_letters WHERE startsWith(original_topic, 'source:')) AS dlq_source,
  (SELECT uniqExact(tuple(original_topic, original_partition, original_offset, key))
    FROM dead_letters WHERE original_topic = 'images.raw') AS dlq_images
"""


class RestartedTruth:
    """The stop condition's inputs for processors that were restarted during the run.

    A restarted sink counts distinct ids from zero: its counts then come from its ClickHouse
    tables (what it wrote is what it consumed: it writes before it commits). A restarted
    controller counts consumed scores from zero: it is then caught up when its group's committed
    offsets on ``scores`` and ``images.dlq`` reach the sink's (both monotone; no end offset,
    which the embedded broker gets wrong for batches, ARCHITECTURE.md, "The local stack").
    """

    def __init__(self, settings: Settings, bootstrap: str, run_dir: Path, sup: Supervisor):
        self.settings = settings
        self.bootstrap = bootstrap
        self.run_dir = run_dir
        self.sup = sup
        self._probe: Any = None
        self.broker: EmbeddedBroker | None = None
        self._sink_cache: tuple[float, dict[str, Any]] = (0.0, {})
        self.forced = False
        """Read the truth for every processor: the broker's log was rebuilt (processors.resume)."""
        self.stored: Stored | None = None
        """What ClickHouse held when a resume wrote its skip list: ingest skips it, so its own
        counts leave it out, while the sink's counts read from ClickHouse include it."""

    def ingest(self, progress: dict[str, Any]) -> dict[str, Any]:
        """Ingest's counts on the sink's footing: with what a resume found stored added, so
        that the stop condition waits for every image this ingest publishes, not only for as
        many as it published (the stored ones would make up the difference)."""
        return progress if self.stored is None else self.stored.with_ingested(progress)

    def _restarted(self, name: str) -> bool:
        child = self.sup.children.get(name)
        return self.forced or (child is not None and (child.restarts > 0 or child.recycled > 0))

    def sink(self, progress: dict[str, Any]) -> dict[str, Any]:
        if not self._restarted("sink"):
            return progress
        at, cached = self._sink_cache
        if time.monotonic() - at < 2.0:
            return cached
        try:
            rows = SinkSql(self.run_dir, timeout_s=0.0, request_timeout_s=10.0).rows(
                _SINK_COUNTS_SQL
            )
        except SkyloopError:
            return cached  # the new sink is not serving yet
        counts = {**progress, **rows[0]}
        self._sink_cache = (time.monotonic(), counts)
        return counts

    def controller(self, progress: dict[str, Any], sink: dict[str, Any]) -> dict[str, Any]:
        if not self._restarted("controller"):
            return progress
        from confluent_kafka import Consumer, TopicPartition

        from processors.core.records import TOPICS

        if self._probe is None:
            self._probe = Consumer(
                {
                    **kafka_security(self.settings),
                    "bootstrap.servers": self.bootstrap,
                    "group.id": self.settings.group(resolve("controller").group),
                    "enable.auto.commit": False,
                }
            )
        parts = [
            TopicPartition(self.settings.topic(t), p)
            for t in ("scores", "images.dlq")
            for p in range(TOPICS[t].partitions)
        ]
        try:
            controller_at = self._probe.committed(parts, timeout=5)
            sink_probe = Consumer(
                {
                    **kafka_security(self.settings),
                    "bootstrap.servers": self.bootstrap,
                    "group.id": self.settings.group(resolve("sink").group),
                    "enable.auto.commit": False,
                }
            )
            try:
                sink_at = sink_probe.committed(parts, timeout=5)
            finally:
                sink_probe.close()
        except Exception:
            return {**progress, "consumed": -1}
        caught_up = all(
            max(a.offset, 0) >= max(b.offset, 0)
            for a, b in zip(controller_at, sink_at, strict=True)
        )
        return {**progress, "consumed": sink.get("scores", 0) if caught_up else -1}

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
