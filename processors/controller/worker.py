"""``skyloop worker controller`` (formerly ``stats``): scores, dead letters and candidates →
control events.

The worker's entry point (:data:`SPEC`, :func:`run`); the Faust app is
:func:`processors.controller.app.build_app`, its decisions :mod:`processors.controller.service`
and :mod:`processors.controller.controller`. Importing this module is cheap (no Faust).

Renamed from ``stats``: ``stats`` stays an accepted name, and the consumer group id, the Faust
app id (``<group_prefix>.stats``, which names its changelog topics) and the progress file keep
the old name, so committed offsets, restored tables and stored data stay valid.
"""

from __future__ import annotations

import argparse
from typing import Any

from processors.core.events import EventType
from processors.core.records import CONTROLLER_GROUP
from processors.core.worker import WHOLE_LOG, WorkerSpec

__all__ = ["SPEC", "run"]

SPEC = WorkerSpec(
    name="controller",
    aliases=("stats",),
    summary="calibrates, detects drift, decays thresholds, steers sources, runs model rollouts",
    mode="faust app",
    consumes=("scores", "images.dlq", "candidates"),
    produces=("control.events", "scores.revised"),
    # tables (changelog-backed): per-source heads with their lanes and reference rings; the
    # closed windows of lane statistics. Artifacts: calibration references, training datasets.
    state=("Faust table controller", "Faust table lane_windows", "artifact store"),
    folds=WHOLE_LOG,
    emits=(
        EventType.CALIBRATION_UPDATED,
        EventType.DRIFT_DETECTED,
        EventType.DECISIONS_REVISED,
        EventType.THRESHOLD_SET,
        EventType.THRESHOLD_DECAYED,
        EventType.SOURCE_WEIGHTS_SET,
        EventType.SOURCE_PAUSED,
        EventType.SOURCE_RESUMED,
        EventType.PIPELINE_PAUSED,
        EventType.PIPELINE_RESUMED,
        EventType.RETRAIN_REQUESTED,
        EventType.BUDGET_DEFERRED,
        EventType.MODEL_GATE_PASSED,
        EventType.MODEL_GATE_FAILED,
        EventType.MODEL_SHADOW_STARTED,
        EventType.MODEL_CANARY_STARTED,
        EventType.MODEL_PROMOTED,
        EventType.MODEL_ROLLED_BACK,
    ),
    settings_sections=("calibration", "drift", "decay", "sources", "health", "rollout", "learning"),
    group=CONTROLLER_GROUP,
    run="processors.controller.worker:run",
)


def run(settings: Any, args: argparse.Namespace) -> int:
    """Run the controller's Faust app until it is stopped; 'ready' once partitions are assigned.

    Its maths (calibrations, drift tests) is small and occasional: BLAS gets ``ood_threads``
    threads (one by default), so it never spins cores away from the scorer's model.
    """
    import faust
    from threadpoolctl import threadpool_limits

    from processors.controller.app import build_app
    from processors.core.progress import ProgressFile

    threadpool_limits(limits=settings.ood.threads, user_api="blas")

    progress = ProgressFile(settings.progress_dir, SPEC.group)
    app = build_app(settings, settings.kafka.bootstrap_servers, progress)

    @app.on_partitions_assigned.connect
    async def _ready(*_: Any, **__: Any) -> None:
        progress.set("ready", True)
        progress.write(force=True)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
    return 0
