"""The stats/controller Faust app: scores and dead letters → control events.

Consumes ``scores`` and ``images.dlq`` (4 partitions each, both keyed by source, so a source's
scores and dead letters meet in one partition and one agent actor). Keeps its state in
changelog-backed tables (:mod:`processors.stats.tables`): ``controller`` (per-source heads
with their per-(model, source) lanes, and the lanes' rings of recent images, the calibration
reference windows among them) and ``lane_windows`` (closed tumbling windows of lane
statistics). Tables restore from their changelogs on restart; the embedded broker restores them
correctly only with ``producer_max_batch_size=1`` (DESIGN §6).

What it emits and in which order is :mod:`processors.stats.service`'s contract; what it decides
is :mod:`processors.control.controller`'s. A timer (every second) lifts the controller's expired
pauses and refreshes the metrics.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from processors.core.config import Settings
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS
from processors.stats.service import ControlService

__all__ = ["build_app"]

log = logging.getLogger(__name__)


def build_app(settings: Settings, bootstrap: str, progress: ProgressFile) -> faust.App:
    """A Faust app wired to ``settings``; run it with ``faust.Worker(app)``."""
    partitions = TOPICS["scores"].partitions
    app = faust.App(
        settings.group("stats"),
        broker=f"kafka://{bootstrap}",
        store="memory://",
        producer_max_batch_size=1,  # the embedded broker restores tables only with this
        broker_session_timeout=settings.session_timeout_ms / 1000,
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )

    def topic(base: str) -> Any:
        return app.topic(
            settings.topic(base),
            key_serializer="raw",
            value_serializer="raw",
            partitions=TOPICS[base].partitions,
        )

    scores_topic, dlq_topic = topic("scores"), topic("images.dlq")
    table = app.Table("controller", partitions=partitions, key_type=str, value_type=bytes)
    windows = app.Table("lane_windows", partitions=partitions, key_type=str, value_type=bytes)
    service = ControlService(settings, bootstrap, progress, table, windows)
    service.start()  # replays control.events before the agents see their first record

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    def _stop(app: faust.App, **_: Any) -> None:
        service.stop()
        progress.write(force=True)

    @app.timer(1.0)
    async def _tick() -> None:
        service.tick()

    @app.agent(scores_topic)
    async def on_scores(stream: Any) -> None:
        async for event in stream.events():
            service.on_score(event.message.partition, event.message.offset, event.value)

    @app.agent(dlq_topic)
    async def on_dead_letters(stream: Any) -> None:
        async for event in stream.events():
            service.on_dead_letter(event.message.partition, event.message.offset, event.value)

    return app
