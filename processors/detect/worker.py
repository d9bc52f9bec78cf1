"""``skyloop worker detect``: served candidates' scores → candidates (boxes, cross-matches,
labels).

The worker's entry point (:data:`SPEC`, :func:`run`); the processor is
:class:`processors.detect.processor.DetectProcessor`. Importing this module is cheap.
"""

from __future__ import annotations

import argparse
from typing import Any

from processors.core.worker import WHOLE_LOG, WorkerSpec, join_then_run

__all__ = ["SPEC", "run"]

SPEC = WorkerSpec(
    name="detect",
    summary="localizes and cross-matches served candidates, judges pseudo-labels",
    mode="batch loop",
    consumes=("scores", "scores.revised"),
    produces=("candidates", "images.dlq"),
    # artifacts: detector weights read, pseudo-label samples written; novelty references in memory
    state=("artifact store", "novelty references"),
    folds=WHOLE_LOG,
    emits=(),
    settings_sections=("crossmatch", "learning"),
    group="detect",
    run="processors.detect.worker:run",
    processor="processors.detect.processor:DetectProcessor",
)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Detect until SIGTERM/SIGINT (the runner's loop; see :mod:`processors.core.runner`)."""

    def processor() -> Any:  # imported after the join (torch): see join_then_run
        from processors.detect.processor import DetectProcessor

        return DetectProcessor()

    return join_then_run(SPEC, processor, settings)
