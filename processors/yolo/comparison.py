"""Two localizers on the same images: the mAP50 difference and its paired bootstrap interval.

A challenger detector replaces what serves (the production detector, or source extraction
before any) only when it is better *on the same images*, by more than the sampling noise of a
small held-out set: on 5 images an mAP50 of 0.5 says next to nothing. :func:`compare_map50`
measures both localizers' class-agnostic mAP50 (:func:`~processors.yolo.evaluation.map50`, every
box as ``source``) on the same images and resamples the *images* with replacement
(``resamples`` times, the same draw for both: a paired bootstrap), recomputing both mAP50s on
each resample; the interval is the percentile interval of the differences at ``level``.

Invariants: a pure, deterministic function of its inputs and ``seed`` (numpy's PCG64); every
resample uses the same images for both localizers; with every image drawn once the statistic
is exactly :func:`map50` (a box's hit depends on its own image only, so a resample is a weighting
of the images' ranked boxes); resamples that contain no truth box are left out (mAP50 is
undefined there). ``low > 0`` means the challenger is better than the incumbent beyond the
noise at that level; ``high < 0`` that it is worse.

Example:
    >>> from processors.core.records import Box
    >>> def b(x, c=0.9):
    ...     return Box(label="source", confidence=c, x1=x, y1=0.0, x2=x + 4.0, y2=4.0)
    >>> truths = [[b(0.0)] for _ in range(40)]
    >>> good = [[b(0.0)] for _ in range(40)]
    >>> poor = [[b(20.0, 0.5)] if i % 2 else [b(0.0)] for i in range(40)]  # half missed
    >>> result = compare_map50(good, poor, truths, resamples=200, seed=0)
    >>> round(result.challenger, 3), round(result.incumbent, 3), result.low > 0
    (1.0, 0.5, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import EvaluationError
from processors.core.records import Box
from processors.yolo.evaluation import IOU_THRESHOLD, average_precision, iou

__all__ = ["Comparison", "compare_map50", "ranked_hits"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """Challenger and incumbent mAP50 on ``images`` images, their difference and its interval."""

    images: int
    challenger: float
    incumbent: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def difference(self) -> float:
        return self.challenger - self.incumbent

    def evidence(self, prefix: str = "") -> dict[str, float]:
        """The numbers, for an event's evidence (``prefix`` before each name)."""
        return {
            f"{prefix}held_out_images": float(self.images),
            f"{prefix}challenger_map50": self.challenger,
            f"{prefix}incumbent_map50": self.incumbent,
            f"{prefix}map50_diff": self.difference,
            f"{prefix}map50_diff_low": self.low,
            f"{prefix}map50_diff_high": self.high,
            f"{prefix}interval_level": self.level,
            f"{prefix}bootstrap_resamples": float(self.resamples),
        }


def _xyxy(boxes: Sequence[Box]) -> NDArray[np.float64]:
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    return np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], dtype=np.float64)


def ranked_hits(
    predictions: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Every predicted box ranked as :func:`map50` ranks them (decreasing confidence, then
    image, then box order), class-agnostic: its hit (0/1) and its image; plus each image's
    number of truth boxes. A box's hit depends only on the boxes of its own image ranked
    before it, so any weighting of images reuses this ranking."""
    if len(predictions) != len(truths):
        raise EvaluationError(f"{len(predictions)} images of predictions but {len(truths)}")
    ranked = sorted(
        (-float(box["confidence"]), image, k)
        for image, boxes in enumerate(predictions)
        for k, box in enumerate(boxes)
    )
    truth_boxes = [_xyxy(t) for t in truths]
    matched = [np.zeros(len(t), dtype=bool) for t in truth_boxes]
    hits = np.zeros(len(ranked), dtype=np.float64)
    images = np.zeros(len(ranked), dtype=np.int64)
    for n, (_, image, k) in enumerate(ranked):
        images[n] = image
        candidates = truth_boxes[image]
        if not len(candidates):
            continue
        overlaps = iou(_xyxy([predictions[image][k]]), candidates)[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= IOU_THRESHOLD and not matched[image][best]:
            matched[image][best] = True
            hits[n] = 1.0
    counts = np.array([len(t) for t in truth_boxes], dtype=np.int64)
    return hits, images, counts


def _weighted_ap(
    hits: NDArray[np.float64], images: NDArray[np.int64], weights: NDArray[np.int64], n_truth: int
) -> float:
    """mAP50 when image ``i`` is drawn ``weights[i]`` times (its boxes repeated in place)."""
    repeat = weights[images]
    drawn = np.repeat(hits, repeat)
    if not len(drawn):
        return 0.0
    tp = np.cumsum(drawn)
    return average_precision(tp / n_truth, tp / np.arange(1, len(drawn) + 1))


def compare_map50(
    challenger: Sequence[Sequence[Box]],
    incumbent: Sequence[Sequence[Box]],
    truths: Sequence[Sequence[Box]],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """The paired bootstrap comparison (see the module docstring); raises without truth boxes."""
    if not 0 < level < 1 or resamples < 1:
        raise EvaluationError(f"level {level} must be in (0, 1) and resamples {resamples} >= 1")
    n = len(truths)
    a_hits, a_images, counts = ranked_hits(challenger, truths)
    b_hits, b_images, _ = ranked_hits(incumbent, truths)
    if counts.sum() == 0:
        raise EvaluationError("mAP50 is undefined without truth boxes")
    ones = np.ones(n, dtype=np.int64)
    a_map = _weighted_ap(a_hits, a_images, ones, int(counts.sum()))
    b_map = _weighted_ap(b_hits, b_images, ones, int(counts.sum()))
    rng = np.random.default_rng(seed)
    diffs: list[float] = []
    for _ in range(resamples):
        weights = np.bincount(rng.integers(0, n, size=n), minlength=n)
        n_truth = int((weights * counts).sum())
        if n_truth == 0:
            continue
        diffs.append(
            _weighted_ap(a_hits, a_images, weights, n_truth)
            - _weighted_ap(b_hits, b_images, weights, n_truth)
        )
    if not diffs:
        raise EvaluationError("no bootstrap resample holds a truth box")
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(diffs), [tail, 1 - tail])
    return Comparison(n, a_map, b_map, float(low), float(high), level, len(diffs))
