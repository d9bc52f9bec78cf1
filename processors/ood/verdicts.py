"""The per-detector part of a scored record, from an ensemble's :class:`Judgement`.

Shared by the scorer's decisions and the controller's revisions, so a revised record lists its
detectors exactly as a live one does (in :attr:`OODEnsemble.DETECTORS` order).
"""

from __future__ import annotations

from collections.abc import Mapping

from processors.core.records import DetectorScore
from processors.ood.ensemble import Judgement, OODEnsemble

__all__ = ["detector_scores"]


def detector_scores(
    judged: Judgement, thresholds: Mapping[str, float], row: int
) -> list[DetectorScore]:
    """Row ``row``'s detector scores: raw, calibrated, the threshold used and the vote."""
    return [
        DetectorScore(
            detector=name,
            raw=float(judged.raw[name][row]),
            score=float(judged.calibrated[name][row]),
            threshold=float(thresholds[name]),
            vote=bool(judged.votes[name][row]),
        )
        for name in OODEnsemble.DETECTORS
    ]
