"""Which localizer serves a candidate, and what the others found: the detector rollout applied.

:class:`LocalizerSet` resolves the detector slots of ``ControlState.detector`` (production,
shadow, canary; see :mod:`processors.core.rollouts`) to loaded YOLO models and localizes one
image with all of them:

- the **baseline** (source extraction on the image's own pixels,
  :func:`processors.yolo.extraction.extract_boxes`) always runs: it is cheap, it is what serves
  before any detector does, and its boxes are the pseudo-labels' (from pixels, not from a
  model's predictions);
- the **served** boxes are the canary's for an image its traffic fraction routes there (the
  scorer's hash of image_id, :func:`processors.core.rollouts.routes_to_canary`), else
  production's, else the baseline's;
- **unserved** outputs: the shadow's, and production's for a canary-served image (role
  ``production``; ``baseline`` while no detector serves), so the canary is judged against
  production on the same images.

Invariants: each distinct weights artifact is loaded once and kept; one that cannot be loaded
(absent, corrupt, not a YOLO checkpoint) is logged once and remembered as unavailable; a
detector that fails on an image (:class:`~processors.core.exceptions.DetectorError`, e.g. non
finite outputs) yields no output for it and a counted failure: a canary that fails is served by
production instead, and the missing output is the controller's evidence. Nothing is invented.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors.core.artifacts import ArtifactError, ArtifactStore
from processors.core.exceptions import SkyloopError
from processors.core.records import Box
from processors.core.rollouts import ModelSlot, Rollout, routes_to_canary
from processors.yolo.extraction import extract_boxes

__all__ = ["BASELINE", "Localization", "LocalizerSet", "Output"]

log = logging.getLogger(__name__)

BASELINE = "baseline:source-extraction"


@dataclass(frozen=True)
class Output:
    version: str
    role: str
    boxes: tuple[Box, ...]
    latency_ms: float


@dataclass
class Localization:
    served: Output
    baseline: tuple[Box, ...]
    unserved: list[Output] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class LocalizerSet:
    def __init__(self, store: ArtifactStore, models_dir: Path) -> None:
        self.store = store
        self.models_dir = models_dir
        self._loaded: dict[str, Any] = {}
        self._failed: dict[str, str] = {}

    def localize(self, image_id: str, plane: NDArray[np.float32], rollout: Rollout) -> Localization:
        started = time.perf_counter()
        baseline = tuple(extract_boxes(plane))
        base = Output(BASELINE, "baseline", baseline, (time.perf_counter() - started) * 1000)
        result = Localization(served=base, baseline=baseline)
        production = self._run(rollout.production, "production", plane, result) or base
        canary = None
        if rollout.canary is not None and routes_to_canary(image_id, rollout.canary.fraction):
            canary = self._run(rollout.canary, "canary", plane, result)
        if canary is not None:
            result.served = canary
            result.unserved.append(production)  # role production, or baseline before any
        else:
            result.served = production
        shadow = self._run(rollout.shadow, "shadow", plane, result)
        if shadow is not None:
            result.unserved.append(shadow)
        return result

    def _run(
        self, slot: ModelSlot | None, role: str, plane: NDArray[np.float32], result: Localization
    ) -> Output | None:
        if slot is None:
            return None
        model = self._model(slot)
        if model is None:
            result.failures.append(f"{role}_unavailable")
            return None
        started = time.perf_counter()
        try:
            boxes = model.predict([plane])[0]
        except SkyloopError as exc:
            log.warning("detect: %s detector %s failed: %s", role, slot.version, exc)
            result.failures.append(f"{role}_failed")
            return None
        return Output(slot.version, role, tuple(boxes), (time.perf_counter() - started) * 1000)

    def _model(self, slot: ModelSlot) -> Any:
        key = slot.artifact_id or ""
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            return None
        try:
            if not slot.artifact_id:
                raise ArtifactError(f"detector {slot.version} names no weights artifact")
            path = self.models_dir / f"{slot.artifact_id}.pt"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(self.store.get_bytes(slot.artifact_id))
                tmp.replace(path)
            from processors.yolo.yolo import YoloLocalizer

            model = YoloLocalizer(path, config_dir=self.models_dir / "ultralytics")
        except SkyloopError as exc:
            self._failed[key] = str(exc)
            log.error("detect: detector %s cannot be loaded; left out: %s", slot.version, exc)
            return None
        self._loaded[key] = model
        log.info("detect: loaded detector %s", slot.version)
        return model
