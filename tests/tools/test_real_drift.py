"""The real-image drift bench measures what it claims to (tools/bench/real_drift.py).

Planted changes change what they should and nothing else, on real Hubble Deep Field tiles and
(where the shared data is present) real ZTF difference cutouts; streams are built in the order
they claim; and the scoring catches injected faults: a flood planted in a stream scored as
stationary is counted as a false alarm, a refine that reached past a change is counted, and a
planted flood is detected. The controller replay is the real one (policy_sim) on small
feature streams, so no backbone runs here.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from processors.controller.config import ControllerConfig
from processors.core.events import EventType
from tools.bench.plants import GAIN, GRADIENT, IMAGE_KINDS, planted, robust_std
from tools.bench.policy_sim import StreamFeatures, replay
from tools.bench.real_images import Cutout, data_dir, load_hubble, load_ztf, position_order
from tools.bench.real_metrics import first_calibrated, score_change, score_stationary
from tools.bench.real_streams import Dataset, Embedded, change_stream, stationary_stream


@pytest.fixture(scope="module")
def tiles() -> list[Cutout]:
    return load_hubble(6)


@pytest.fixture(scope="module")
def ztf() -> list[Cutout]:
    folder = data_dir("SKYLOOP_ZTF_STREAM_DIR", "ztf-stream")
    if not folder.is_dir():
        pytest.skip(f"{folder}: the shared ZTF night is absent")
    cutouts, _ = load_ztf([folder], limit=6)
    assert len(cutouts) == 6
    return cutouts


def _smooth(image: np.ndarray) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    return uniform_filter(np.nan_to_num(image.astype(np.float64)), size=(9, 9, 1))


def test_every_kind_changes_the_image_and_keeps_masks_dtype_and_determinism(
    ztf: list[Cutout], tiles: list[Cutout]
) -> None:
    masked = replace(ztf[0], pixels=ztf[0].pixels.copy())
    masked.pixels[5:8, 5:8] = np.nan
    for cutout in [masked, *ztf[1:3], *tiles[:2]]:
        for kind in IMAGE_KINDS:
            out = planted(kind, cutout)
            assert out.dtype == np.float32, kind
            assert not np.array_equal(out, cutout.pixels, equal_nan=True), kind
            assert np.array_equal(out, planted(kind, cutout), equal_nan=True), kind
            if kind != "pixel_scale":
                assert out.shape == cutout.pixels.shape, kind
                assert np.array_equal(np.isnan(out), np.isnan(cutout.pixels)), kind


def test_seeing_blurs_noise_adds_noise_and_neither_moves_the_background(
    ztf: list[Cutout],
) -> None:
    for c in ztf:
        std = robust_std(c.pixels)[0]
        seeing, noise = planted("seeing", c), planted("noise", c)
        assert np.nanstd(np.diff(seeing, axis=1)) < 0.6 * np.nanstd(np.diff(c.pixels, axis=1))
        assert 1.25 < robust_std(noise)[0] / std < 1.6  # variance doubles: x sqrt(2)
        # Large-scale structure stays: the 9x9 means move by far less than one pixel's noise.
        assert np.median(np.abs(_smooth(noise) - _smooth(c.pixels))) < 0.3 * std
        blind = planted("blind", c)
        assert robust_std(blind)[0] > robust_std(seeing)[0]


def test_gain_and_saturation_act_on_the_science_exposure_of_a_difference(
    ztf: list[Cutout],
) -> None:
    for c in ztf:
        assert c.science is not None
        finite = np.isfinite(c.pixels) & np.isfinite(c.science)
        gained = planted("gain", c)
        expected = c.pixels + (GAIN - 1) * c.science
        assert np.allclose(gained[finite], expected[finite], rtol=1e-4, atol=1e-2)
        saturated = planted("saturation", c)
        level = np.percentile(c.science[np.isfinite(c.science)], 99.0)
        below = finite & (c.science <= level)
        assert np.array_equal(saturated[below], c.pixels[below])  # untouched below the level
        assert np.all(saturated[finite] <= c.pixels[finite] + 1e-3)  # flux only lost


def test_gradient_pixel_scale_and_eight_bit_tiles(tiles: list[Cutout]) -> None:
    for c in tiles:
        ramp = planted("gradient", c).astype(np.float64) - c.pixels
        inside = (c.pixels > 0) & (c.pixels < 255) & (np.abs(ramp) > 0)
        assert inside.any()
        assert np.all(np.abs(ramp) <= GRADIENT * robust_std(c.pixels).max() / 2 + 1)
        small = planted("pixel_scale", c)
        assert small.shape == (43, 43, 3)  # 64 / 1.5, the same sky
        assert abs(float(small.mean()) - float(c.pixels.mean())) < 2.0
        for kind in IMAGE_KINDS:  # an 8-bit survey stays 8-bit
            out = planted(kind, c)
            assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out))


def _dataset(cutouts: list[Cutout], name: str, offset: float) -> Dataset:
    n = len(cutouts)
    features = np.tile(np.arange(n, dtype=np.float32)[:, None] + offset, (1, 4))
    return Dataset(name, cutouts, Embedded(features, np.arange(n, dtype=np.float64) + offset), 64.0)


def test_streams_keep_their_order_and_a_joined_survey_takes_every_second_place(
    tiles: list[Cutout],
) -> None:
    own, other = _dataset(tiles, "a", 0.0), _dataset(tiles[:2], "b", 100.0)
    joined = change_stream(own, "survey_join", 2, 6, None, 2, other)
    assert list(joined.energy) == [0, 1, 2, 100, 3, 101]
    assert joined.segments == ["before"] * 2 + ["after"] * 4
    tail = Embedded(np.full((4, 4), -1.0, np.float32), -np.arange(1.0, 5.0))
    changed = change_stream(own, "noise", 3, 6, tail, 2, None)
    assert list(changed.energy) == [0, 1, 2, -2, -3, -4]
    assert sorted(stationary_stream(own, "shuffled", 1).energy) == list(range(6))
    order = position_order(tiles, 64.0)
    strips = [int(tiles[i].dec // 64) for i in order]
    assert strips == sorted(strips)


def _gaussian_stream(n: int, flood_at: int | None, seed: int = 0) -> StreamFeatures:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 32)).astype(np.float32)
    energy = rng.normal(size=n)
    if flood_at is not None:  # a new regime: every image far out on every detector
        features[flood_at:] += 6.0
        energy[flood_at:] += 8.0
    segments = ["before"] * (flood_at or n) + ["after"] * (n - (flood_at or n))
    return StreamFeatures(features, energy, np.zeros(n, bool), segments)


def test_a_planted_flood_is_detected_and_counts_as_a_false_alarm_when_called_stationary() -> None:
    config = ControllerConfig()
    flood = replay(_gaussian_stream(512, 300), config)
    scored = score_change("g", "flood", flood, 300, config.target_fpr)
    # Detected, after the change (how fast is the policy's business, not the checker's).
    assert scored.delay is not None and scored.delay >= 0
    assert scored.false_alarms == 0
    assert scored.effect > 0.5  # the first 64 images after the change are flagged en masse
    # The injected fault: the same replay scored as if nothing changed must show its alarm.
    assert score_stationary("g", "time", flood, config.target_fpr).false_alarms >= 1


def test_stationary_scoring_and_a_refine_past_the_change_are_counted() -> None:
    config = ControllerConfig()
    calm = replay(_gaussian_stream(448, None, seed=1), config)
    stationary = score_stationary("g", "time", calm, config.target_fpr)
    assert stationary.false_alarms == 0
    assert stationary.images == 448 - first_calibrated(calm)
    assert stationary.windows[1] == stationary.images // 128
    # Inject the fault: a refine, emitted at 300, whose reference reaches past a change at
    # 280. Built from the replay's own first calibration (the same event shape the controller
    # emits), so the checker is tested on what the controller writes, whatever the policy.
    initial = next(e for e in calm.events if e["type"] == "calibration.updated")
    refine = copy.deepcopy(initial)
    refine["params"]["reason"] = "refine"
    refine["params"]["extra"]["reference_to_seq"] = "290"
    faulty = replace(calm, events=[*calm.events, refine], event_at=[*calm.event_at, 300])
    natural = score_change("g", "none", calm, 280, config.target_fpr).refine_past
    assert score_change("g", "none", faulty, 280, config.target_fpr).refine_past == natural + 1
    # A refine whose reference ends before the change, or one after the detection, is fine.
    assert score_change("g", "none", faulty, 291, config.target_fpr).refine_past == (
        score_change("g", "none", calm, 291, config.target_fpr).refine_past
    )
    detected = copy.deepcopy(initial)
    detected["type"], detected["params"] = EventType.DRIFT_DETECTED, {"reason": "injected"}
    found = replace(faulty, events=[*faulty.events, detected], event_at=[*faulty.event_at, 299])
    assert score_change("g", "none", found, 280, config.target_fpr).delay == 19
    assert score_change("g", "none", found, 280, config.target_fpr).refine_past == sum(
        1
        for e, at in zip(calm.events, calm.event_at, strict=True)
        if e["params"].get("reason") == "refine"
        and at < 299
        and int(e["params"]["extra"]["reference_to_seq"]) >= 280
    )
