"""The MMD candidate test of tools/bench/embedding_drift.py: silent on one distribution, raises
on a shifted one, and tells a stream's change from its stationary part."""

from __future__ import annotations

import argparse

import numpy as np

from tools.bench.embedding_drift import first_alarm, mmd_p


def _args(**overrides: float) -> argparse.Namespace:
    values = dict(window=32, step=16, reference=64, lag=32, alpha=0.01, consecutive=2)
    return argparse.Namespace(**{**values, "permutations": 400, **overrides})


def test_mmd_p_is_large_within_a_sample_and_small_across_a_shift() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(64, 40))
    same = rng.normal(size=(32, 40))
    shifted = rng.normal(size=(32, 40)) + 0.6  # a shift in every direction
    assert mmd_p(reference, same, 400, seed=1) > 0.05
    assert mmd_p(reference, shifted, 400, seed=1) < 0.01
    # deterministic in its seed: a rerun of the bench gives the same p
    assert mmd_p(reference, shifted, 400, seed=1) == mmd_p(reference, shifted, 400, seed=1)


def test_first_alarm_finds_the_change_and_nothing_in_a_stationary_stream() -> None:
    rng = np.random.default_rng(4)
    stationary = rng.normal(size=(320, 40))
    assert first_alarm(stationary, _args()) is None
    changed = stationary.copy()
    changed[200:] += 0.6
    at = first_alarm(changed, _args())
    assert at is not None and 200 <= at < 200 + 64
