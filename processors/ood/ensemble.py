"""Out-of-distribution scoring: three detectors, a shared calibration, and a k-of-3 vote.

Pure numpy; no torch, no I/O. The detectors (``mahalanobis``, ``knn``, ``energy``, every raw
score "higher = more anomalous") are in :mod:`processors.ood.detectors`; this module re-exports
them and :func:`energy_score`, so ``from processors.ood.ensemble import ...`` names the lot.

Raw scores live on different scales, so each is calibrated against the *calibration part* of the
reference (images not used to fit): ``calibrated = fraction of calibration raws strictly below``,
in ``[0, 1]``. On normal data a calibrated score is close to uniform, whichever the detector, so
one threshold fits all three and a k-of-3 vote has a controllable false-positive rate.

Determinism: no randomness anywhere. The split is a fixed interleave of the reference order, the
maths is float64 (faiss float32), and thresholds are midpoints of the calibration grid, so the
same :class:`~processors.ood.reference.ReferenceSet` gives bit-identical thresholds on every
refit, and last-bit differences in raw scores cannot move a calibration point across a threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import ConfigError
from processors.ood.detectors import (
    EnergyDetector,
    FloatArray,
    KnnDetector,
    MahalanobisDetector,
    ScoreInputError,
    check_features,
    check_vector,
    energy_score,
)
from processors.ood.reference import ReferenceSet, ReferenceSetError

__all__ = [
    "MIN_PART_SIZE",
    "MIN_REFERENCE_SIZE",
    "EnergyDetector",
    "Judgement",
    "KnnDetector",
    "MahalanobisDetector",
    "OODEnsemble",
    "ScoreInputError",
    "energy_score",
    "split_reference",
]

MIN_PART_SIZE = 10
MIN_REFERENCE_SIZE = 2 * MIN_PART_SIZE


@dataclass(frozen=True)
class Judgement:
    """What :meth:`OODEnsemble.judge` decides for ``n`` rows: per detector the raw and
    calibrated scores and the votes; per row the votes, the verdict and the mean score."""

    raw: dict[str, FloatArray]
    calibrated: dict[str, FloatArray]
    votes: dict[str, NDArray[np.bool_]]
    votes_for: NDArray[np.int64]
    is_candidate: NDArray[np.bool_]
    ensemble_score: FloatArray


def split_reference(n: int, fit_fraction: float) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Deterministic (fit indices, calibration indices) of a reference of ``n`` rows.

    Row ``i`` goes to the fit part when ``floor((i + 1) f) > floor(i f)``: the fit part gets
    ``floor(n f)`` rows spread evenly over the reference order (``f = 0.5``: odd rows fit, even
    rows calibrate), so both parts cover the whole time window a reference was collected over.

    Example:
        >>> [part.tolist() for part in split_reference(6, 0.5)]
        [[1, 3, 5], [0, 2, 4]]
    """
    if not 0.0 < fit_fraction < 1.0:
        raise ConfigError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    index = np.arange(n)
    to_fit = np.floor((index + 1) * fit_fraction) > np.floor(index * fit_fraction)
    return np.flatnonzero(to_fit), np.flatnonzero(~to_fit)


class OODEnsemble:
    """Mahalanobis + energy + kNN, calibrated on held-out references, decided by a k-of-3 vote.

    Build with :meth:`fit`. For queries: :meth:`raw_scores` -> :meth:`calibrate` ->
    :meth:`decide` with thresholds from :meth:`thresholds_for_fpr`.

    Defaults: ``knn_k=10``, ``fit_fraction=0.5`` (half the reference fits Mahalanobis and the
    kNN bank, the other half calibrates). A reference needs at least ``MIN_REFERENCE_SIZE`` (20)
    rows and each part at least ``MIN_PART_SIZE`` (10) and ``knn_k`` rows; fewer raises
    :class:`ReferenceSetError` naming how many are needed. The same reference always gives the
    same ensemble and bit-identical thresholds.

    Example:
        >>> rng = np.random.default_rng(7)
        >>> features = rng.normal(size=(400, 16)).astype("float32") + 3.0
        >>> ref = ReferenceSet(features, energy=rng.normal(size=400))
        >>> ens = OODEnsemble.fit(ref)
        >>> th = ens.thresholds_for_fpr(0.05, vote_k=2)
        >>> th
        {'mahalanobis': 0.9225, 'energy': 0.9225, 'knn': 0.9225}
        >>> th == OODEnsemble.fit(ref).thresholds_for_fpr(0.05, vote_k=2)
        True
        >>> queries = rng.normal(size=(2, 16)) + 3.0
        >>> queries[1, :8] += 6.0  # the second image is far from the reference
        >>> cal = ens.calibrate(ens.raw_scores(queries, energy=np.array([0.0, 3.5])))
        >>> {name: scores.round(3).tolist() for name, scores in cal.items()}
        {'mahalanobis': [0.055, 1.0], 'energy': [0.56, 0.995], 'knn': [0.1, 0.995]}
        >>> votes, votes_for, is_candidate = ens.decide(cal, th, vote_k=2)
        >>> votes_for.tolist(), is_candidate.tolist()
        ([0, 3], [False, True])
    """

    DETECTORS: tuple[str, ...] = ("mahalanobis", "energy", "knn")

    def __init__(
        self,
        mahalanobis: MahalanobisDetector,
        knn: KnnDetector,
        energy: EnergyDetector,
        calibration_raw: Mapping[str, FloatArray],
        dim: int,
    ) -> None:
        """Use :meth:`fit`; this assembles already fitted parts."""
        self.mahalanobis = mahalanobis
        self.knn = knn
        self.energy = energy
        self.dim = dim
        self._sorted: dict[str, FloatArray] = {
            name: np.sort(np.asarray(calibration_raw[name], dtype=np.float64))
            for name in self.DETECTORS
        }
        # In-sample calibrated scores of the calibration rows, (m, 3), for threshold search.
        calibrated = self.calibrate(dict(calibration_raw))
        self._calibration_matrix = np.column_stack([calibrated[n] for n in self.DETECTORS])

    def __repr__(self) -> str:
        return (
            f"OODEnsemble(dim={self.dim}, calibration_size={self.calibration_size}, "
            f"knn_k={self.knn.k}, shrinkage={self.mahalanobis.shrinkage_:.4f})"
        )

    @property
    def calibration_size(self) -> int:
        """Rows in the calibration part (the resolution of calibrated scores is 1 / this)."""
        return int(self._sorted[self.DETECTORS[0]].shape[0])

    @classmethod
    def fit(
        cls, reference: ReferenceSet, *, knn_k: int = 10, fit_fraction: float = 0.5
    ) -> OODEnsemble:
        """Split ``reference`` (:func:`split_reference`), fit one part, calibrate on the other."""
        if not isinstance(reference, ReferenceSet):
            raise ReferenceSetError(f"expected a ReferenceSet, got {type(reference).__name__}")
        knn = KnnDetector(k=knn_k)
        n = len(reference)
        fit_rows, cal_rows = split_reference(n, fit_fraction)
        smallest = min(len(fit_rows), len(cal_rows))
        needed_part = max(MIN_PART_SIZE, knn_k)
        if n < MIN_REFERENCE_SIZE or smallest < needed_part:
            need = max(n + 1, MIN_REFERENCE_SIZE)
            while min(len(part) for part in split_reference(need, fit_fraction)) < needed_part:
                need += 1
            raise ReferenceSetError(
                f"reference has {n} images; with fit_fraction={fit_fraction} and knn_k={knn_k} "
                f"at least {need} are needed ({needed_part} per part, {MIN_REFERENCE_SIZE} total)"
            )
        fit_features = reference.features[fit_rows]
        cal_features = reference.features[cal_rows]
        mahalanobis = MahalanobisDetector().fit(fit_features)
        knn.fit(fit_features)
        energy = EnergyDetector().fit(reference.energy)
        calibration_raw = {
            "mahalanobis": mahalanobis.raw(cal_features),
            "energy": energy.raw(reference.energy[cal_rows]),
            "knn": knn.raw(cal_features),
        }
        return cls(mahalanobis, knn, energy, calibration_raw, reference.dim)

    def raw_scores(self, features: NDArray[Any], energy: NDArray[Any]) -> dict[str, FloatArray]:
        """Raw detector scores (float64, higher = more anomalous) for ``(n, d)`` features.

        Raises :class:`ScoreInputError` for a wrong shape, a dimension other than the
        reference's, or non-finite values.
        """
        x = check_features(features, self.dim, "features")
        e = check_vector(energy, x.shape[0], "energy")
        return {
            "mahalanobis": self.mahalanobis.raw(x),
            "energy": self.energy.raw(e),
            "knn": self.knn.raw(x),
        }

    def calibrate(self, raw: Mapping[str, NDArray[Any]]) -> dict[str, FloatArray]:
        """Each raw score to the fraction of calibration raws strictly below it, in ``[0, 1]``."""
        out: dict[str, FloatArray] = {}
        n: int | None = None
        for name in self.DETECTORS:
            if name not in raw:
                raise ScoreInputError(f"raw scores lack detector {name!r}; need {self.DETECTORS}")
            values = check_vector(raw[name], n, f"raw[{name!r}]")
            n = values.shape[0]
            reference = self._sorted[name]
            out[name] = np.searchsorted(reference, values, side="left") / reference.shape[0]
        return out

    def thresholds_for_fpr(self, target_fpr: float, vote_k: int) -> dict[str, float]:
        """One common calibrated threshold per detector for a k-of-3 vote at ``target_fpr``.

        A detector votes when its calibrated score is strictly above the threshold. A row gets at
        least ``vote_k`` votes exactly when its ``vote_k``-th largest calibrated score is above
        the threshold, so on the calibration part the candidate rate is a step function of the
        threshold. Candidates are the midpoints ``(j + 0.5) / m`` of the calibration grid (no
        calibration score sits on a threshold); the one whose rate is closest to
        ``target_fpr`` wins, ties going to the higher (fewer false positives) threshold. The
        rate is in-sample: on new normal data expect it within about ``sqrt(p (1 - p) / m)``.
        """
        if not 0.0 < target_fpr < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr!r}")
        self._check_vote_k(vote_k)
        m = self.calibration_size
        kth_largest = -np.sort(-self._calibration_matrix, axis=1)[:, vote_k - 1]
        candidates = (np.arange(-1, m + 1) + 0.5) / m
        # rate[j] = fraction of rows whose k-th largest score is above candidates[j]
        ranked = np.sort(kth_largest)
        above = m - np.searchsorted(ranked, candidates, side="right")
        error = np.abs(above / m - target_fpr)
        best = int(np.flatnonzero(error == error.min())[-1])
        threshold = float(candidates[best])
        return dict.fromkeys(self.DETECTORS, threshold)

    def _check_vote_k(self, vote_k: int) -> None:
        if not isinstance(vote_k, (int, np.integer)) or not 1 <= vote_k <= len(self.DETECTORS):
            raise ConfigError(f"vote_k must be in 1..{len(self.DETECTORS)}, got {vote_k!r}")

    def decide(
        self,
        calibrated: Mapping[str, NDArray[Any]],
        thresholds: Mapping[str, float],
        vote_k: int,
    ) -> tuple[dict[str, NDArray[np.bool_]], NDArray[np.int64], NDArray[np.bool_]]:
        """Votes per detector (calibrated > threshold), votes per row, and ``votes >= vote_k``."""
        self._check_vote_k(vote_k)
        votes: dict[str, NDArray[np.bool_]] = {}
        n: int | None = None
        for name in self.DETECTORS:
            if name not in calibrated or name not in thresholds:
                raise ScoreInputError(f"calibrated scores and thresholds need {self.DETECTORS}")
            values = check_vector(calibrated[name], n, f"calibrated[{name!r}]")
            n = values.shape[0]
            votes[name] = values > float(thresholds[name])
        votes_for = np.asarray(
            np.sum([votes[name] for name in self.DETECTORS], axis=0, dtype=np.int64)
        )
        return votes, votes_for, np.asarray(votes_for >= vote_k)

    def judge(
        self,
        features: NDArray[Any],
        energy: NDArray[Any],
        thresholds: Mapping[str, float],
        vote_k: int,
    ) -> Judgement:
        """Raw scores, calibration, votes and the mean score of ``(n, d)`` rows in one call:
        the whole decision a scorer (or a revision) makes from features and energies."""
        raw = self.raw_scores(features, energy)
        calibrated = self.calibrate(raw)
        votes, votes_for, candidate = self.decide(calibrated, thresholds, vote_k)
        return Judgement(
            raw, calibrated, votes, votes_for, candidate, self.ensemble_score(calibrated)
        )

    def ensemble_score(self, calibrated: Mapping[str, NDArray[Any]]) -> FloatArray:
        """Mean calibrated score over the three detectors, in ``[0, 1]``."""
        columns = []
        n: int | None = None
        for name in self.DETECTORS:
            if name not in calibrated:
                raise ScoreInputError(f"calibrated scores lack detector {name!r}")
            columns.append(check_vector(calibrated[name], n, f"calibrated[{name!r}]"))
            n = columns[-1].shape[0]
        return np.mean(columns, axis=0)
