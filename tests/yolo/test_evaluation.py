from __future__ import annotations

import doctest

import pytest

from processors.core.exceptions import EvaluationError
from processors.core.records import Box
from processors.yolo.evaluation import box_quality, map50


def box(x1: float, y1: float, x2: float, y2: float, conf: float = 1.0, label: str = "src") -> Box:
    return Box(label=label, confidence=conf, x1=x1, y1=y1, x2=x2, y2=y2)


A, B = box(0, 0, 10, 10), box(20, 20, 30, 30)


def test_perfect_predictions_score_one() -> None:
    assert map50([[A], [B]], [[A], [B]]) == 1.0


def test_a_false_positive_ranked_between_two_hits() -> None:
    # ranked: hit (0.9), miss (0.8), hit (0.7) -> recall .5 .5 1, precision 1 .5 2/3
    # AP = 0.5 * 1 + 0.5 * 2/3
    predictions = [[box(0, 0, 10, 10, 0.9)], [box(50, 50, 60, 60, 0.8), box(20, 20, 30, 30, 0.7)]]
    assert map50(predictions, [[A], [B]]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_the_same_ranking_with_the_false_positive_first() -> None:
    # miss (0.95), hit, hit -> precision 0, 1/2, 2/3; made monotone it is 2/3 at both recalls
    predictions = [[box(0, 0, 10, 10, 0.9), box(50, 50, 60, 60, 0.95)], [box(20, 20, 30, 30, 0.7)]]
    assert map50(predictions, [[A], [B]]) == pytest.approx(2 / 3)


def test_duplicates_are_false_positives_but_rank_after_the_hit() -> None:
    assert map50([[box(0, 0, 10, 10, 0.9), box(0, 0, 10, 10, 0.8)]], [[A]]) == 1.0
    # the duplicate cannot take the truth box twice: 1 hit of 2 truths -> AP 0.5
    assert map50([[box(0, 0, 10, 10, 0.9), box(0, 0, 10, 10, 0.8)], []], [[A], [B]]) == 0.5


def test_iou_of_exactly_one_half_counts() -> None:
    assert map50([[box(0, 0, 10, 5)]], [[A]]) == 1.0
    assert map50([[box(0, 0, 10, 4.9)]], [[A]]) == 0.0


def test_classes_are_averaged_over_those_with_truth() -> None:
    truths = [[box(0, 0, 10, 10, label="star")], [box(20, 20, 30, 30, label="trail")]]
    predictions = [[box(0, 0, 10, 10, label="star"), box(0, 0, 5, 5, label="ghost")], []]
    assert map50(predictions, truths) == 0.5
    # a right box with the wrong class is no hit
    assert map50([[box(0, 0, 10, 10, label="trail")], []], truths) == 0.0


def test_undefined_inputs_raise() -> None:
    with pytest.raises(EvaluationError, match="without truth"):
        map50([[A]], [[]])
    with pytest.raises(EvaluationError, match="2 images of predictions but 1"):
        map50([[A], [B]], [[A]])


def test_box_quality_by_hand() -> None:
    # A matched exactly; the other prediction overlaps B by 1/3 (x 20..30 vs 25..35)
    quality = box_quality([[box(0, 0, 10, 10, 0.9), box(25, 20, 35, 30, 0.5)]], [[A, B]])
    assert quality.mean_iou == pytest.approx((1 + 1 / 3) / 2)
    assert quality.recall == 0.5 and quality.precision == 0.5
    assert (quality.truths, quality.predictions) == (2, 2)


def test_box_quality_matches_one_to_one_and_ignores_labels() -> None:
    quality = box_quality([[box(0, 0, 10, 10, 0.9, "x"), box(0, 0, 10, 10, 0.8, "y")]], [[A]])
    assert quality.mean_iou == 1.0 and quality.recall == 1.0 and quality.precision == 0.5
    empty = box_quality([[], []], [[A], []])
    assert empty.mean_iou == 0.0 and empty.recall == 0.0 and empty.precision == 0.0


def test_doctests() -> None:
    from processors.yolo import evaluation

    result = doctest.testmod(evaluation, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0
