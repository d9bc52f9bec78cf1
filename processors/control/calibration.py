"""Calibration policy: turn a window of reference scores into thresholds at a target FPR.

Pure (no I/O): the controller feeds it ScoreRecords, stores the resulting reference set as a
content-addressed artifact and emits ``calibration.updated`` with the thresholds it returns.
Because :class:`OODEnsemble` is deterministic, every scorer that refits from the same artifact
reproduces exactly these thresholds' meaning.

Example:
    >>> import numpy as np
    >>> window = ReferenceWindow(model_version="bb@1", size=40, source="sky")
    >>> rng = np.random.default_rng(0)
    >>> for i in range(40):
    ...     _ = window.add(f"img{i}", rng.normal(size=8).astype("float32"), float(rng.normal()))
    >>> window.full
    True
    >>> plan = plan_calibration(window, target_fpr=0.1, vote_k=2)
    >>> sorted(plan.thresholds), plan.evidence["reference_size"]
    (['energy', 'knn', 'mahalanobis'], 40.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from processors.core.records import ScoreRecord
from processors.ood.ensemble import OODEnsemble
from processors.ood.reference import ReferenceSet

__all__ = ["CalibrationPlan", "ReferenceWindow", "plan_calibration", "window_row"]


@dataclass
class ReferenceWindow:
    """The first ``size`` distinct images of one source scored uncalibrated by one model."""

    model_version: str
    size: int
    source: str = ""
    image_ids: list[str] = field(default_factory=list)
    features: list[NDArray[np.float32]] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)

    def add(self, image_id: str, features: NDArray[np.float32], energy: float) -> bool:
        """Add one image; duplicates (redeliveries) and images past ``size`` are ignored."""
        if self.full or image_id in self.image_ids:
            return False
        self.image_ids.append(image_id)
        self.features.append(np.asarray(features, dtype=np.float32))
        self.energy.append(float(energy))
        return True

    @property
    def full(self) -> bool:
        return len(self.image_ids) >= self.size

    def reference(self) -> ReferenceSet:
        return ReferenceSet(np.stack(self.features), np.asarray(self.energy), self.model_version)


def window_row(score: ScoreRecord) -> tuple[NDArray[np.float32], float] | None:
    """(features, raw energy) of an uncalibrated score record, or None if it carries neither."""
    if score["calibrated"] or score["embedding"] is None:
        return None
    energy = next((d["raw"] for d in score["detectors"] if d["detector"] == "energy"), None)
    if energy is None or not np.isfinite(energy):
        return None
    features = np.frombuffer(score["embedding"], dtype="<f2").astype(np.float32)
    if not np.isfinite(features).all():
        return None
    return features, float(energy)


@dataclass(frozen=True)
class CalibrationPlan:
    reference: ReferenceSet
    thresholds: dict[str, float]
    evidence: dict[str, float]


def plan_calibration(window: ReferenceWindow, target_fpr: float, vote_k: int) -> CalibrationPlan:
    """Fit the ensemble on the window and pick thresholds for a k-of-3 vote at ``target_fpr``."""
    reference = window.reference()
    ensemble = OODEnsemble.fit(reference)
    thresholds = ensemble.thresholds_for_fpr(target_fpr, vote_k)
    evidence = {
        "reference_size": float(len(reference)),
        "calibration_size": float(ensemble.calibration_size),
        "target_fpr": float(target_fpr),
        "mahalanobis_shrinkage": float(ensemble.mahalanobis.shrinkage_ or 0.0),
    }
    return CalibrationPlan(reference, thresholds, evidence)
