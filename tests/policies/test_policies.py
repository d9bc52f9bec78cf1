"""The controller's pure policies: their doctests, and the properties the issue asks for."""

from __future__ import annotations

import doctest
from types import ModuleType

import numpy as np
import pytest

from processors.controller import state
from processors.ood.ensemble import OODEnsemble
from processors.policies import (
    base,
    baselines,
    calibration,
    decay,
    drift,
    health,
    plugins,
    profile,
    sources,
)
from processors.policies.calibration import far_out_rows, plan_calibration
from processors.policies.decay import ThresholdDecay
from processors.policies.drift import DriftMonitor, Hysteresis, change_point
from processors.policies.sources import ErrorBackoff, Rebalance


@pytest.mark.parametrize(
    "module",
    [
        base,
        baselines,
        calibration,
        decay,
        drift,
        health,
        plugins,
        profile,
        sources,
        state,
    ],
)
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _calibrated_monitor(seed: int, window: int = 64) -> tuple[DriftMonitor, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return DriftMonitor(rng.uniform(size=128), target_fpr=0.05, window=window), rng


@pytest.mark.parametrize("seed", range(5))
def test_a_stationary_stream_of_5000_raises_no_drift(seed: int) -> None:
    monitor, rng = _calibrated_monitor(seed)
    scores = rng.uniform(size=5120)
    verdicts = [monitor.update(float(s), bool(s > 0.95)) for s in scores]
    assert sum(1 for v in verdicts if v is not None) == 80
    assert not any(v.drift for v in verdicts if v is not None)


def test_a_blinded_detector_is_a_drift_too() -> None:
    monitor, rng = _calibrated_monitor(1)
    for s in rng.uniform(size=256):
        monitor.update(float(s), bool(s > 0.95))
    # The detector goes blind: scores collapse towards the middle, nothing is flagged.
    verdicts = [monitor.update(float(s), False) for s in rng.uniform(0.3, 0.6, size=128)]
    done = [v for v in verdicts if v is not None]
    assert [v.drift for v in done] == [False, True]
    assert "score distribution" in done[-1].reason and done[-1].flag_rate == 0.0
    assert done[-1].evidence()["psi"] > done[-1].evidence()["psi_noise"]


def test_one_blip_does_not_trigger_and_cooldown_follows_a_raise() -> None:
    monitor, rng = _calibrated_monitor(2)
    monitor.hysteresis = Hysteresis(consecutive=2, cooldown=2)
    blip = [monitor.update(float(s), True) for s in rng.uniform(0.5, 1.0, size=64)]
    calm = [monitor.update(float(s), bool(s > 0.95)) for s in rng.uniform(size=64)]
    assert not any(v.drift for v in blip + calm if v is not None)
    flood = [monitor.update(float(s), True) for s in rng.uniform(0.5, 1.0, size=64 * 4)]
    raised = [v.drift for v in flood if v is not None]
    assert raised == [False, True, False, False]  # hysteresis 2, then 2 quiet windows


def test_sliding_hysteresis_needs_disjoint_windows() -> None:
    # Windows judged every quarter window: overlapping windows never count twice.
    h = Hysteresis(consecutive=2, spacing=4)
    assert [h.step(True) for _ in range(4)] == [False, False, False, False]
    assert h.step(True)  # the newest and the one 4 verdicts back are disjoint
    assert h.streak == 0 and not h.step(True)


def test_change_point_finds_where_the_shift_begins() -> None:
    rng = np.random.default_rng(5)
    for onset in (20, 64, 150):
        values = rng.normal(size=(192, 4))
        values[onset:, 1] += 2.0
        assert abs(change_point(values, np.ones(4)) - onset) <= 8


def test_threshold_decay_is_bounded_and_sparse() -> None:
    policy = ThresholdDecay(decay=0.05, floor=0.8)
    values = [policy.threshold(0.95, n) for n in range(0, 100_000, 997)]
    assert all(0.8 <= v <= 0.95 for v in values) and values == sorted(values, reverse=True)
    current, events = 0.95, 0
    for n in range(1, 10_001):
        new = policy.due(n, 0.95, current)
        if new is not None:
            current, events = new, events + 1
    assert 0 < events <= 10_000 // policy.every and current == policy.threshold(0.95, 9984)


def test_decay_never_raises_the_expected_flag_rate_past_its_cap() -> None:
    rng = np.random.default_rng(4)
    held_out = rng.uniform(size=(500, 3))

    def rate(t: float) -> float:
        return float(((held_out > t).sum(axis=1) >= 2).mean())

    policy = ThresholdDecay(decay=0.2, floor=0.0, max_rate_ratio=1.1)
    for n in (10, 1000, 100_000):
        value = policy.bounded(policy.threshold(0.9, n), base=0.9, rate=rate)
        assert rate(value) <= 1.1 * rate(0.9) + 1e-9


def test_rebalance_weight_and_cadence() -> None:
    policy = Rebalance(every=100)
    assert policy.weight(flagged=10, errors=0, items=100) == 0.1
    assert policy.weight(flagged=0, errors=0, items=100) == 0.0
    assert policy.weight(flagged=5, errors=100, items=100) == 0.0  # nothing scored at all
    assert policy.due(0.1, None, 100) and not policy.due(0.104, 0.1, 100)
    assert not policy.due(0.15, 0.1, 100)  # +50 %, but within 3 standard errors of 100 images
    assert policy.due(0.2, 0.1, 100) and policy.due(0.15, 0.1, 2000)


def test_error_backoff_doubles_and_caps() -> None:
    backoff = ErrorBackoff(base_s=10, max_s=25)
    assert [backoff.pause_for(50, 100, pauses) for pauses in range(3)] == [10, 20, 25]
    assert backoff.pause_for(5, 10, 0) is None  # too few items to judge
    assert backoff.pause_for(20, 100, 0) is None  # at the bound, not over it


def test_trimming_keeps_the_false_positive_rate_near_target_on_a_contaminated_window() -> None:
    rng = np.random.default_rng(6)

    def normal(n: int) -> np.ndarray:
        return rng.gamma(2.0, 1.0, size=(n, 256))

    window = normal(256)
    outliers = rng.choice(256, size=13, replace=False)  # 5 % anomalies in the window
    window[outliers, :32] += 16.0
    plan = plan_calibration(window, rng.normal(size=256), "m", target_fpr=0.05, vote_k=2)
    assert set(plan.trimmed) == set(outliers.tolist())
    assert len(plan.reference) == 256 - 13 and plan.evidence["trimmed"] == 13.0
    ensemble = OODEnsemble.fit(plan.reference)
    clean = normal(4000)
    calibrated = ensemble.calibrate(ensemble.raw_scores(clean, rng.normal(size=4000)))
    _, _, flagged = ensemble.decide(calibrated, plan.thresholds, 2)
    assert 0.03 <= flagged.mean() <= 0.08
    # the profile counts the trimmed images: they are flagged, so the expected rate is higher
    assert plan.evidence["expected_flag_rate"] > 0.05


def test_trimming_leaves_a_clean_window_alone() -> None:
    rng = np.random.default_rng(7)
    features = rng.gamma(2.0, 1.0, size=(256, 256))
    assert far_out_rows(features, rng.normal(size=256), vote_k=2, max_trim=0.1) == ()


def test_every_policy_is_behind_the_one_interface() -> None:
    from processors.policies.base import Policy
    from processors.policies.baselines import AstroLensV11
    from processors.policies.drift import DriftPolicy
    from processors.policies.gate import ModelGate
    from processors.policies.health import HealthPolicy
    from processors.policies.retrain import RetrainTrigger
    from processors.policies.rollout import RolloutPolicy

    policies = [
        ThresholdDecay(),
        Rebalance(),
        ErrorBackoff(),
        HealthPolicy(),
        RetrainTrigger(),
        RolloutPolicy(),
        ModelGate(),
        DriftPolicy(),
        AstroLensV11(),
    ]
    assert all(isinstance(p, Policy) for p in policies)


def test_lane_policies_come_from_the_registry_and_baselines_stay_off_the_production_path() -> None:
    import subprocess
    import sys

    from processors.policies.baselines import AstroLensV11, Static
    from processors.policies.plugins import lane_policy

    assert lane_policy("astrolens") == AstroLensV11() and lane_policy("static") == Static()
    with pytest.raises(ValueError, match="unknown control policy"):
        lane_policy("nope")
    check = (
        "import sys\n"
        "from processors.controller.controller import Controller, ControllerConfig\n"
        "from processors.controller.state import MemoryRing\n"
        "Controller(ControllerConfig(), MemoryRing(), lambda i: None)\n"
        "assert 'processors.policies.baselines' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
