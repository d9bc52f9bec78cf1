"""Drift profile: what a calibration's held-out images looked like, for later comparison.

A :class:`DriftProfile` is stored beside a calibration's reference set (its own content-addressed
artifact, named in the ``calibration.updated`` event as ``params.extra["drift_profile"]``). It
holds, for the reference images that the ensemble did *not* fit on (the held-out part, trimmed
outliers included, since a live window contains outliers too):

- their calibrated detector scores (``m x 3``), from which the ensemble score of each image and
  the flag rate at *any* thresholds follow (so a decayed threshold has a known expected rate);
- a low-dimensional summary of their features: the projection on the top principal
  components of the fit part's features (mean and components stored too), so a window's
  features can be projected the same way and compared component by component.

Canonical bytes (format version 1, little-endian): magic ``SKYPRF\\x00\\x01``, ``u32 m, u32 d,
u32 k, u32 vote_k``, then float64 arrays: calibrated ``(m, 3)``, mean ``(d,)``, components
``(k, d)``, projections ``(m, k)``. Equal profiles give equal bytes, hence equal artifact ids.

Example:
    >>> rng = np.random.default_rng(0)
    >>> fit, held = rng.normal(size=(60, 16)), rng.normal(size=(50, 16))
    >>> profile = build_profile(fit, held, rng.uniform(size=(50, 3)), vote_k=2, components=4)
    >>> profile.projections.shape, profile.project(held[:3]).shape
    ((50, 4), (3, 4))
    >>> DriftProfile.from_bytes(profile.to_bytes()).to_bytes() == profile.to_bytes()
    True
    >>> 0.0 <= profile.flag_rate({"mahalanobis": 0.9, "energy": 0.9, "knn": 0.9}) <= 1.0
    True
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import eigh

from processors.core.artifacts import ArtifactStore
from processors.core.exceptions import SkyloopError
from processors.ood.ensemble import OODEnsemble

__all__ = ["DriftProfile", "DriftProfileError", "build_profile", "load_profile"]

_MAGIC = b"SKYPRF\x00\x01"
_HEADER = struct.Struct("<IIII")
DETECTORS = OODEnsemble.DETECTORS


class DriftProfileError(SkyloopError):
    """Bytes that are not a drift profile, or arrays of inconsistent shapes."""


def _f64(array: NDArray[Any]) -> NDArray[np.float64]:
    out = np.array(array, dtype="<f8", order="C", copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class DriftProfile:
    """See the module docstring. ``calibrated`` columns follow :attr:`OODEnsemble.DETECTORS`."""

    calibrated: NDArray[np.float64]
    mean: NDArray[np.float64]
    components: NDArray[np.float64]
    projections: NDArray[np.float64]
    vote_k: int

    def __post_init__(self) -> None:
        for name in ("calibrated", "mean", "components", "projections"):
            object.__setattr__(self, name, _f64(getattr(self, name)))
        m, k, d = self.calibrated.shape[0], self.components.shape[0], self.mean.shape[0]
        if self.calibrated.shape != (m, len(DETECTORS)) or m < 1:
            raise DriftProfileError(f"calibrated must be (m >= 1, 3), got {self.calibrated.shape}")
        if self.components.shape != (k, d) or self.projections.shape != (m, k):
            raise DriftProfileError(
                f"shapes disagree: mean {self.mean.shape}, components {self.components.shape}, "
                f"projections {self.projections.shape} for m={m}"
            )
        if not 1 <= self.vote_k <= len(DETECTORS):
            raise DriftProfileError(f"vote_k must be in 1..3, got {self.vote_k}")

    @property
    def size(self) -> int:
        """Held-out images the profile describes."""
        return int(self.calibrated.shape[0])

    @property
    def scores(self) -> NDArray[np.float64]:
        """Ensemble score (mean calibrated score) of each held-out image, as the scorer reports."""
        return np.asarray(self.calibrated.mean(axis=1))

    def flag_rate(self, thresholds: Mapping[str, float]) -> float:
        """Fraction of held-out images with at least ``vote_k`` scores above their threshold."""
        limits = np.array([float(thresholds[name]) for name in DETECTORS])
        votes = (self.calibrated > limits).sum(axis=1)
        return float((votes >= self.vote_k).mean())

    def project(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Rows of ``features`` ``(n, d)`` on the profile's principal components ``(n, k)``."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise DriftProfileError(f"features must be (n, {self.mean.shape[0]}), got {x.shape}")
        return np.asarray((x - self.mean) @ self.components.T)

    def to_bytes(self) -> bytes:
        m, k = self.projections.shape
        header = _HEADER.pack(m, self.mean.shape[0], k, self.vote_k)
        arrays = (self.calibrated, self.mean, self.components, self.projections)
        return b"".join((_MAGIC, header, *(a.tobytes(order="C") for a in arrays)))

    @classmethod
    def from_bytes(cls, data: bytes) -> DriftProfile:
        if data[: len(_MAGIC)] != _MAGIC or len(data) < len(_MAGIC) + _HEADER.size:
            raise DriftProfileError("not a skyloop drift profile (bad magic, version or header)")
        m, d, k, vote_k = _HEADER.unpack_from(data, len(_MAGIC))
        shapes = ((m, len(DETECTORS)), (d,), (k, d), (m, k))
        need = len(_MAGIC) + _HEADER.size + 8 * sum(int(np.prod(s)) for s in shapes)
        if len(data) != need:
            raise DriftProfileError(f"drift profile of m={m}, d={d}, k={k} needs {need} bytes")
        offset, arrays = len(_MAGIC) + _HEADER.size, []
        for shape in shapes:
            count = int(np.prod(shape))
            arrays.append(np.frombuffer(data, "<f8", count, offset).reshape(shape))
            offset += 8 * count
        calibrated, mean, components, projections = arrays
        return cls(calibrated, mean, components, projections, vote_k=vote_k)


def build_profile(
    fit_features: NDArray[Any],
    held_out_features: NDArray[Any],
    held_out_calibrated: NDArray[Any],
    vote_k: int,
    components: int = 8,
) -> DriftProfile:
    """Principal components of ``fit_features``; held-out projections and calibrated scores.

    The components come from the images the ensemble fit on and are evaluated on held-out ones,
    so a live window and the profile are compared on equal terms (projections of the fitted
    images themselves would overstate their spread along the fitted directions). The components
    come from the top eigenvectors of the fit part's Gram matrix (the same as an SVD's, at a
    fraction of the cost when there are fewer images than features). Deterministic: the same
    matrix gives the same components on the same platform.
    """
    fit = np.asarray(fit_features, dtype=np.float64)
    mean = fit.mean(axis=0)
    centred = fit - mean
    k = max(1, min(components, fit.shape[0] - 1, fit.shape[1]))
    # The top k right singular vectors from the n x n Gram matrix: O(n^2 d), only k eigenpairs.
    gram = centred @ centred.T
    n = gram.shape[0]
    eigenvalues, vectors = eigh(gram, subset_by_index=[n - k, n - 1])
    order = np.argsort(-eigenvalues, kind="stable")
    sigma = np.sqrt(np.maximum(eigenvalues[order], 1e-300))
    basis = (centred.T @ vectors[:, order] / sigma).T
    # Fix each component's sign (an eigenvector's is arbitrary) so equal inputs give equal bytes.
    signs = np.sign(basis[np.arange(k), np.argmax(np.abs(basis), axis=1)])
    basis = basis * np.where(signs == 0, 1.0, signs)[:, None]
    held = np.asarray(held_out_features, dtype=np.float64)
    return DriftProfile(
        calibrated=np.asarray(held_out_calibrated, dtype=np.float64),
        mean=mean,
        components=basis,
        projections=(held - mean) @ basis.T,
        vote_k=vote_k,
    )


def load_profile(store: ArtifactStore, artifact_id: str) -> DriftProfile:
    """Load and verify a stored profile (``ArtifactError`` when absent or corrupt)."""
    try:
        return DriftProfile.from_bytes(store.get_bytes(artifact_id))
    except DriftProfileError as exc:
        raise DriftProfileError(f"artifact {artifact_id}: {exc}") from exc
