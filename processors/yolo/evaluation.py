"""Detection quality against truth boxes: mAP at IoU 0.5, and how good pseudo-labels are.

Both functions take one list of boxes per image, predictions and truths in the same image
order; boxes are :class:`processors.core.records.Box` in pixel coordinates.

:func:`map50` is the PASCAL VOC (2010+) average precision at IoU 0.5, averaged over the
classes that have at least one truth box:

- per class, predictions of all images are ranked by decreasing confidence (ties keep image
  order, then box order); each is a true positive when its best-IoU truth box of the same class
  in the same image has IoU >= 0.5 and is not yet matched, else a false positive (duplicates
  are false positives);
- AP is the area under the precision-recall curve after making precision monotone
  (all-point interpolation); a class without predictions has AP 0.

:func:`box_quality` judges boxes regardless of class (pseudo-labels are "source" while truth
may name kinds): a one-to-one greedy matching by confidence, then the mean IoU over truth
boxes (0 for an unmatched one), recall and precision at IoU 0.5.

Pure numpy, deterministic, no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import EvaluationError
from processors.core.records import Box

__all__ = ["IOU_THRESHOLD", "BoxQuality", "average_precision", "box_quality", "iou", "map50"]

IOU_THRESHOLD = 0.5


def _xyxy(boxes: Sequence[Box]) -> NDArray[np.float64]:
    if not boxes:
        return np.zeros((0, 4), dtype=np.float64)
    return np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], dtype=np.float64)


def iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pairwise IoU of ``(n, 4)`` and ``(m, 4)`` xyxy boxes; 0 where the union is empty.

    >>> float(iou(np.array([[0, 0, 2, 2.0]]), np.array([[1, 0, 3, 2.0]]))[0, 0])
    0.3333333333333333
    """
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision(recall: NDArray[np.float64], precision: NDArray[np.float64]) -> float:
    """All-point interpolated AP of a ranked list's recall and precision after each item.

    >>> average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    0.8333333333333333
    """
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([1.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _check_lengths(predictions: Sequence[object], truths: Sequence[object]) -> None:
    if len(predictions) != len(truths):
        raise EvaluationError(
            f"{len(predictions)} images of predictions but {len(truths)} of truths"
        )


def _class_ap(
    label: str, predictions: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]
) -> float:
    truth_boxes = [_xyxy([b for b in boxes if b["label"] == label]) for boxes in truths]
    n_truth = sum(len(t) for t in truth_boxes)
    ranked = [
        (-float(box["confidence"]), image, k, box)
        for image, boxes in enumerate(predictions)
        for k, box in enumerate(boxes)
        if box["label"] == label
    ]
    ranked.sort(key=lambda item: (item[0], item[1], item[2]))
    if not ranked:
        return 0.0
    matched = [np.zeros(len(t), dtype=bool) for t in truth_boxes]
    hits = np.zeros(len(ranked), dtype=np.float64)
    for n, (_, image, _, box) in enumerate(ranked):
        candidates = truth_boxes[image]
        if not len(candidates):
            continue
        overlaps = iou(_xyxy([box]), candidates)[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= IOU_THRESHOLD and not matched[image][best]:
            matched[image][best] = True
            hits[n] = 1.0
    tp = np.cumsum(hits)
    recall = tp / n_truth
    precision = tp / np.arange(1, len(ranked) + 1)
    return average_precision(recall, precision)


def map50(predictions: Sequence[Sequence[Box]], truths: Sequence[Sequence[Box]]) -> float:
    """Mean AP at IoU 0.5 over the classes with truth boxes; raises without any truth box."""
    _check_lengths(predictions, truths)
    labels = sorted({b["label"] for boxes in truths for b in boxes})
    if not labels:
        raise EvaluationError("mAP50 is undefined without truth boxes")
    return float(np.mean([_class_ap(label, predictions, truths) for label in labels]))


@dataclass(frozen=True, slots=True)
class BoxQuality:
    """``mean_iou`` over truth boxes (0 when unmatched); ``recall``/``precision`` at IoU 0.5."""

    mean_iou: float
    recall: float
    precision: float
    truths: int
    predictions: int


def box_quality(pred: Sequence[Sequence[Box]], truth: Sequence[Sequence[Box]]) -> BoxQuality:
    """Class-agnostic quality of ``pred`` boxes against ``truth``, image by image.

    Within an image, predictions in decreasing confidence each take the unmatched truth box
    they overlap most (IoU > 0); every truth box is matched at most once.
    """
    _check_lengths(pred, truth)
    ious: list[float] = []
    hits = 0
    n_pred = 0
    for predicted, true in zip(pred, truth, strict=True):
        n_pred += len(predicted)
        t = _xyxy(true)
        best = np.zeros(len(t), dtype=np.float64)
        if len(t) and predicted:
            order = sorted(range(len(predicted)), key=lambda i: -float(predicted[i]["confidence"]))
            overlaps = iou(_xyxy([predicted[i] for i in order]), t)
            taken = np.zeros(len(t), dtype=bool)
            for row in overlaps:
                row = np.where(taken, -1.0, row)
                j = int(np.argmax(row))
                if row[j] > 0:
                    taken[j] = True
                    best[j] = row[j]
        ious.extend(best.tolist())
        hits += int((best >= IOU_THRESHOLD).sum())
    n_truth = len(ious)
    return BoxQuality(
        mean_iou=float(np.mean(ious)) if ious else 0.0,
        recall=hits / n_truth if n_truth else 0.0,
        precision=hits / n_pred if n_pred else 0.0,
        truths=n_truth,
        predictions=n_pred,
    )
