"""The paired bootstrap comparison of two localizers' mAP50 on the same images."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from processors.core.exceptions import EvaluationError
from processors.core.records import Box
from processors.yolo import comparison
from processors.yolo.comparison import compare_map50
from processors.yolo.evaluation import map50


def _box(x: float, y: float, confidence: float) -> Box:
    return Box(label="source", confidence=confidence, x1=x, y1=y, x2=x + 5.0, y2=y + 5.0)


def _images(seed: int, n: int, jitter: float) -> tuple[list[list[Box]], list[list[Box]]]:
    """Truth boxes and predictions: each truth found within ``jitter`` px, plus false ones."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for _ in range(n):
        truth = [_box(*rng.uniform(0, 50, 2), 1.0) for _ in range(int(rng.integers(0, 3)))]
        found = [
            _box(t["x1"] + rng.normal(0, jitter), t["y1"] + rng.normal(0, jitter), rng.uniform())
            for t in truth
        ]
        false = [_box(*rng.uniform(0, 50, 2), rng.uniform()) for _ in range(int(rng.integers(3)))]
        truths.append(truth)
        predictions.append(found + false)
    return truths, predictions


def test_doctests() -> None:
    assert doctest.testmod(comparison).failed == 0


def test_the_point_estimates_are_map50_and_the_draws_repeat() -> None:
    truths, good = _images(1, 120, 0.5)
    _, poor = _images(2, 120, 0.0)  # boxes of other images: wrong places
    first = compare_map50(good, poor, truths, resamples=300, seed=7)
    assert first.challenger == pytest.approx(map50(good, truths))
    assert first.incumbent == pytest.approx(map50(poor, truths))
    assert first.low > 0 and first.low <= first.difference <= first.high
    assert compare_map50(good, poor, truths, resamples=300, seed=7) == first
    assert compare_map50(good, poor, truths, resamples=300, seed=8) != first


def test_a_localizer_against_itself_is_never_better() -> None:
    truths, predictions = _images(3, 60, 1.0)
    same = compare_map50(predictions, predictions, truths, resamples=200)
    assert same.low == same.high == same.difference == 0.0


def test_the_interval_narrows_with_more_images() -> None:
    """Two localizers of similar quality: on few images the interval spans zero widely (why the
    gate also needs a minimum number of held-out images); on many it narrows."""

    def width(n: int) -> float:
        truths, sharp = _images(4, n, 0.8)
        _, blurred = _images(4, n, 1.2)  # the same truths, found less precisely
        result = compare_map50(sharp, blurred, truths, resamples=500)
        assert result.low <= result.difference <= result.high
        return result.high - result.low

    assert width(8) > 2 * width(200)


def test_no_truth_box_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="without truth boxes"):
        compare_map50([[]], [[]], [[]])
