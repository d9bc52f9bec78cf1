"""The three OOD detectors of the ensemble, each fit on features and giving raw scores.

Pure numpy / scipy / faiss; no torch, no I/O, no randomness. Every raw score is "higher = more
anomalous":

- ``mahalanobis``: squared Mahalanobis distance to the fit part's mean under a Ledoit-Wolf
  shrunk covariance (references are small against d = 1280, so the sample covariance would be
  singular);
- ``knn``: Euclidean distance of the L2-normalised feature to its k-th nearest neighbour in the
  fit part (exact faiss ``IndexFlatL2``); the k-th distance, not the mean of k, so one close
  duplicate in the reference cannot mask an outlier;
- ``energy``: ``-T * logsumexp(logits / T)``, computed by the scorer from the backbone logits and
  carried in the score record; reference-free.

Raw scores live on different scales; :mod:`processors.ood.ensemble` calibrates and combines
them. Inputs are checked here (:class:`ScoreInputError` for a bad shape or a non-finite value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from processors.core.exceptions import ConfigError, SkyloopError
from processors.ood.reference import ReferenceSetError

__all__ = [
    "EnergyDetector",
    "FloatArray",
    "KnnDetector",
    "MahalanobisDetector",
    "ScoreInputError",
    "check_features",
    "check_vector",
    "energy_score",
]

FloatArray = NDArray[np.float64]


class ScoreInputError(SkyloopError):
    """Features, energies or calibrated scores given to a detector have a bad shape or NaNs."""


def check_features(features: NDArray[Any], dim: int | None, what: str) -> NDArray[np.float64]:
    array = np.asarray(features)
    if array.ndim != 2:
        raise ScoreInputError(f"{what} must be a 2-D (n, d) array, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ScoreInputError(f"{what} have d={array.shape[1]}; the detector was fit on d={dim}")
    if not np.isfinite(array).all():
        rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise ScoreInputError(f"{what} have non-finite values in rows {rows[:10].tolist()}")
    return array.astype(np.float64, copy=False)


def check_vector(values: NDArray[Any], n: int | None, what: str) -> NDArray[np.float64]:
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
    array = check_features(logits, None, "logits")
    return np.asarray(-temperature * logsumexp(array / temperature, axis=1), dtype=np.float64)


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
        x = check_features(features, None, "fit features")
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
        x = check_features(features, self.mean_.shape[0], "features")
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
        x = check_features(features, None, "fit features")
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
        x = check_features(features, int(self.index_.d), "features")
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
        check_vector(energy, None, "energy")
        return self

    def raw(self, energy: NDArray[Any]) -> FloatArray:
        return check_vector(energy, None, "energy")
