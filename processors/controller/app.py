"""The controller's Faust app (``skyloop worker controller``): scores, dead letters and
candidates → control events.

Consumes ``scores`` and ``images.dlq`` (4 partitions each, both keyed by source, so a source's
scores and dead letters meet in one partition and one agent actor). Keeps its state in
changelog-backed tables (:mod:`processors.controller.tables`): ``controller`` (per-source heads
with their per-(model, source) lanes, and the lanes' rings of recent images, the calibration
reference windows among them, the rollout tracks, the learning dataset in chunks) and
``lane_windows`` (closed tumbling windows of lane statistics). Tables restore from their
changelogs on restart; the embedded broker restores them correctly only with
``producer_max_batch_size=1`` and never compacts them: the hot log's rotation does, with this app
stopped (ARCHITECTURE.md, "The local stack"). Every changelog record is counted in the progress
file by table and key kind.

What it emits and in which order is :mod:`processors.controller.service`'s contract; what it decides
is :mod:`processors.controller.controller`'s. A timer (every second) lifts the controller's expired
pauses, refreshes the metrics, and seeks back a partition whose records came with a hole that
stayed open, or that has records at the broker and hands over none
(:mod:`processors.controller.ordering`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import faust
from faust.types import TP

from processors.controller.consumer import RewindingApp
from processors.controller.service import ControlService
from processors.controller.tables import TABLES, FaustTable
from processors.core.config import Settings
from processors.core.kafka import faust_credentials
from processors.core.progress import ProgressFile
from processors.core.records import CONTROLLER_GROUP, TOPICS

__all__ = ["build_app"]

log = logging.getLogger(__name__)

BATCH = 64
BATCH_WAIT_S = 0.2
COMMIT_INTERVAL_S = 0.5


def build_app(settings: Settings, bootstrap: str, progress: ProgressFile) -> faust.App:
    """A Faust app wired to ``settings``; run it with ``faust.Worker(app)``."""
    partitions = TOPICS["scores"].partitions
    app = RewindingApp(
        # the app id, kept from when the worker was called stats: it names the consumer group
        # and the tables' changelog topics, so offsets and restored tables stay valid
        settings.group(CONTROLLER_GROUP),
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        # Faust makes this folder even for in-memory tables; by default it lands in the
        # working directory ("<app id>-data"), so keep it with the run's other state
        datadir=settings.data_dir / "controller",
        producer_max_batch_size=1,  # the embedded broker restores tables only with this
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        # a third of the session (Faust's default, 3 s, leaves a 6 s session one late beat)
        broker_heartbeat_interval=settings.kafka.session_timeout_ms / 3000,
        # its committed offsets are how far behind the scorers see it (processors.score.control_lag)
        broker_commit_interval=COMMIT_INTERVAL_S,
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
    candidates_topic = topic("candidates")
    table, windows = (
        app.Table(name, partitions=partitions, key_type=str, value_type=bytes) for name in TABLES
    )
    service = ControlService(
        settings,
        bootstrap,
        progress,
        FaustTable(table, progress),
        FaustTable(windows, progress, lambda _: "window"),
    )
    service.start()  # replays control.events before the agents see their first record
    app.resume_offset = service.resume_offset  # input partitions resume where the table ends

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    def _stop(app: faust.App, **_: Any) -> None:
        service.stop()
        progress.write(force=True)

    @app.timer(1.0)
    async def _tick() -> None:
        service.tick()
        ends: dict[tuple[str, int], int] = {}
        # never while Faust rebalances or restores the tables: it pauses the inputs then, and
        # they must not be handed over before the table is whole
        recovery = getattr(app.tables, "recovery", None)
        settled = not (app.rebalancing or getattr(recovery, "in_recovery", False))
        for tp in app.consumer.assignment() if settled else ():
            with contextlib.suppress(Exception):  # not fetched yet, or revoked meanwhile
                end = app.consumer.highwater(tp)
                if end is not None and end >= 0:
                    ends[(tp.topic, tp.partition)] = end
        # holes open too long, and stalled partitions: fetch again from where records are due
        for topic, partition, offset in service.rewinds(ends):
            log.warning("controller: %s[%d] rewinds to %d", topic, partition, offset)
            progress.add("rewinds")
            try:
                tp = TP(topic, partition)
                app.consumer.resume_partitions({tp})
                await app.consumer.seek(tp, offset)
            except Exception as exc:  # not assigned here any more: the hole is accepted later
                log.warning("controller: %s[%d] not rewound: %s", topic, partition, exc)

    def records(events: Any) -> list[tuple[int, int, bytes]]:
        return [(e.message.partition, e.message.offset, e.value) for e in events]

    # Batches (at most BATCH events, or what came within BATCH_WAIT_S): each source's state
    # is written once per batch (see processors.controller.service).
    @app.agent(scores_topic)
    async def on_scores(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=BATCH_WAIT_S):
            service.on_scores(records(events))

    @app.agent(dlq_topic)
    async def on_dead_letters(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=BATCH_WAIT_S):
            service.on_dead_letters(records(events))

    @app.agent(candidates_topic)
    async def on_candidates(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=BATCH_WAIT_S):
            service.on_candidates(records(events))

    return app
