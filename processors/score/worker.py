"""``skyloop worker score``: image records → scores (unreadable images as dead letters).

The worker's entry point (:data:`SPEC`, :func:`run`); the processor is
:class:`processors.score.processor.ScoreProcessor`. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import argparse
from typing import Any

from processors.core.worker import WHOLE_LOG, WorkerSpec, join_then_run

__all__ = ["SPEC", "run"]

SPEC = WorkerSpec(
    name="score",
    summary="scores every image with the served models' OOD ensembles (pausable; scales out)",
    mode="batch loop",
    consumes=("images.raw",),
    produces=("scores", "images.dlq"),
    state=("artifact store", "model cache"),  # weights and calibration references, read
    folds=WHOLE_LOG,
    emits=(),
    settings_sections=("score", "batch", "ood", "calibration"),
    group="score",
    run="processors.score.worker:run",
    processor="processors.score.processor:ScoreProcessor",
)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Score until SIGTERM/SIGINT (the runner's loop; see :mod:`processors.core.runner`)."""

    def processor() -> Any:  # imported after the join (torch): see join_then_run
        from processors.score.processor import ScoreProcessor

        return ScoreProcessor()

    return join_then_run(SPEC, processor, settings)
