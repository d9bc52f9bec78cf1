"""Per-image decisions of one model: calibrated detector scores, votes, candidate or not.

Pure apart from reading calibration references from the artifact store (content-addressed,
so a refit from the same id is bit-identical on every scorer). For each source in the rows:

- with a calibration for ``(model_version, source)``: the OOD ensemble refit from the
  calibration's reference artifact gives raw and calibrated scores for the three detectors;
  thresholds are the calibration's, replaced by the source's ``threshold.set`` overrides when
  ``source_overrides`` (the production model only: overrides are set against production's
  calibration); a row is a candidate when at least ``vote_k`` detectors vote;
- without one: ``calibrated=False``, never a candidate; the record carries only the raw energy
  (with the embedding) so the controller can use it in the source's reference window.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.artifacts import ArtifactStore
from processors.core.control import Calibration, ControlState
from processors.core.records import DetectorScore
from processors.ood.ensemble import OODEnsemble
from processors.ood.reference import load_reference
from processors.ood.verdicts import detector_scores

__all__ = ["EnsembleCache", "MathThreads", "Verdict", "decide"]


@dataclass(frozen=True)
class Verdict:
    """The decision fields of one ScoreRecord."""

    detectors: list[DetectorScore]
    ensemble_score: float
    votes_for: int
    votes_needed: int
    is_candidate: bool
    calibrated: bool
    calibration_id: str | None = None


class EnsembleCache:
    """OOD ensembles refit from calibration artifacts, one per artifact id, kept for reuse.

    Bounded: at most ``capacity`` ensembles (default 8; one of a 1,024-image reference holds
    about 8 MB at d = 1280), least recently used first out. A pipeline that recalibrates for
    days uses only the calibrations in force, one or two per source and model.
    """

    def __init__(self, store: ArtifactStore, capacity: int = 8) -> None:
        self.store = store
        self.capacity = capacity
        self._ensembles: OrderedDict[str, OODEnsemble] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ensembles)

    def get(self, calibration: Calibration) -> OODEnsemble:
        """Raises ``ArtifactError`` / ``ReferenceSetError`` when the reference is unusable."""
        ensemble = self._ensembles.get(calibration.artifact_id)
        if ensemble is None:
            reference = load_reference(self.store, calibration.artifact_id)
            ensemble = OODEnsemble.fit(reference)
            self._ensembles[calibration.artifact_id] = ensemble
            while len(self._ensembles) > self.capacity:
                self._ensembles.popitem(last=False)
        else:
            self._ensembles.move_to_end(calibration.artifact_id)
        return ensemble


class MathThreads:
    """Bounds the BLAS threads (numpy's, scipy's and faiss's OpenBLAS) while the OOD maths runs.

    The OOD maths runs on small matrices between two backbone passes; with several threads
    the BLAS pools keep spinning after each call and take cores from the backbone (measured on
    a 2-core machine: raw scores of a batch of 32 took 7 ms with 2 threads, 3 ms with 1).
    faiss's own OpenMP setting is left alone: ``faiss.omp_set_num_threads`` sets the calling
    thread's OpenMP thread count, which torch shares, so it would slow the backbone; with 20 or
    more queries faiss's flat search runs on BLAS anyway.
    """

    def __init__(self, threads: int) -> None:
        from threadpoolctl import ThreadpoolController

        self.threads = threads
        self._controller = ThreadpoolController()

    @contextlib.contextmanager
    def limited(self) -> Iterator[None]:
        with self._controller.limit(limits=self.threads, user_api="blas"):
            yield


def _uncalibrated(energy: float, vote_k: int) -> Verdict:
    return Verdict(
        detectors=[
            DetectorScore(detector="energy", raw=energy, score=0.0, threshold=None, vote=False)
        ],
        ensemble_score=0.0,
        votes_for=0,
        votes_needed=vote_k,
        is_candidate=False,
        calibrated=False,
    )


def decide(
    features: NDArray[np.float32],
    energy: NDArray[np.float64],
    sources: Sequence[str],
    state: ControlState,
    model_version: str,
    ensembles: EnsembleCache,
    *,
    default_vote_k: int,
    source_overrides: bool,
) -> list[Verdict]:
    """One :class:`Verdict` per row of ``features`` (``(n, d)``) / ``energy`` (``(n,)``).

    Depends only on the inputs and ``state`` (plus the immutable artifacts it names).
    """
    n = len(sources)
    verdicts: list[Verdict | None] = [None] * n
    by_source: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_source.setdefault(source, []).append(i)
    for source, rows in by_source.items():
        cal = state.calibration_for(model_version, source)
        if cal is None:
            for i in rows:
                verdicts[i] = _uncalibrated(float(energy[i]), default_vote_k)
            continue
        ensemble = ensembles.get(cal)
        idx = np.asarray(rows)
        thresholds = {
            name: (
                state.threshold_for(model_version, source, name, cal.thresholds[name])
                if source_overrides
                else cal.thresholds[name]
            )
            for name in ensemble.DETECTORS
        }
        judged = ensemble.judge(features[idx], energy[idx], thresholds, cal.vote_k)
        for j, i in enumerate(rows):
            verdicts[i] = Verdict(
                detectors=detector_scores(judged, thresholds, j),
                ensemble_score=float(judged.ensemble_score[j]),
                votes_for=int(judged.votes_for[j]),
                votes_needed=int(cal.vote_k),
                is_candidate=bool(judged.is_candidate[j]),
                calibrated=True,
                calibration_id=cal.event_id,
            )
    return [v for v in verdicts if v is not None]
