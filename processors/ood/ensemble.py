"""Out-of-distribution scoring: three detectors, a shared calibration, and a k-of-3 vote.

Pure numpy / scikit-learn / faiss; no torch, no I/O. Every raw score is "higher = more
anomalous":

- ``mahalanobis``: squared Mahalanobis distance to the fit part's mean under a Ledoit-Wolf
  shrunk covariance (references are small against d = 1280, so the sample covariance would be
  singular);
- ``knn``: Euclidean distance of the L2-normalised feature to its k-th nearest neighbour in the
  fit part (exact faiss ``IndexFlatL2``); the k-th distance, not the mean of k, so one close
  duplicate in the reference cannot mask an outlier;
- ``energy``: ``-T * logsumexp(logits / T)``, computed by the scorer from the backbone logits and
  carried in the score record; reference-free.

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
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from processors.core.exceptions import ConfigError, SkyloopError
from processors.ood.reference import ReferenceSet, ReferenceSetError

__all__ = [
    "MIN_PART_SIZE",
    "MIN_REFERENCE_SIZE",
    "EnergyDetector",
    "KnnDetector",
    "MahalanobisDetector",
    "OODEnsemble",
    "ScoreInputError",
    "energy_score",
    "split_reference",
]

MIN_PART_SIZE = 10
MIN_REFERENCE_SIZE = 2 * MIN_PART_SIZE

FloatArray = NDArray[np.float64]


class ScoreInputError(SkyloopError):
    """Features, energies or calibrated scores given to a detector have a bad shape or NaNs."""


def _check_features(features: NDArray[Any], dim: int | None, what: str) -> NDArray[np.float64]:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ScoreInputError(f"{what} must be a 2-D (n, d) array, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ScoreInputError(f"{what} have d={array.shape[1]}; the detector was fit on d={dim}")
    if not np.isfinite(array).all():
        rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise ScoreInputError(f"{what} have non-finite values in rows {rows[:10].tolist()}")
    return array.astype(np.float64, copy=False)


def _check_vector(values: NDArray[Any], n: int | None, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = f"({n},)" if n is not None else "1-D"
        raise ScoreInputError(f"{what} must be {expected}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ScoreInputError(f"{what} has {int((~np.isfinite(array)).sum())} non-finite values")
    return array


def energy_score(logits: NDArray[Any], temperature: float = 1.0) -> FloatArray:
    """Energy OOD score ``-T * logsumexp(logits / T)`` per row, float64; higher = more anomalous.

    Raises :class:`ScoreInputError` for non-2-D or non-finite logits, :class:`ConfigError` for a
    non-positive temperature.

    Example:
        >>> energy_score(np.array([[10.0, 0.0], [1.0, 1.0]])).round(4).tolist()
        [-10.0, -1.6931]
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    array = _check_features(logits, None, "logits")
    return np.asarray(-temperature * logsumexp(array / temperature, axis=1), dtype=np.float64)


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


@dataclass
class MahalanobisDetector:
    """Squared Mahalanobis distance under a Ledoit-Wolf covariance of the fit features.

    With ``n`` fit rows of dimension ``d`` the shrunk covariance is ``(1 - s) S + c I`` where
    ``S = X^T X / n`` (``X`` centred) has rank ``r < n`` and ``c = s mu`` (plus a 1e-9 relative
    jitter, so constant columns cannot make it singular). ``fit`` keeps the mean, the ``r``
    eigenvectors ``V`` of ``S`` (from the ``n x n`` Gram matrix: ``O(n^2 d)``, not ``O(d^3)``)
    and the inverse eigenvalues; then ``raw(x) = sum_i (v_i . z)^2 / ((1 - s) l_i + c)
    + ||z - V V^T z||^2 / c`` with ``z = x - mean``: the exact quadratic form, in ``O(d r)`` per
    row. The shrinkage is Ledoit-Wolf's (sklearn's formula), computed from the same Gram matrix.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> det = MahalanobisDetector().fit(rng.normal(size=(200, 4)))
        >>> near, far = det.raw(np.array([[0.0, 0, 0, 0], [8.0, 8, 8, 8]]))
        >>> bool(near < 1.0 < 100.0 < far)
        True
    """

    mean_: FloatArray | None = field(default=None, repr=False)
    basis_: FloatArray | None = field(default=None, repr=False)
    inverse_: FloatArray | None = field(default=None, repr=False)
    floor_: float | None = None
    shrinkage_: float | None = None

    def fit(self, features: NDArray[Any]) -> MahalanobisDetector:
        x = _check_features(features, None, "fit features")
        n, d = x.shape
        if n < 2:
            raise ReferenceSetError(f"Mahalanobis needs at least 2 fit rows, got {n}")
        mean = x.mean(axis=0)
        centred = x - mean
        gram = centred @ centred.T  # n x n: the spectrum of X^T X without forming it
        squared_norms = np.einsum("ij,ij->i", centred, centred)
        trace = float(squared_norms.sum()) / n  # trace of S
        mu = trace / d
        # Ledoit-Wolf shrinkage (as sklearn.covariance.ledoit_wolf_shrinkage, assume_centered
        # on the centred data): sum(X2^T X2) = sum_i ||x_i||^4, sum((X^T X)^2) = ||gram||_F^2.
        beta_sum = float((squared_norms**2).sum())
        delta_sum = float((gram**2).sum()) / n**2
        beta = (beta_sum / n - delta_sum) / (d * n)
        delta = (delta_sum - 2.0 * mu * trace + d * mu**2) / d
        beta = min(beta, delta)
        shrinkage = 0.0 if beta == 0 else float(beta / delta)
        eigenvalues, vectors = np.linalg.eigh(gram)
        keep = eigenvalues > eigenvalues.max(initial=0.0) * 1e-12
        sigma = np.sqrt(eigenvalues[keep])
        basis = (centred.T @ vectors[:, keep]) / sigma  # d x r, orthonormal columns
        floor = shrinkage * mu + 1e-9 * max(mu, 1e-12)
        self.mean_ = mean
        self.basis_ = np.ascontiguousarray(basis)
        self.inverse_ = 1.0 / ((1.0 - shrinkage) * eigenvalues[keep] / n + floor)
        self.floor_ = floor
        self.shrinkage_ = shrinkage
        return self

    def raw(self, features: NDArray[Any]) -> FloatArray:
        if (
            self.mean_ is None
            or self.basis_ is None
            or self.inverse_ is None
            or self.floor_ is None
        ):
            raise ScoreInputError("MahalanobisDetector.raw called before fit")
        x = _check_features(features, self.mean_.shape[0], "features")
        z = x - self.mean_
        along = z @ self.basis_
        rest = z - along @ self.basis_.T
        inside = np.einsum("ij,ij,j->i", along, along, self.inverse_)
        return np.asarray(inside + np.einsum("ij,ij->i", rest, rest) / self.floor_)


@dataclass
class KnnDetector:
    """Distance to the k-th nearest fit feature after L2 normalisation (exact faiss search).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> bank = rng.normal(size=(50, 8)) + 5.0
        >>> det = KnnDetector(k=3).fit(bank)
        >>> inside, outside = det.raw(np.vstack([bank[:1] + 0.01, -bank[:1]]))
        >>> bool(inside < 0.5 < outside)
        True
    """

    k: int = 10
    index_: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"knn_k must be an int >= 1, got {self.k!r}")

    @staticmethod
    def _normalise(x: NDArray[np.float64]) -> NDArray[np.float32]:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)

    def fit(self, features: NDArray[Any]) -> KnnDetector:
        x = _check_features(features, None, "fit features")
        if x.shape[0] < self.k:
            raise ReferenceSetError(
                f"kNN with k={self.k} needs at least {self.k} fit rows, got {x.shape[0]}"
            )
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(self._normalise(x))
        self.index_ = index
        return self

    def raw(self, features: NDArray[Any]) -> FloatArray:
        if self.index_ is None:
            raise ScoreInputError("KnnDetector.raw called before fit")
        x = _check_features(features, int(self.index_.d), "features")
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float64)
        squared, _ = self.index_.search(self._normalise(x), self.k)
        return np.sqrt(np.maximum(squared[:, -1].astype(np.float64), 0.0))


@dataclass
class EnergyDetector:
    """Reference-free: the raw score is the energy already computed from the logits.

    Example:
        >>> EnergyDetector().raw(np.array([-3.0, 1.5])).tolist()
        [-3.0, 1.5]
    """

    def fit(self, energy: NDArray[Any]) -> EnergyDetector:
        _check_vector(energy, None, "energy")
        return self

    def raw(self, energy: NDArray[Any]) -> FloatArray:
        return _check_vector(energy, None, "energy")


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
        x = _check_features(features, self.dim, "features")
        e = _check_vector(energy, x.shape[0], "energy")
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
            values = _check_vector(raw[name], n, f"raw[{name!r}]")
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
            values = _check_vector(calibrated[name], n, f"calibrated[{name!r}]")
            n = values.shape[0]
            votes[name] = values > float(thresholds[name])
        votes_for = np.asarray(
            np.sum([votes[name] for name in self.DETECTORS], axis=0, dtype=np.int64)
        )
        return votes, votes_for, np.asarray(votes_for >= vote_k)

    def ensemble_score(self, calibrated: Mapping[str, NDArray[Any]]) -> FloatArray:
        """Mean calibrated score over the three detectors, in ``[0, 1]``."""
        columns = []
        n: int | None = None
        for name in self.DETECTORS:
            if name not in calibrated:
                raise ScoreInputError(f"calibrated scores lack detector {name!r}")
            columns.append(_check_vector(calibrated[name], n, f"calibrated[{name!r}]"))
            n = columns[-1].shape[0]
        return np.mean(columns, axis=0)
