"""The bounded hot log of ``skyloop run``: :class:`~processors.core.retention.HotLog` wired to
the run's broker, supervisor and stop condition (ARCHITECTURE.md, "The local stack").

Drained means: the run's stop condition holds with ingest held (everything it delivered was
handled by every stage, counted from delivery), and every other reader group has committed at
least what the sink has (the controller's candidates and dead letters included). While the
controller is down for the rotation, its changelogs are compacted (latest value per key).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from processors.controller.tables import changelog_topics
from processors.core.compaction import compact_in_child
from processors.core.config import Settings
from processors.core.retention import HotLog, broker_rss_bytes, groups_past
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor
from processors.topology import resolve

__all__ = ["HOT_LOG_CONSUMERS", "hot_log"]

HOT_LOG_CONSUMERS = ("score", "detect", "sink")
"""The batch-loop workers that release their subscriptions for a rotation."""


def hot_log(
    settings: Settings,
    broker: EmbeddedBroker,
    sup: Supervisor,
    progress: Path,
    out: TextIO,
    stop_condition: Callable[[], bool],
) -> HotLog:
    """The rotation driver; ``stop_condition()`` is the run's, with ingest taken as done."""
    readers = {resolve(w).group: resolve(w).consumes for w in ("score", "controller", "detect")}

    def drained() -> bool:
        return stop_condition() and groups_past(
            settings, broker.bootstrap_servers, readers, resolve("sink").group
        )

    return HotLog(
        settings,
        broker.bootstrap_servers,
        progress,
        lambda: broker_rss_bytes(broker.pid),
        drained,
        [resolve(w).group for w in HOT_LOG_CONSUMERS],
        lambda rotate: sup.recycle("controller", rotate),
        out,
        compact=lambda: compact_in_child(
            settings, broker.bootstrap_servers, changelog_topics(settings)
        ),
    )
