"""The controller under a change: caught by the sequential test, never absorbed by a refine.

Real scoring decisions (decide + OODEnsemble) and the real controller, in-process
(``tools/bench/policy_sim.replay``), on synthetic feature streams (64-d, gamma like post-ReLU
features); the change and its onset are known, nothing is tuned to them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from processors.controller.controller import ControllerConfig
from tools.bench.policy_sim import Replay, StreamFeatures
from tools.bench.policy_sim import replay as simulate

D = 64
REPO_ROOT = Path(__file__).resolve().parents[2]


def blinded(n: int, onset: int, seed: int) -> StreamFeatures:
    """From ``onset`` every image looks like the typical one (features shrink to the mean):
    the distance detectors go blind and flags collapse."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(n, D)).astype(np.float32)
    x[onset:] = 2.0 + 0.4 * (x[onset:] - 2.0)
    segments = ["before"] * onset + ["blind"] * (n - onset)
    return StreamFeatures(x, rng.normal(-8.0, 0.5, n), np.zeros(n, bool), segments)


def shifted(n: int, onset: int, seed: int, shift: float) -> StreamFeatures:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.0, size=(n, D)).astype(np.float32)
    x[onset:, : D // 4] += shift
    segments = ["before"] * onset + ["shifted"] * (n - onset)
    return StreamFeatures(x, rng.normal(-8.0, 0.5, n), np.zeros(n, bool), segments)


def drifts(result: Replay) -> list[tuple[int, dict]]:  # type: ignore[type-arg]
    return [
        (at, e)
        for e, at in zip(result.events, result.event_at, strict=True)
        if e["type"] == "drift.detected"
    ]


def refines_before(result: Replay, at: int) -> list[int]:
    """The last seq of each refine's reference emitted before stream index ``at``."""
    return [
        int(e["params"]["extra"]["reference_to_seq"])
        for e, i in zip(result.events, result.event_at, strict=True)
        if e["type"] == "calibration.updated" and e["params"]["reason"] == "refine" and i < at
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_a_blinded_detector_at_200_is_caught_within_96_images(seed: int) -> None:
    onset = 200
    result = simulate(blinded(700, onset, seed), ControllerConfig())
    found = drifts(result)
    assert found, "no drift raised"
    at, drift = found[0]
    assert onset <= at <= onset + 96, at
    assert drift["params"]["reason"].startswith("sequential")
    assert all(to < onset for to in refines_before(result, at))
    recalibration = next(
        e
        for e in result.events
        if e["type"] == "calibration.updated" and drift["event_id"] in e["caused_by"]
    )
    assert int(recalibration["params"]["extra"]["reference_from_seq"]) >= onset - 8


@pytest.mark.parametrize("shift", [1.0, 1.5])
def test_no_refine_reaches_past_an_onset_before_it_is_raised(shift: float) -> None:
    """A subtle shift (1.0: the window tests need about 300 images) and a plain one."""
    onset = 600
    result = simulate(shifted(1400, onset, 3, shift), ControllerConfig())
    found = drifts(result)
    assert found, "no drift raised"
    at = found[0][0]
    assert all(to < onset for to in refines_before(result, at)), refines_before(result, at)


def test_the_real_ztf_night_raises_no_drift() -> None:
    """764 real alerts in time order (their "normal" drifts through the night) from features
    cached by ``tools/bench/policy_sim.py`` (the backbone takes minutes on a CPU); skips where
    neither the alerts nor a cache are present."""
    from tools.bench.policy_sim import embed_stream

    stream_dir = Path(
        os.environ.get("SKYLOOP_ZTF_STREAM_DIR") or REPO_ROOT.parent / "shared/data/ztf-stream"
    )
    cache = Path(os.environ.get("SKYLOOP_SIM_CACHE", "/nonexistent"))
    if not stream_dir.is_dir() or not cache.is_dir():
        pytest.skip("needs the ZTF night and $SKYLOOP_SIM_CACHE with its embedded features")
    stream = embed_stream(f"ztf:{stream_dir}", 800, cache)
    for lag in (1, 3):
        result = simulate(stream, ControllerConfig(), lag=lag)
        assert not drifts(result)
