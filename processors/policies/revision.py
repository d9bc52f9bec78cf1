"""Revision since a change point: served decisions made again under a drift's recalibration.

When a drift is confirmed, the images served between its change point and the moment the new
calibration took effect were decided under a calibration that no longer described the stream:
a flood flagged too many of them, a blinded detector none. The live decisions stay as
published; the stored catalogue is corrected by deciding those images again.

The lane's revision waits (:class:`PendingRevision`) from the drift's recalibration until the
first served score made under a calibration the drift did not supersede: scores still in
flight under the old calibration keep arriving until then, and they are revised too. A source
is one partition scored in order, so after that score no older decision of the lane arrives.
:func:`revise` then decides every such image again from the features and energies the
controller's ring holds.

The images that formed the recalibration's reference cannot be judged by it: the fit half's
kNN and Mahalanobis distances include themselves, and the calibration half sits exactly on the
grid its threshold was cut from (under the conformal rule none of them can be flagged). They
are cross-fitted instead (:func:`cross_fitted`): the reference is split in two interleaved
folds, and an image of one fold is judged by an ensemble fitted and thresholded (the in-sample
rate nearest the target; a half-size fold is too small for the conformal bound) on the other
fold alone. Every other image (trimmed from the reference, or served after it) is judged by the
recalibration itself, at its own thresholds.

Invariants: pure and deterministic in its inputs (the same ring entries and reference give the
same decisions, so a replayed controller revises identically); decisions use the ring's
float16 features, the very rows the recalibration was fitted on, so a revised score may differ
from a scorer's on the same image by that rounding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors.core.records import DetectorScore
from processors.ood.ensemble import OODEnsemble
from processors.ood.reference import ReferenceSet, ReferenceSetError
from processors.ood.verdicts import detector_scores

__all__ = [
    "FOLDS",
    "Judge",
    "PendingRevision",
    "Revised",
    "Served",
    "cross_fitted",
    "revise",
    "revision_artifact",
    "revision_evidence",
]

FOLDS = 2
"""Folds of a reference's cross-fitting: reference row ``r`` is in fold ``r % FOLDS``."""


@dataclass(frozen=True)
class Served:
    """One live decision to revise: the image, its features and energy, what was decided."""

    seq: int
    image_id: str
    features: NDArray[np.float32]
    energy: float
    was_candidate: bool
    calibration_id: str | None


@dataclass(frozen=True)
class Revised:
    """One image's decision under the revising calibration, beside its live one."""

    seq: int
    image_id: str
    detectors: list[DetectorScore]
    ensemble_score: float
    votes_for: int
    votes_needed: int
    is_candidate: bool
    was_candidate: bool
    revised_calibration_id: str | None


@dataclass
class PendingRevision:
    """A lane's revision from the drift's recalibration until it is due (module docstring).

    ``superseded``: the calibrations whose decisions it revises (the one in force at the drift
    and any the images since the change point were served under); ``from_seq``: the change
    point; ``reference_to``: the last seq of the recalibration's window, ``reference_from`` its
    first (None: ``from_seq``; later for the epoch's first refinement, whose window may begin
    after the change point) and ``trimmed`` the seqs it left out, so reference row ``r`` is the
    ``r``-th seq of the window not trimmed; ``causes``: the recalibration's and the drift's (or,
    for a refinement, the calibration it refines) event ids; ``to_seq``: the last image it
    revises (None: the newest served when it is due); ``reason``: the calibration's
    (``drift``, or ``refine`` for the epoch's first refinement).
    """

    number: int
    calibration: str
    reference: str
    thresholds: dict[str, float]
    vote_k: int
    target_fpr: float
    from_seq: int
    reference_to: int
    trimmed: list[int] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    reference_from: int | None = None
    to_seq: int | None = None
    reason: str = "drift"

    def reference_rows(self) -> dict[int, int]:
        """Seq → reference row, for the seqs of the recalibration's window it kept."""
        cut = set(self.trimmed)
        first = self.from_seq if self.reference_from is None else self.reference_from
        kept = [seq for seq in range(first, self.reference_to + 1) if seq not in cut]
        return {seq: row for row, seq in enumerate(kept)}

    def until(self, end: int) -> int:
        """Where the revised seqs end (exclusive) when the ring is read up to ``end``
        (exclusive)."""
        return end if self.to_seq is None else min(end, self.to_seq + 1)

    def due(self, calibration_id: str | None) -> bool:
        """Whether a served score made under ``calibration_id`` ends the wait: made under a
        calibration this revision does not supersede (the recalibration, or a later one)."""
        return calibration_id is not None and calibration_id not in self.superseded

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "calibration": self.calibration,
            "reference": self.reference,
            "thresholds": dict(self.thresholds),
            "vote_k": self.vote_k,
            "target_fpr": self.target_fpr,
            "from_seq": self.from_seq,
            "reference_to": self.reference_to,
            "trimmed": list(self.trimmed),
            "superseded": list(self.superseded),
            "causes": list(self.causes),
            "reference_from": self.reference_from,
            "to_seq": self.to_seq,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingRevision:
        return cls(**dict(data))


Judge = tuple[OODEnsemble, dict[str, float]]
"""An ensemble and the thresholds it decides at."""


def cross_fitted(reference: ReferenceSet, target_fpr: float, vote_k: int) -> list[Judge] | None:
    """Per fold ``k``, an ensemble fitted on the reference rows outside it, at the thresholds
    whose in-sample flag rate is nearest ``target_fpr``; None when a fold's complement is too
    small to fit (the caller then judges every image by the recalibration itself)."""
    rows = np.arange(len(reference))
    judges: list[Judge] = []
    for fold in range(FOLDS):
        rest = rows[rows % FOLDS != fold]
        try:
            ensemble = OODEnsemble.fit(
                ReferenceSet(reference.features[rest], reference.energy[rest], reference.backbone)
            )
        except ReferenceSetError:
            return None
        judges.append((ensemble, ensemble.thresholds_for_fpr(target_fpr, vote_k)))
    return judges


def revise(
    judge: Judge,
    vote_k: int,
    served: Sequence[Served],
    rows: Mapping[int, int] | None = None,
    folds: Sequence[Judge] | None = None,
) -> list[Revised]:
    """Each of ``served`` decided again (k-of-3 vote): by ``folds[row % FOLDS]`` when its seq
    is reference row ``row`` of ``rows`` (and ``folds`` exist), else by ``judge``. In order."""
    if not served:
        return []
    groups: dict[int, list[int]] = {}
    for j, s in enumerate(served):
        row = (rows or {}).get(s.seq)
        groups.setdefault(-1 if row is None or folds is None else row % FOLDS, []).append(j)
    revised: list[Revised | None] = [None] * len(served)
    for group, members in groups.items():
        ensemble, thresholds = judge if group < 0 else folds[group]  # type: ignore[index]
        judged = ensemble.judge(
            np.stack([served[j].features for j in members]),
            np.array([served[j].energy for j in members], dtype=np.float64),
            thresholds,
            vote_k,
        )
        for i, j in enumerate(members):
            s = served[j]
            revised[j] = Revised(
                seq=s.seq,
                image_id=s.image_id,
                detectors=detector_scores(judged, thresholds, i),
                ensemble_score=float(judged.ensemble_score[i]),
                votes_for=int(judged.votes_for[i]),
                votes_needed=int(vote_k),
                is_candidate=bool(judged.is_candidate[i]),
                was_candidate=s.was_candidate,
                revised_calibration_id=s.calibration_id,
            )
    return [r for r in revised if r is not None]


def revision_evidence(revised: Sequence[Revised]) -> dict[str, float]:
    """What a ``decisions.revised`` event reports: images, flags before and after, withdrawn
    (flagged live, not now) and added (not flagged live, flagged now).

    >>> from processors.policies.revision import Revised
    >>> r = [Revised(i, str(i), [], 0.5, 0, 2, now, was, None)
    ...      for i, (was, now) in enumerate([(True, False), (True, True), (False, True)])]
    >>> revision_evidence(r)["withdrawn"], revision_evidence(r)["added"]
    (1.0, 1.0)
    """
    n = len(revised)
    before = sum(r.was_candidate for r in revised)
    after = sum(r.is_candidate for r in revised)
    withdrawn = sum(r.was_candidate and not r.is_candidate for r in revised)
    return {
        "images": float(n),
        "flags_before": float(before),
        "flags_after": float(after),
        "withdrawn": float(withdrawn),
        "added": float(after - before + withdrawn),
        "flag_rate_before": before / n if n else 0.0,
        "flag_rate_after": after / n if n else 0.0,
    }


def revision_artifact(revised: Sequence[Revised]) -> bytes:
    """The revised decisions as a content-addressed artifact (JSON, sorted keys): image id,
    live and revised verdicts, revised ensemble score, in ring order."""
    rows = [
        {
            "image_id": r.image_id,
            "was_candidate": r.was_candidate,
            "is_candidate": r.is_candidate,
            "ensemble_score": round(r.ensemble_score, 6),
        }
        for r in revised
    ]
    return json.dumps({"decisions": rows}, sort_keys=True, separators=(",", ":")).encode()
