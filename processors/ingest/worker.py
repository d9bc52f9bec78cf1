"""``skyloop worker ingest``: image sources → ``images.raw`` (and their dead letters).

The worker's entry point (:data:`SPEC`, :func:`run`); the ingest loop itself is
:func:`processors.ingest.processor.run_ingest`. Importing this module is cheap.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from processors.core.worker import WHOLE_LOG, WorkerSpec

__all__ = ["DEFAULT_SOURCES", "SPEC", "run"]

DEFAULT_SOURCES = ["synthetic", "hubble"]
"""Sources ingested when none is named (``skyloop run`` and ``skyloop worker ingest``)."""

SPEC = WorkerSpec(
    name="ingest",
    summary="reads image sources, produces image records (unreadable items as dead letters)",
    mode="source producer",
    consumes=(),
    produces=("images.raw", "images.dlq"),
    state=("dedupe windows",),  # recent ids, counting distinct images and dead letters
    folds=WHOLE_LOG,
    emits=(),
    settings_sections=("ingest", "sources"),
    group="ingest",
    run="processors.ingest.worker:run",
)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Ingest ``--source`` specs (default :data:`DEFAULT_SOURCES`), interleaved, until the
    sources end, ``--images`` items or ``--duration`` (SIGTERM/SIGINT stop it cleanly)."""
    from processors.core.durations import duration_seconds
    from processors.core.runner import StopSignal
    from processors.ingest.processor import describe_source, run_ingest
    from processors.ingest.sources import Interleaved, source_from_spec

    stop = StopSignal().install()
    specs = getattr(args, "source", None) or DEFAULT_SOURCES
    source = Interleaved([source_from_spec(s, stop=stop.event) for s in specs], stop=stop.event)
    skip = None
    if getattr(args, "skip", None):
        from processors.ingest.skip import StoredSkip

        skip = StoredSkip.read(args.skip)
        skip.attach(source)
    duration = getattr(args, "duration", None)
    summary = run_ingest(
        settings,
        settings.kafka.bootstrap_servers,
        source,
        limit=getattr(args, "images", None) or None,
        duration_s=duration_seconds(duration) if duration else None,
        stop=stop,
        progress_dir=settings.progress_dir,
        skip=skip,
    )
    for source_name, source_counts in sorted(summary.sources.items()):
        print(f"ingest: {describe_source(source_name, source_counts)}", file=sys.stderr)
    return 0
