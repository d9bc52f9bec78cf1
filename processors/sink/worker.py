"""``skyloop worker sink``: every topic → its ClickHouse table.

The worker's entry point (:data:`SPEC`, :func:`run`); the processor is
:class:`processors.sink.processor.SinkProcessor`. Importing this module is cheap.
"""

from __future__ import annotations

import argparse
from typing import Any

from processors.core.worker import WHOLE_LOG, WorkerSpec, run_batch_loop

__all__ = ["SPEC", "run"]

SPEC = WorkerSpec(
    name="sink",
    summary="writes every topic into ClickHouse, serves `skyloop sql`, writes run-time reports",
    mode="batch loop",
    consumes=(
        "images.raw",
        "scores",
        "scores.revised",
        "candidates",
        "control.events",
        "images.dlq",
    ),
    produces=("images.dlq",),
    # one ClickHouse table per topic; recent ids counting distinct ids; run-time reports
    state=("ClickHouse tables", "dedupe windows", "reports"),
    folds=WHOLE_LOG,
    emits=(),
    settings_sections=("sink", "report"),
    group="sink",
    run="processors.sink.worker:run",
    processor="processors.sink.processor:SinkProcessor",
)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Sink until SIGTERM/SIGINT, in batches sized for ClickHouse (few, large inserts).

    The garbage collector is relaxed first (:func:`processors.sink.processor.relax_gc`).
    """
    from processors.sink.processor import SinkProcessor, relax_gc

    relax_gc()
    return run_batch_loop(
        SinkProcessor(),
        settings,
        batch_size=settings.sink.batch_size,
        max_batch_bytes=settings.sink.batch_max_bytes,
        max_wait_s=settings.sink.batch_max_wait_ms / 1000,
    )
