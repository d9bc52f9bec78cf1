"""OOD ensemble maths: detector correctness, calibrated FPR on held-out normals, determinism."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf

from processors.core.exceptions import ConfigError
from processors.ood import detectors
from processors.ood import ensemble as ood
from processors.ood.ensemble import (
    KnnDetector,
    MahalanobisDetector,
    OODEnsemble,
    ScoreInputError,
    energy_score,
    split_reference,
)
from processors.ood.reference import ReferenceSet, ReferenceSetError

D = 1280


class FeatureWorld:
    """Backbone-like data: low-rank, positive-mean features and logits that depend on them."""

    def __init__(self, seed: int = 0, d: int = D, rank: int = 40) -> None:
        rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng(seed + 1000)
        self.mean = rng.uniform(0.0, 2.0, size=d)
        self.mixing = rng.normal(size=(rank, d)) * (1.0 / np.arange(1, rank + 1))[:, None]
        self.head = rng.normal(size=(d, 50)) / np.sqrt(d)
        self.d, self.rank = d, rank

    def sample(self, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        latent = self.rng.normal(size=(n, self.rank))
        features = self.mean + latent @ self.mixing + 0.3 * self.rng.normal(size=(n, self.d))
        if shift:
            direction = self.rng.normal(size=self.d)
            features = features + shift * direction / np.linalg.norm(direction) * np.sqrt(self.d)
        logits = 4.0 * (features - self.mean) @ self.head
        return features.astype(np.float32), energy_score(logits)

    def reference(self, n: int) -> ReferenceSet:
        features, energy = self.sample(n)
        return ReferenceSet(features, energy, backbone="synthetic@0")


@pytest.fixture(scope="module")
def world() -> FeatureWorld:
    return FeatureWorld()


@pytest.fixture(scope="module")
def fitted(world: FeatureWorld) -> tuple[ReferenceSet, OODEnsemble]:
    reference = world.reference(1000)
    return reference, OODEnsemble.fit(reference)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(ood, raise_on_error=False)
    assert result.attempted >= 10 and result.failed == 0


def test_detector_docstring_examples_run() -> None:
    result = doctest.testmod(detectors, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


def test_energy_score_matches_definition_and_is_stable() -> None:
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 999.0, -5.0]])
    naive = -np.log(np.exp(logits[0]).sum())
    scores = energy_score(logits)
    assert scores.dtype == np.float64
    assert scores[0] == pytest.approx(naive)
    assert scores[1] == pytest.approx(-(1000.0 + np.log1p(np.exp(-1.0) + np.exp(-1005.0))))
    assert energy_score(logits, temperature=2.0)[0] == pytest.approx(
        -2.0 * logsumexp(logits[0] / 2)
    )
    with pytest.raises(ConfigError, match="temperature"):
        energy_score(logits, temperature=0.0)
    with pytest.raises(ScoreInputError, match="non-finite"):
        energy_score(np.array([[np.nan, 0.0]]))


def test_split_is_deterministic_disjoint_and_spread() -> None:
    for n, fraction in [(20, 0.5), (101, 0.5), (1000, 0.3), (37, 0.75)]:
        fit_rows, cal_rows = split_reference(n, fraction)
        assert len(fit_rows) == int(np.floor(n * fraction))
        assert np.array_equal(np.sort(np.concatenate([fit_rows, cal_rows])), np.arange(n))
        assert np.abs(np.mean(fit_rows) - np.mean(cal_rows)) <= 1 / min(fraction, 1 - fraction)
    with pytest.raises(ConfigError, match="fit_fraction"):
        split_reference(10, 1.0)


def test_mahalanobis_equals_explicit_inverse_of_ledoit_wolf(world: FeatureWorld) -> None:
    train, _ = world.sample(300)
    queries, _ = world.sample(50)
    detector = MahalanobisDetector().fit(train)
    estimator = LedoitWolf().fit(train.astype(np.float64))
    diff = queries.astype(np.float64) - estimator.location_
    expected = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(estimator.covariance_), diff)
    np.testing.assert_allclose(detector.raw(queries), expected, rtol=1e-5)
    assert 0.0 < detector.shrinkage_ < 1.0


def test_knn_equals_brute_force_kth_distance() -> None:
    rng = np.random.default_rng(3)
    bank = rng.normal(size=(200, 32)) + 1.0
    queries = rng.normal(size=(25, 32)) + 1.0
    detector = KnnDetector(k=7).fit(bank)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distances = np.linalg.norm(unit(queries)[:, None, :] - unit(bank)[None, :, :], axis=2)
    expected = np.sort(distances, axis=1)[:, 6]
    np.testing.assert_allclose(detector.raw(queries), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vote_k", [1, 2, 3])
@pytest.mark.parametrize("target", [0.05, 0.1])
def test_fpr_on_held_out_normals_matches_target(
    world: FeatureWorld, fitted: tuple[ReferenceSet, OODEnsemble], vote_k: int, target: float
) -> None:
    _, ensemble = fitted
    features, energy = world.sample(2000)
    thresholds = ensemble.thresholds_for_fpr(target, vote_k)
    calibrated = ensemble.calibrate(ensemble.raw_scores(features, energy))
    _, _, is_candidate = ensemble.decide(calibrated, thresholds, vote_k)
    assert abs(is_candidate.mean() - target) <= 0.03, (vote_k, target, is_candidate.mean())


def test_calibrated_scores_are_near_uniform_on_normals(
    world: FeatureWorld, fitted: tuple[ReferenceSet, OODEnsemble]
) -> None:
    _, ensemble = fitted
    calibrated = ensemble.calibrate(ensemble.raw_scores(*world.sample(2000)))
    for name, values in calibrated.items():
        assert values.min() >= 0.0 and values.max() <= 1.0
        assert abs(values.mean() - 0.5) < 0.05, name
        assert abs(np.mean(values > 0.9) - 0.1) < 0.03, name


def test_far_anomalies_are_flagged_by_every_detector(
    world: FeatureWorld, fitted: tuple[ReferenceSet, OODEnsemble]
) -> None:
    _, ensemble = fitted
    features, energy = world.sample(100, shift=3.0)
    thresholds = ensemble.thresholds_for_fpr(0.05, vote_k=2)
    calibrated = ensemble.calibrate(ensemble.raw_scores(features, energy))
    votes, votes_for, is_candidate = ensemble.decide(calibrated, thresholds, vote_k=2)
    assert is_candidate.all()
    assert votes["mahalanobis"].all() and votes["knn"].all()
    assert votes_for.min() >= 2
    score = ensemble.ensemble_score(calibrated)
    normal_score = ensemble.ensemble_score(
        ensemble.calibrate(ensemble.raw_scores(*world.sample(100)))
    )
    assert score.min() > np.median(normal_score)


def test_energy_alone_flags_confidently_abnormal_logits(
    world: FeatureWorld, fitted: tuple[ReferenceSet, OODEnsemble]
) -> None:
    _, ensemble = fitted
    features, energy = world.sample(10)
    calibrated = ensemble.calibrate(ensemble.raw_scores(features, energy + 100.0))
    votes, _, _ = ensemble.decide(calibrated, ensemble.thresholds_for_fpr(0.05, 1), 1)
    assert votes["energy"].all()
    assert np.all(calibrated["energy"] == 1.0)


def test_same_reference_gives_bit_identical_thresholds_and_scores(
    world: FeatureWorld, fitted: tuple[ReferenceSet, OODEnsemble]
) -> None:
    reference, first = fitted
    second = OODEnsemble.fit(ReferenceSet.from_bytes(reference.to_bytes()))
    queries = world.sample(200)
    for vote_k in (1, 2, 3):
        for target in (0.01, 0.05, 0.2):
            assert first.thresholds_for_fpr(target, vote_k) == second.thresholds_for_fpr(
                target, vote_k
            )
    a = first.calibrate(first.raw_scores(*queries))
    b = second.calibrate(second.raw_scores(*queries))
    for name in OODEnsemble.DETECTORS:
        assert np.array_equal(a[name], b[name])


def test_thresholds_fall_as_the_target_rate_rises(fitted: tuple[ReferenceSet, OODEnsemble]) -> None:
    _, ensemble = fitted
    for vote_k in (1, 2, 3):
        values = [ensemble.thresholds_for_fpr(t, vote_k)["knn"] for t in (0.01, 0.05, 0.2, 0.5)]
        assert values == sorted(values, reverse=True)
        assert len(set(ensemble.thresholds_for_fpr(0.05, vote_k).values())) == 1
    # More votes required -> a lower common threshold for the same rate.
    assert (
        ensemble.thresholds_for_fpr(0.05, 3)["mahalanobis"]
        < ensemble.thresholds_for_fpr(0.05, 1)["mahalanobis"]
    )


def test_too_small_references_name_what_is_needed(world: FeatureWorld) -> None:
    with pytest.raises(ReferenceSetError, match=r"has 19 images.*at least 20"):
        OODEnsemble.fit(world.reference(19))
    with pytest.raises(ReferenceSetError, match=r"60 images.*at least 91 are needed"):
        OODEnsemble.fit(world.reference(60), fit_fraction=0.9)
    with pytest.raises(ReferenceSetError, match="at least 60"):
        OODEnsemble.fit(world.reference(40), knn_k=30)
    assert OODEnsemble.fit(world.reference(20)).calibration_size == 10


def test_bad_query_inputs_raise_typed_errors(fitted: tuple[ReferenceSet, OODEnsemble]) -> None:
    _, ensemble = fitted
    good = np.zeros((2, D), np.float32)
    with pytest.raises(ScoreInputError, match="d=10"):
        ensemble.raw_scores(np.zeros((2, 10)), np.zeros(2))
    bad = good.copy()
    bad[1, 5] = np.nan
    with pytest.raises(ScoreInputError, match=r"rows \[1\]"):
        ensemble.raw_scores(bad, np.zeros(2))
    with pytest.raises(ScoreInputError, match=r"\(2,\)"):
        ensemble.raw_scores(good, np.zeros(3))
    with pytest.raises(ScoreInputError, match="knn"):
        ensemble.calibrate({"mahalanobis": np.zeros(2), "energy": np.zeros(2)})
    with pytest.raises(ConfigError, match="vote_k"):
        ensemble.thresholds_for_fpr(0.05, vote_k=4)
    with pytest.raises(ConfigError, match="target_fpr"):
        ensemble.thresholds_for_fpr(0.0, vote_k=1)
    with pytest.raises(ConfigError, match="knn_k"):
        KnnDetector(k=0)


def test_empty_query_batch(fitted: tuple[ReferenceSet, OODEnsemble]) -> None:
    _, ensemble = fitted
    calibrated = ensemble.calibrate(ensemble.raw_scores(np.zeros((0, D)), np.zeros(0)))
    _, votes_for, is_candidate = ensemble.decide(
        calibrated, ensemble.thresholds_for_fpr(0.05, 2), 2
    )
    assert votes_for.shape == (0,) and is_candidate.shape == (0,)
    assert ensemble.ensemble_score(calibrated).shape == (0,)
