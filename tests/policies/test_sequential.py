"""The sequential test, the conformal thresholds and the refinement guard (issue 20's policy).

Streams are seeded uniform p-values (what a calibrated detector gives on normal data) or
synthetic features through the real calibration; nothing here is tuned to them: the CUSUM's
threshold comes from its run length, the conformal threshold from its rank.
"""

from __future__ import annotations

import doctest
from dataclasses import asdict
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import ndtr, ndtri

from processors.ood.ensemble import OODEnsemble
from processors.policies import refine, sequential
from processors.policies.calibration import conformal_threshold, plan_calibration
from processors.policies.refine import Clearance
from processors.policies.sequential import (
    DEFAULT_THRESHOLDS,
    Cusum,
    SequentialTest,
    cusum_threshold,
    observe_lane,
    reference_votes,
)


@pytest.mark.parametrize("module", [sequential, refine])
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _z(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Vectorised :meth:`SequentialTest.z` (checked against it below)."""
    m = reference.size
    below = np.searchsorted(reference, scores, side="left")
    not_above = np.searchsorted(reference, scores, side="right")
    u = ((m - not_above) + (not_above - below + 1) / 2.0) / (m + 1)
    return np.asarray(ndtri(1.0 - u))


def _run(z: np.ndarray, h: float, k: float, first_seq: int = 0) -> tuple[int | None, Cusum]:
    """Index of the first alarm (None: none) of a fresh Cusum over ``z``."""
    cusum = Cusum()
    for i, value in enumerate(z):
        if cusum.step(float(value), first_seq + i, k, h):
            return i, cusum
    return None, cusum


def test_the_threshold_is_deterministic_and_higher_for_a_smaller_reference() -> None:
    args = (0.75, 1e5, 512, 1000, 3)
    small, large = cusum_threshold(32, *args), cusum_threshold(256, *args)
    cusum_threshold.cache_clear()
    assert cusum_threshold(32, *args) == small  # seeded: the same h on every run
    assert small > large > 0.0
    with pytest.raises(ValueError):
        SequentialTest(arl=100.0, horizon=4096)


def test_the_tabled_default_thresholds_are_what_the_simulation_gives() -> None:
    test = SequentialTest()
    h = cusum_threshold(64, test.k, test.arl, test.horizon, test.replications, test.seed)
    assert h == pytest.approx(DEFAULT_THRESHOLDS[64], abs=1e-4)
    assert test.threshold(64) == test.threshold(95) == DEFAULT_THRESHOLDS[64]  # grid: down


def test_no_false_alarm_in_100_000_stationary_images() -> None:
    """25 epochs of 4,096 images, each against its own calibration of 64 held-out scores."""
    test = SequentialTest()
    rng = np.random.default_rng(20)
    alarms = 0
    for _ in range(25):
        reference = np.sort(rng.uniform(size=64))
        stream = rng.uniform(size=test.horizon)
        z = _z(stream, reference)
        assert z[0] == test.z(float(stream[0]), reference)
        alarms += _run(z, test.threshold(64), test.k)[0] is not None
    assert alarms == 0


@pytest.mark.parametrize("direction", ["collapse", "flood"])
def test_a_collapse_and_a_flood_are_caught_within_64_images(direction: str) -> None:
    """Scores shifted by 1.5 standard deviations in z (the shift k = 0.75 is quickest at) down
    (a detector going blind) or up, after 200 stationary images; 20 streams, 20 references."""
    test = SequentialTest()
    rng = np.random.default_rng(7)
    onset, delays = 200, []
    shift = -1.5 if direction == "collapse" else 1.5
    for _ in range(20):
        reference = np.sort(rng.uniform(size=64))
        after = ndtr(rng.normal(shift, 1.0, 400))  # uniform scores, shifted in z
        stream = np.concatenate([rng.uniform(size=onset), after])
        at, cusum = _run(_z(stream, reference), test.threshold(64), test.k)
        assert at is not None and at >= onset  # never before the change
        alarm = cusum.alarm(test.threshold(64))
        assert alarm is not None and alarm[0] == direction
        assert abs(alarm[1] - onset) <= 16  # the onset estimate: the excursion's first image
        delays.append(at - onset)
    assert max(delays) < 64, delays


def test_a_lane_raises_a_shifted_feature_component_and_names_it() -> None:
    """Votes stay uniform; component 3 of 8 moves by 1.5 standard deviations at image 200."""
    test, rng = SequentialTest(), np.random.default_rng(3)
    votes = reference_votes(rng.integers(0, 64, size=(70, 3)) / 64, 2)
    projections = np.sort(rng.normal(size=(70, 8)), axis=0)
    state: dict[str, object] = {}
    for seq in range(600):
        x = rng.normal(size=8)
        x[3] += 1.5 if seq >= 200 else 0.0
        alarm, _ = observe_lane(test, state, rng.uniform(), votes, x, projections, seq)
        if alarm is not None:
            break
    assert alarm is not None and alarm[0] == "sequential: feature component 3 shifted up"
    assert 200 <= seq < 264 and abs(alarm[2] - 200) <= 16


def test_the_cusum_state_survives_a_round_trip() -> None:
    cusum = Cusum()
    for seq, z in enumerate([0.3, 2.0, 1.5, -0.2]):
        cusum.step(z, seq, 0.75)
    assert Cusum.from_dict(cusum.to_dict()) == cusum
    assert cusum.up_from == 1 and cusum.down_from == -1


@pytest.mark.parametrize("target", [0.05, 0.1])
def test_the_conformal_threshold_covers_new_exchangeable_images(target: float) -> None:
    """The in-sample mechanics of the ensemble (a row's rank among the others, an image's
    among all), correlated detectors, 4,000 calibrations: the mean flag rate of a new image is
    within ``target ± 1 / (n + 1)`` (plus three standard errors)."""
    rng = np.random.default_rng(5)
    n, draws, flags = 64, 4000, 0
    for _ in range(draws):
        raw = rng.normal(size=(n + 1, 3)) + rng.normal(size=(n + 1, 1))
        cal, new = raw[:n], raw[n]
        ranked = np.sort(cal, axis=0)
        in_sample = np.stack([np.searchsorted(ranked[:, d], cal[:, d]) / n for d in range(3)], 1)
        image = np.array([np.searchsorted(ranked[:, d], new[d]) / n for d in range(3)])
        threshold = conformal_threshold(-np.sort(-in_sample, axis=1)[:, 1], target)
        flags += int((image > threshold).sum() >= 2)
    se = np.sqrt(target * (1 - target) / draws)
    assert target - 1 / (n + 1) - 3 * se <= flags / draws <= target + 1 / (n + 1) + 3 * se


def test_calibrations_of_the_real_ensemble_keep_their_bound_on_new_images() -> None:
    """plan_calibration on 40 references of 128 iid images, each judged on 2,000 new ones."""
    rates = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = rng.gamma(2.0, 1.0, size=(2128, 32)).astype(np.float32)
        e = rng.normal(-8.0, 0.5, 2128)
        plan = plan_calibration(x[:128], e[:128], "m@1", target_fpr=0.05, vote_k=2, max_trim=0.0)
        ensemble = OODEnsemble.fit(plan.reference)
        calibrated = ensemble.calibrate(ensemble.raw_scores(x[128:], e[128:]))
        rates.append(ensemble.decide(calibrated, plan.thresholds, 2)[2].mean())
    n = 64  # the calibration part of 128
    assert 0.05 - 1 / (n + 1) - 0.01 <= float(np.mean(rates)) <= 0.05 + 1 / (n + 1)


@given(
    st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=60),
    st.sampled_from([64, 128]),
)
def test_an_image_is_cleared_only_behind_every_objection_and_a_full_lag(
    verdicts: list[tuple[int, bool]], lag: int
) -> None:
    clearance, end, objections = Clearance(100, 100), 100, [100]
    for step, clean in verdicts:
        end += step
        before = clearance.cleared_to
        after = clearance.judged(end, clean, lag)
        if not clean:
            objections.append(end)
        assert after >= before  # never withdrawn within an epoch
        if after != before:  # an advance: a clean window a full lag later, behind every objection
            assert clean and after == end - lag and max(objections) <= after


def test_a_cusum_persists_every_field_and_comes_back_the_same() -> None:
    cusum = Cusum()
    for seq, z in enumerate([2.0, 1.5, -3.0, 0.1]):
        cusum.step(z, seq, 0.5)
    assert cusum.to_dict() == asdict(cusum)  # a field added later must be written too
    assert Cusum.from_dict(cusum.to_dict()) == cusum
