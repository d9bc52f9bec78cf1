"""Train a YOLOv8 detector in a separate, bounded process.

:func:`train_detector` never trains in the calling process: it starts
``python -m processors.train.train_worker`` in its own session with a spec file, and

1. copies the dataset into ``out_dir/dataset`` first (ultralytics writes label caches next to
   the labels, and the caller's dataset folder is content-addressed: it is never modified);
2. bounds the worker: ``threads`` for torch and ultralytics' own pools, the address space to
   ``memory_mb`` (``RLIMIT_AS``, set by the worker before it imports torch), ``timeout_s`` of
   wall time, after which the whole process group is killed, as it is within half a second of
   ``cancel`` being set (the caller is stopping: :class:`TrainingCancelledError`);
3. captures the worker's stdout and stderr in ``out_dir/train.log``;
4. on success copies the best checkpoint (by ultralytics' validation on the dataset's ``val``
   split) to ``out_dir/weights.pt`` and returns :class:`TrainResult`.

Measured here (YOLOv8n, 64 px, batch 8, one thread): peak RSS ~0.56 GB, address space
~2.2 GB, so the 6 GB default leaves room for larger images. One thread per worker: on two
shared cores a batch took 0.28 s with one torch thread and ~5 s with two.

The ``val`` split selects the best epoch, so it must be part of the training data, never the
held-out set the gate evaluates on. Failure raises :class:`TrainingError` (or
:class:`TrainingTimeoutError`) with the tail of the log; nothing is returned half-done.
``yolov8n.yaml`` starts from scratch; ``parent_weights`` fine-tunes a registered model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import processors
from processors.core.exceptions import (
    TrainingCancelledError,
    TrainingError,
    TrainingTimeoutError,
)
from processors.train.train_worker import TrainSpec
from processors.yolo.ultralytics_env import default_config_dir

__all__ = ["FROM_SCRATCH", "MAX_EPOCHS", "TrainResult", "epochs_for", "train_detector"]

FROM_SCRATCH = "yolov8n.yaml"
MAX_EPOCHS = 400  # however small the dataset: per-epoch overhead, and it would only memorise


def epochs_for(
    samples: int, batch: int, epochs: int, min_steps: int, max_steps: int | None = None
) -> int:
    """``epochs``, or more when that many epochs over ``samples`` (``batch`` per optimizer
    step) would take fewer than ``min_steps`` steps (at most :data:`MAX_EPOCHS`), or fewer
    when they would take more than ``max_steps`` (at least one epoch; ``max_steps`` wins).

    A detector trained from scratch on a small dataset needs a number of steps more than a
    number of passes: on the learning bench's 118 pseudo-labels, 50 epochs (~650 steps) gave
    mAP50 0.21 on held-out truth and 120 epochs (~1,560 steps) 0.37. On a large dataset the
    cap keeps a retrain within its timeout (a step costs ~0.1-0.3 s on one CPU thread).

    Example:
        >>> epochs_for(100, 8, 40, 1500), epochs_for(1000, 8, 40, 1500), epochs_for(8, 8, 40, 0)
        (116, 40, 40)
        >>> epochs_for(4000, 8, 40, 1500, max_steps=6000), epochs_for(10**5, 8, 40, 0, 6000)
        (12, 1)
    """
    steps_per_epoch = max(1, -(-samples // batch))
    wanted = max(epochs, min(MAX_EPOCHS, -(-min_steps // steps_per_epoch)))
    if max_steps is not None:
        wanted = min(wanted, max(1, max_steps // steps_per_epoch))
    return wanted


_LOG_TAIL_CHARS = 4000
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class TrainResult:
    """``weights``: the trained checkpoint; ``seconds``: wall time of the worker; ``log``: its
    output; ``metrics``: ultralytics' final validation on the dataset's own ``val`` split;
    ``peak_rss_mb`` / ``peak_vm_mb``: the worker's peak resident memory and address space."""

    weights: Path
    seconds: float
    log: str
    metrics: dict[str, float]
    peak_rss_mb: float | None = None
    peak_vm_mb: float | None = None


def _tail(log: str) -> str:
    return log[-_LOG_TAIL_CHARS:]


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in _THREAD_ENV:
        env[key] = str(threads)
    # The worker imports this package the way this process did, installed or from a checkout.
    package_root = str(Path(processors.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("YOLO_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["YOLO_VERBOSE"] = "True"  # the log is the evidence when training fails
    return env


def _wait(
    proc: subprocess.Popen[bytes], deadline: float, cancel: threading.Event | None
) -> int | None:
    """The training's exit status; None once it was killed (past ``deadline``, a monotonic
    time, or when ``cancel`` is set), with its whole process group."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None


def train_detector(
    dataset_dir: Path,
    out_dir: Path,
    *,
    epochs: int,
    imgsz: int,
    parent_weights: Path | None = None,
    timeout_s: float,
    threads: int = 1,
    memory_mb: int | None = 6144,
    batch: int = 8,
    seed: int = 0,
    config_dir: Path | None = None,
    options: Mapping[str, float | int | str | bool] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train on the YOLO dataset at ``dataset_dir`` (see :mod:`processors.yolo.dataset`).

    ``options`` are further ultralytics training arguments (``lr0``, ``mosaic``, ``optimizer``,
    ...); the worker's own choices (one optimizer step per batch, one warmup epoch, validation
    only after the last epoch) are defaults they may override, while the data, sizes, device,
    seed, output folder and the offline settings (no plots, no AMP) cannot be overridden.
    """
    dataset_dir, out_dir = Path(dataset_dir).resolve(), Path(out_dir).resolve()
    if not (dataset_dir / "data.yaml").is_file():
        raise TrainingError(f"{dataset_dir} has no data.yaml; write it with write_yolo_dataset")
    if parent_weights is not None and not Path(parent_weights).is_file():
        raise TrainingError(f"parent weights {parent_weights} do not exist")
    if epochs < 1 or imgsz < 32 or threads < 1 or batch < 1 or timeout_s <= 0:
        raise TrainingError(
            f"epochs={epochs}, imgsz={imgsz}, threads={threads}, batch={batch}, "
            f"timeout_s={timeout_s}: need epochs>=1, imgsz>=32, threads>=1, batch>=1, timeout>0"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TrainingError(f"training folder {out_dir} already has files; use a fresh one")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(dataset_dir, out_dir / "dataset")
    spec = TrainSpec(
        data_yaml=str(out_dir / "dataset" / "data.yaml"),
        model=str(Path(parent_weights).resolve()) if parent_weights else FROM_SCRATCH,
        project=str(out_dir / "ultralytics"),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        threads=threads,
        memory_mb=memory_mb,
        seed=seed,
        config_dir=str((config_dir or default_config_dir()).resolve()),
        options=dict(options or {}),
    )
    spec_path = out_dir / "spec.json"
    spec.write(spec_path)
    log_path = out_dir / "train.log"
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            # through the guard: a trainer that dies (even by SIGKILL) takes its training along
            [
                *(sys.executable, "-m", "processors.core.guard", str(os.getpid())),
                *(sys.executable, "-m", "processors.train.train_worker", str(spec_path)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_worker_env(threads),
            cwd=out_dir,
            start_new_session=True,
        )
        rc = _wait(proc, started + timeout_s, cancel)
        if rc is None:
            log = log_path.read_text(encoding="utf-8", errors="replace")
            if cancel is not None and cancel.is_set():
                raise TrainingCancelledError("training stopped: its worker is stopping")
            raise TrainingTimeoutError(
                f"training ran past {timeout_s:g} s and was killed; log tail:\n{_tail(log)}"
            )
    seconds = time.monotonic() - started
    log = log_path.read_text(encoding="utf-8", errors="replace")
    result_path = out_dir / "result.json"
    if rc != 0 or not result_path.is_file():
        raise TrainingError(f"training exited with status {rc}; log tail:\n{_tail(log)}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    best = Path(result["weights"])
    if not best.is_file():
        raise TrainingError(f"training reported weights {best} that do not exist")
    weights = out_dir / "weights.pt"
    shutil.copyfile(best, weights)
    return TrainResult(
        weights=weights,
        seconds=seconds,
        log=log,
        metrics={str(k): float(v) for k, v in result["metrics"].items()},
        peak_rss_mb=result.get("peak_rss_mb"),
        peak_vm_mb=result.get("peak_vm_mb"),
    )
