"""The bounded hot log of ``skyloop run``: :class:`~processors.core.retention.HotLog` wired to
the run's broker, supervisor and stop condition (ARCHITECTURE.md, "The local stack").

Drained means: the run's stop condition holds with ingest held (everything it delivered was
handled by every stage, counted from delivery), and every other reader group has committed at
least what the sink has (the controller's candidates and dead letters included). While the
controller is down for the rotation, its changelogs are compacted (latest value per key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from processors.controller.tables import changelog_topics
from processors.core.compaction import (
    Compacted,
    client_config,
    compact_in_child,
    restore_journals,
)
from processors.core.config import Settings
from processors.core.durable_epoch import carry_epoch, state_dir
from processors.core.retention import (
    HotLog,
    broker_rss_bytes,
    folder_bytes,
    groups_past,
    rotate_topics,
)
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor
from processors.topology import resolve

__all__ = [
    "DURABLE_MEASURE_S",
    "HOT_LOG_CONSUMERS",
    "carry_durable_epoch",
    "compaction_journal",
    "hot_log",
]

DURABLE_MEASURE_S = 5.0
"""How often a durable broker's folder is walked for its size (tens of thousands of objects)."""

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

    storage = broker.storage_dir  # durable: the bound is the storage's bytes on disk
    # a durable broker's compaction journals the kept records first: its log outlives a crash
    journal = compaction_journal(settings) if storage else None

    def compact() -> Sequence[Compacted]:
        topics = changelog_topics(settings)
        return compact_in_child(settings, broker.bootstrap_servers, topics, journal_dir=journal)

    return HotLog(
        settings,
        broker.bootstrap_servers,
        progress,
        (lambda: folder_bytes(storage)) if storage else (lambda: broker_rss_bytes(broker.pid)),
        drained,
        [resolve(w).group for w in HOT_LOG_CONSUMERS],
        lambda rotate: sup.recycle("controller", rotate),
        out,
        compact=compact,
        mirror_dir=state_dir(settings.data_dir) if storage else None,
        measure_every_s=DURABLE_MEASURE_S if storage else 0.0,
    )


def compaction_journal(settings: Settings) -> Path:
    """Where a durable broker's compaction keeps a changelog's records while it rewrites it."""
    return state_dir(settings.data_dir) / "compaction"


def carry_durable_epoch(settings: Settings, broker: EmbeddedBroker, progress: Path) -> str:
    """Before any worker of a run on a durable broker: a changelog a crash left mid-compaction
    is written back from its journal, and the run's signal starts from the epoch the broker's
    topics are in, finishing or abandoning a rotation a crash interrupted
    (:func:`processors.core.durable_epoch.carry_epoch`). A memory broker: nothing to carry."""
    if broker.storage_dir is None:
        return "new"
    restore_journals(
        client_config(settings, broker.bootstrap_servers), compaction_journal(settings)
    )
    return carry_epoch(
        state_dir(settings.data_dir),
        progress,
        settle=lambda: rotate_topics(settings, broker.bootstrap_servers),
    )
