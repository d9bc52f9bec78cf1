"""The controller's pure policies: their doctests, and the properties the issue asks for."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from processors.control import calibration, decay, drift, sources
from processors.control.decay import ThresholdDecay
from processors.control.drift import DriftMonitor
from processors.control.sources import ErrorBackoff, rebalance


@pytest.mark.parametrize("module", [calibration, decay, drift, sources])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def _calibrated_monitor(seed: int) -> tuple[DriftMonitor, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return DriftMonitor(rng.uniform(size=64), target_fpr=0.05), rng


@pytest.mark.parametrize("seed", range(5))
def test_a_stationary_stream_of_5000_raises_no_drift(seed: int) -> None:
    monitor, rng = _calibrated_monitor(seed)
    scores = rng.uniform(size=5120)
    verdicts = [monitor.update(float(s), bool(s > 0.95)) for s in scores]
    assert sum(1 for v in verdicts if v is not None) == 40
    assert not any(v.drift for v in verdicts if v is not None)


def test_a_blinded_detector_is_a_drift_too() -> None:
    monitor, rng = _calibrated_monitor(1)
    for s in rng.uniform(size=256):
        monitor.update(float(s), bool(s > 0.95))
    # The detector goes blind: scores collapse towards the middle, nothing is flagged.
    verdicts = [monitor.update(float(s), False) for s in rng.uniform(0.3, 0.6, size=256)]
    done = [v for v in verdicts if v is not None]
    assert [v.drift for v in done] == [False, True]
    assert "flag collapse" in done[-1].reason and done[-1].flag_rate == 0.0
    assert done[-1].evidence()["psi"] > 0.2


def test_one_blip_does_not_trigger_and_cooldown_follows_a_raise() -> None:
    monitor, rng = _calibrated_monitor(2)
    blip = [monitor.update(float(s), True) for s in rng.uniform(0.5, 1.0, size=128)]
    calm = [monitor.update(float(s), bool(s > 0.95)) for s in rng.uniform(size=128)]
    assert not any(v.drift for v in blip + calm if v is not None)
    flood = [monitor.update(float(s), True) for s in rng.uniform(0.5, 1.0, size=128 * 4)]
    raised = [v.drift for v in flood if v is not None]
    assert raised == [False, True, False, False]  # hysteresis 2, then 2 quiet windows


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


def test_rebalance_never_starves_an_active_source() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        rates = {f"s{i}": (float(rng.uniform(0, 0.3)), float(rng.uniform(0, 1))) for i in range(n)}
        weights = rebalance(rates, floor=0.05)
        assert abs(sum(weights.values()) - 1.0) < 1e-9
        assert min(weights.values()) >= 0.05 - 1e-12


def test_error_backoff_doubles_and_resets() -> None:
    backoff = ErrorBackoff(base_s=10, max_s=25)
    assert [backoff.pause_for("a", 50, 100) for _ in range(3)] == [10, 20, 25]
    backoff.healthy("a")
    assert backoff.pause_for("a", 50, 100) == 10
    assert backoff.pause_for("a", 5, 10) is None  # too few items to judge
