"""The training process: ``python -m processors.train.train_worker SPEC.json``.

Run by :func:`processors.train.training.train_detector`, never imported by a processor. It
reads a :class:`TrainSpec` (JSON), limits itself before importing torch (address space, then
threads), trains YOLOv8 with ultralytics offline, and writes ``result.json`` next to the spec
with the path of the best weights and ultralytics' own validation metrics.

Exit status: 0 when ``result.json`` was written; 3 when the memory limit was reached (said so
on stderr); anything else is a failure whose reason is in the log (stdout and stderr, which
the parent captures).
"""

from __future__ import annotations

import json
import re
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrainSpec", "main"]

# How an exhausted address space shows: allocations fail, shared objects cannot be mapped.
_MEMORY_SIGNS = re.compile(r"MemoryError|failed to map|[Cc]annot allocate|out of memory")
# Module globals ultralytics reads its thread count from (each imports the name by value).
_THREAD_GLOBALS = (
    "ultralytics.utils",
    "ultralytics.utils.torch_utils",
    "ultralytics.data.base",
    "ultralytics.data.dataset",
    "ultralytics.data.loaders",
)


@dataclass(frozen=True, slots=True)
class TrainSpec:
    data_yaml: str
    model: str  # "yolov8n.yaml" (from scratch) or a parent's weights file
    project: str
    epochs: int
    imgsz: int
    batch: int
    threads: int
    memory_mb: int | None
    seed: int
    config_dir: str
    options: dict[str, float | int | str | bool]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def _limit_memory(memory_mb: int | None) -> None:
    if memory_mb is not None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _train(spec: TrainSpec) -> dict[str, object]:
    import importlib

    import torch

    from processors.yolo.ultralytics_env import offline_ultralytics

    torch.set_num_threads(spec.threads)
    torch.set_num_interop_threads(1)
    offline_ultralytics(Path(spec.config_dir))
    for name in _THREAD_GLOBALS:
        module: Any = importlib.import_module(name)
        if hasattr(module, "NUM_THREADS"):
            setattr(module, "NUM_THREADS", spec.threads)  # noqa: B010 - untyped module global
    from ultralytics import YOLO

    model: Any = YOLO(spec.model, task="detect")
    arguments: dict[str, object] = {
        # One optimizer step per batch: ultralytics' default nominal batch (64) accumulates
        # 4+ batches per step, which on a small dataset is less than one step an epoch.
        "nbs": spec.batch,
        "warmup_epochs": 1.0,
        "val": False,  # validate once, after the last epoch
        **spec.options,
        "data": spec.data_yaml,
        "epochs": spec.epochs,
        "imgsz": spec.imgsz,
        "batch": spec.batch,
        "device": "cpu",
        "workers": 0,
        "project": spec.project,
        "name": "run",
        "exist_ok": True,
        "seed": spec.seed,
        "deterministic": True,
        "plots": False,
        "amp": False,
        "verbose": True,
    }
    model.train(**arguments)
    trainer: Any = model.trainer
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    return {"weights": str(best), "metrics": metrics, **_peak_memory()}


def _peak_memory() -> dict[str, float]:
    """Peak resident set and address space (what ``RLIMIT_AS`` bounds) of this process, MB."""
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmPeak:"):
                peaks["peak_vm_mb"] = int(line.split()[1]) / 1024.0
    return peaks


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m processors.train.train_worker SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(args[0])
    spec = TrainSpec.read(spec_path)
    _limit_memory(spec.memory_mb)
    try:
        result = _train(spec)
    except (MemoryError, ImportError, OSError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        if spec.memory_mb is None or not _MEMORY_SIGNS.search(text):
            raise
        print(
            f"training stopped: the memory limit of {spec.memory_mb} MB (RLIMIT_AS) was reached: "
            f"{text}",
            file=sys.stderr,
        )
        return 3
    (spec_path.parent / "result.json").write_text(json.dumps(result, sort_keys=True), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
