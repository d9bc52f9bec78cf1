"""``skyloop worker train``: answers ``retrain.requested`` with a trained, gated detector.

The worker's entry point (:data:`SPEC`, :func:`run`); the trainer is
:class:`processors.train.trainer.Trainer`. Importing this module is cheap (no torch).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from processors.core.events import EventType
from processors.core.worker import WHOLE_LOG, WorkerSpec

__all__ = ["SPEC", "lower_priority", "run"]

SPEC = WorkerSpec(
    name="train",
    summary="trains, evaluates and registers detectors when the controller asks (one at a time)",
    mode="control-log follower",
    consumes=(),
    produces=("control.events",),
    state=("artifact store",),  # datasets read; weights and model cards written
    folds=WHOLE_LOG,
    emits=(
        EventType.MODEL_REGISTERED,
        EventType.MODEL_GATE_PASSED,
        EventType.MODEL_GATE_FAILED,
        EventType.BUDGET_DEFERRED,
        EventType.MODEL_ROLLED_BACK,
    ),
    settings_sections=("train", "rollout"),
    group="train",
    run="processors.train.worker:run",
)


def lower_priority() -> None:
    """Make this process (and the training subprocess, which inherits it) background work.

    Training takes only cores the scoring path leaves idle: Linux's SCHED_IDLE runs it only
    then (nice 19 still took 0.4 of a core from a busy run and stalled the scorer's two model
    threads). Elsewhere, the lowest priority instead.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(19)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Follow the control log and answer retrain requests until SIGTERM/SIGINT."""
    from processors.core.progress import ProgressFile
    from processors.core.runner import StopSignal
    from processors.train.trainer import Trainer

    stop = StopSignal().install()
    lower_priority()
    Trainer(
        settings, settings.kafka.bootstrap_servers, ProgressFile(settings.progress_dir, SPEC.group)
    ).run(stop.event)
    return 0
