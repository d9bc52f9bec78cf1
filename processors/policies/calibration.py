"""Calibration policy: turn a window of reference images into thresholds at a target FPR.

Pure (no I/O): the controller hands it the features and raw energies of a reference window,
stores the resulting :class:`~processors.ood.reference.ReferenceSet` and
:class:`~processors.policies.profile.DriftProfile` as content-addressed artifacts and emits
``calibration.updated`` with the thresholds it returns. Because
:class:`~processors.ood.ensemble.OODEnsemble` is deterministic, every scorer that refits from
the same artifact reproduces exactly these thresholds' meaning.

**Trimming far-out outliers.** A reference window is a slice of the live stream, so it holds
the stream's anomalies too; a threshold at the ``target_fpr`` quantile of a contaminated window
sits among the anomalies and the real false-positive rate on normal images falls far below the
target (measured on a synthetic stream with 5 % anomalies: 0.005 against 0.05). Before fitting,
every reference image is scored by detectors fit on the *other* half of the window (cross-fit,
so no image judges itself) and an image beyond Tukey's far-out fence (Q3 + 3 IQR of the
held-out raw scores) on at least ``vote_k`` detectors is left out of the reference, at most
``max_trim`` (default 10 %) of the window, most extreme first. The fence is a classic robust
rule, not a figure fitted to any stream; every other trimmed image stays in the drift profile
(beside the held-out half of the kept ones), so the expected flag rate (``expected_flag_rate``
in the evidence) counts outliers at the rate the window had them.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> features = rng.uniform(size=(80, 8)).astype("float32")
    >>> features[:3, 0] += 10.0  # three far-out images in the window
    >>> plan = plan_calibration(features, rng.normal(size=80), "bb@1", target_fpr=0.1, vote_k=2)
    >>> sorted(plan.thresholds), len(plan.reference), plan.trimmed
    (['energy', 'knn', 'mahalanobis'], 77, (0, 1, 2))
    >>> plan.profile.size  # held out: the 39 calibration rows kept, plus 2 of the 3 trimmed
    41
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.records import ScoreRecord
from processors.ood.ensemble import (
    KnnDetector,
    OODEnsemble,
    split_reference,
)
from processors.ood.reference import ReferenceSet
from processors.policies.profile import DriftProfile, build_profile

__all__ = [
    "THRESHOLD_RULES",
    "CalibrationPlan",
    "conformal_threshold",
    "far_out_rows",
    "plan_calibration",
    "score_row",
]

FENCE_IQR = 3.0
THRESHOLD_RULES = ("conformal", "nearest")


def conformal_threshold(vote_statistic: NDArray[np.floating], target_fpr: float) -> float:
    """The split-conformal threshold for a flag rate of ``target_fpr`` on new images.

    ``vote_statistic``: each calibration row's ``vote_k``-th largest calibrated score (in-sample,
    on the grid ``j / n``). With ``r = ceil((n + 1)(1 - target_fpr))`` the threshold is the grid
    midpoint just above the ``r``-th smallest value, ``v_(r) + 0.5 / n`` (``r > n``: ``1 + 0.5 /
    n``, nothing is flagged). For a new image exchangeable with the calibration rows (both held
    out from the fit), its rank among the ``n + 1`` is uniform, so ``P(flag) <= (n + 1 - r) /
    (n + 1) <= target_fpr`` if the rows' scores were symmetric with the image's; a row's
    in-sample score counts the ``n - 1`` other rows below it where the image's counts all ``n``
    (at most ``1 / n`` lower), which can add one rank: ``target_fpr - 1 / (n + 1) <= P(flag)
    <= target_fpr + 1 / (n + 1)`` (ties only lower it), over the calibration draw and the
    image, for any distribution. It does not bound one calibration's own rate, which scatters
    like Beta(n + 1 - r, r) around it (at ``n = 64`` the 5-95 % range is about 0.02-0.10):
    refinement narrows that.

    >>> conformal_threshold(np.arange(64) / 64, 0.05)  # r = 62: v_(62) = 61/64
    0.9609375
    >>> conformal_threshold(np.arange(10) / 10, 0.05)  # r = 11 > n: flag nothing
    1.05
    """
    v = np.sort(np.asarray(vote_statistic, dtype=np.float64))
    n = v.shape[0]
    if n < 1 or not 0.0 < target_fpr < 1.0:
        raise ValueError(f"need n >= 1 and target_fpr in (0, 1), got {n}, {target_fpr!r}")
    r = int(np.ceil((n + 1) * (1.0 - target_fpr) - 1e-9))
    if r > n:
        return 1.0 + 0.5 / n
    return float(v[r - 1] + 0.5 / n)


def score_row(score: ScoreRecord) -> tuple[NDArray[np.float32], float] | None:
    """(features, raw energy) a score record carries, or None if it lacks either or has NaNs."""
    if score["embedding"] is None:
        return None
    energy = next((d["raw"] for d in score["detectors"] if d["detector"] == "energy"), None)
    if energy is None or not np.isfinite(energy):
        return None
    features = np.frombuffer(score["embedding"], dtype="<f2").astype(np.float32)
    if features.size == 0 or not np.isfinite(features).all():
        return None
    return features, float(energy)


def _robust_distance(fit: NDArray[np.float64], judged: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean squared robust z-score (median / MAD of ``fit``, per feature) of ``judged`` rows.

    The screen's stand-in for Mahalanobis: a covariance fitted on a contaminated window
    absorbs the contamination's direction and hides it (masking); medians and MADs do not.
    """
    centre = np.median(fit, axis=0)
    mad = 1.4826 * np.median(np.abs(fit - centre), axis=0)
    scale = np.maximum(
        mad, 1e-6 * max(float(np.median(mad[mad > 0])) if (mad > 0).any() else 1.0, 1e-12)
    )
    return np.asarray(np.mean(((judged - centre) / scale) ** 2, axis=1))


def _held_out_raws(
    features: NDArray[np.float64], energy: NDArray[np.float64], knn_k: int
) -> NDArray[np.float64]:
    """``(n, 3)`` raw scores of every row by screens fit on the other half of the window:
    a robust distance (Mahalanobis's stand-in), the energy, kNN."""
    a, b = split_reference(features.shape[0], 0.5)
    raws = np.empty((features.shape[0], 3))
    raws[:, 1] = energy
    k = min(knn_k, len(a), len(b))
    for fit_rows, judged in ((a, b), (b, a)):
        raws[judged, 0] = _robust_distance(features[fit_rows], features[judged])
        raws[judged, 2] = KnnDetector(k=k).fit(features[fit_rows]).raw(features[judged])
    return raws


def far_out_rows(
    features: NDArray[np.floating], energy: NDArray[np.floating], vote_k: int, max_trim: float
) -> tuple[int, ...]:
    """Rows beyond the far-out fence on at least ``vote_k`` detectors (cross-fit), capped.

    Returns row indices, ascending; at most ``floor(max_trim * n)`` of them (the most extreme,
    ranked by their ``vote_k``-th largest distance past the fence in IQR units).
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    cap = int(np.floor(max_trim * n))
    if cap < 1 or n < 20:
        return ()
    raws = _held_out_raws(x, np.asarray(energy, dtype=np.float64), knn_k=10)
    q1, q3 = np.percentile(raws, [25, 75], axis=0)
    iqr = np.maximum(q3 - q1, 1e-12)
    excess = (raws - (q3 + FENCE_IQR * iqr)) / iqr  # > 0: beyond the fence, in IQR units
    kth = -np.sort(-excess, axis=1)[:, vote_k - 1]
    outliers = np.flatnonzero(kth > 0)
    if outliers.size > cap:
        outliers = outliers[np.argsort(-kth[outliers], kind="stable")[:cap]]
    return tuple(int(i) for i in np.sort(outliers))


@dataclass(frozen=True)
class CalibrationPlan:
    """What the controller stores and emits for one calibration."""

    reference: ReferenceSet
    profile: DriftProfile
    thresholds: dict[str, float]
    trimmed: tuple[int, ...]
    evidence: dict[str, float]


def plan_calibration(
    features: NDArray[np.floating],
    energy: NDArray[np.floating],
    model_version: str,
    target_fpr: float,
    vote_k: int,
    *,
    max_trim: float = 0.1,
    profile_components: int = 8,
    threshold_rule: str = "conformal",
) -> CalibrationPlan:
    """Trim far-out rows, fit the ensemble, pick thresholds for a k-of-3 vote at ``target_fpr``.

    ``features`` ``(n, d)`` and ``energy`` ``(n,)`` are the reference window in stream order.
    ``threshold_rule``: ``conformal`` (:func:`conformal_threshold`, a flag rate at most the
    target on new images) or ``nearest`` (the in-sample rate nearest the target,
    :meth:`~processors.ood.ensemble.OODEnsemble.thresholds_for_fpr`: about ``1 / n`` above
    it on new images). Deterministic in its inputs. Raises ``ReferenceSetError`` when too few
    rows remain.
    """
    if not 1 <= vote_k <= 3:
        raise ValueError(f"vote_k must be in 1..3, got {vote_k!r}")
    if threshold_rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}")
    x = np.asarray(features, dtype=np.float32)
    e = np.asarray(energy, dtype=np.float64)
    trimmed = far_out_rows(x, e, vote_k, max_trim)
    keep = np.setdiff1d(np.arange(x.shape[0]), np.asarray(trimmed, dtype=np.intp))
    reference = ReferenceSet(x[keep], e[keep], model_version)
    ensemble = OODEnsemble.fit(reference)
    fit_rows, cal_rows = split_reference(len(reference), 0.5)
    # Held out: the calibration part of the kept rows, plus every other trimmed row, so that
    # outliers are as frequent in the profile as in the window (and in the stream).
    held = np.concatenate([keep[cal_rows], np.asarray(trimmed[::2], dtype=np.intp)])
    calibrated = ensemble.calibrate(ensemble.raw_scores(x[held], e[held]))
    matrix = np.column_stack([calibrated[name] for name in ensemble.DETECTORS])
    if threshold_rule == "conformal":  # the first len(cal_rows) held rows are the calibration
        vote = -np.sort(-matrix[: len(cal_rows)], axis=1)[:, vote_k - 1]
        thresholds = dict.fromkeys(ensemble.DETECTORS, conformal_threshold(vote, target_fpr))
    else:
        thresholds = ensemble.thresholds_for_fpr(target_fpr, vote_k)
    profile = build_profile(
        reference.features[fit_rows], x[held], matrix, vote_k, profile_components
    )
    evidence = {
        "reference_size": float(x.shape[0]),
        "trimmed": float(len(trimmed)),
        "calibration_size": float(ensemble.calibration_size),
        "target_fpr": float(target_fpr),
        "expected_flag_rate": profile.flag_rate(thresholds),
        "mahalanobis_shrinkage": float(ensemble.mahalanobis.shrinkage_ or 0.0),
    }
    return CalibrationPlan(reference, profile, thresholds, trimmed, evidence)
