"""Which of a candidate's boxes are unlike what its source's normal images contain.

Source extraction boxes every significant source of a candidate: the anomaly, and everything a
normal image of that source has too (the central transient of a difference cutout, subtraction
residuals, field stars). Measured on the learning bench: a third of the pseudo-label boxes were
anomalies, and a detector trained on all of them learned to find sources, not anomalies. A
pseudo-label should box what made the image a candidate.

:class:`NormalBoxes` keeps, per source, the boxes source extraction finds on a sample of that
source's *normal* (served, not flagged) images, as feature vectors; :meth:`NormalBoxes.novel`
says which boxes of a candidate lie further from them than normal boxes do:

- features of a box (:func:`box_features`), all free of the image's scale: log of its long and
  short side, the logit of its confidence (monotone in its signal-to-noise), and the distance
  of its centre from the image centre as a fraction of the half-diagonal;
- each feature standardised by the reference's median and MAD;
- a box's novelty is its mean distance to its ``k`` nearest reference boxes;
- the threshold is the ``1 - alpha`` quantile of the reference boxes' own novelty, each
  measured against the others (leave one out): a box is novel when it is more unusual than all
  but ``alpha`` of normal boxes. Calibrated on the source's own data; nothing is tuned to a
  generator.

Below ``min_reference`` reference boxes nothing is judged (:meth:`novel` returns None). The
reference is bounded (the last ``capacity`` boxes of each source) and in memory: a restarted
processor rebuilds it from the stream, and judges nothing meanwhile.

Two references per source: the *served* one (unflagged images after calibration, the clean
reference) and a *provisional* one (``add(..., provisional=True)``: the source's calibration
window, whose images are not yet scored, so a few anomalies may be among them). The served
reference judges as soon as it has ``min_reference`` boxes; until then the provisional one
does, so a source's first candidates are judged from its first images, not only after
hundreds (on a real ZTF night the 1/16 sample never reached 64 boxes before the end).
:meth:`provisional` says which one would judge.

Example:
    >>> rng = np.random.default_rng(0)
    >>> normal = NormalBoxes(NoveltyParams(min_reference=50))
    >>> for _ in range(200):  # small, round, confident sources anywhere
    ...     x, y = rng.uniform(5, 55, 2)
    ...     normal.add("sky", [_box(x, y, x + 5, y + 5, 0.8)], (64, 64))
    >>> streak = _box(2.0, 30.0, 62.0, 34.0, 0.9)
    >>> star = _box(20.0, 20.0, 25.0, 25.0, 0.8)
    >>> normal.novel("sky", [streak, star], (64, 64))
    [True, False]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.records import Box

__all__ = ["NormalBoxes", "NoveltyParams", "box_features"]

_EPS = 1e-6


@dataclass(frozen=True)
class NoveltyParams:
    """``k`` nearest reference boxes (default 5); ``alpha``, the share of normal boxes that may
    be called novel (default 0.02); ``min_reference`` boxes before judging (default 64);
    ``capacity``, the most recent reference boxes kept per source (default 1024)."""

    k: int = 5
    alpha: float = 0.02
    min_reference: int = 64
    capacity: int = 1024

    def __post_init__(self) -> None:
        if self.k < 1 or not 0 < self.alpha < 1 or self.min_reference <= self.k:
            raise ValueError(
                f"novelty: k={self.k}, alpha={self.alpha}, min_reference={self.min_reference}: "
                "need k >= 1, 0 < alpha < 1, min_reference > k"
            )
        if self.capacity < self.min_reference:
            raise ValueError(f"novelty: capacity {self.capacity} < min_reference")


def _box(x1: float, y1: float, x2: float, y2: float, confidence: float) -> Box:
    return Box(label="source", confidence=confidence, x1=x1, y1=y1, x2=x2, y2=y2)


def box_features(box: Box, shape: tuple[int, int]) -> NDArray[np.float64]:
    """The four features of ``box`` in an image of ``shape`` (height, width)."""
    width = max(float(box["x2"]) - float(box["x1"]), _EPS)
    height = max(float(box["y2"]) - float(box["y1"]), _EPS)
    confidence = min(max(float(box["confidence"]), _EPS), 1 - _EPS)
    cy, cx = (shape[0] / 2.0, shape[1] / 2.0)
    bx, by = (float(box["x1"]) + float(box["x2"])) / 2, (float(box["y1"]) + float(box["y2"])) / 2
    half_diagonal = max(float(np.hypot(cx, cy)), _EPS)
    return np.array(
        [
            np.log(max(width, height)),
            np.log(min(width, height)),
            np.log(confidence / (1 - confidence)),
            float(np.hypot(bx - cx, by - cy)) / half_diagonal,
        ]
    )


class _Reference:
    """One source's reference boxes and its calibration (recomputed when boxes were added)."""

    def __init__(self, capacity: int) -> None:
        self.rows: deque[NDArray[np.float64]] = deque(maxlen=capacity)
        self._fitted: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]] | None
        self._fitted = None
        self._threshold = 0.0

    def add(self, features: NDArray[np.float64]) -> None:
        self.rows.append(features)
        self._fitted = None

    def fit(self, params: NoveltyParams) -> tuple[NDArray[np.float64], float]:
        """The standardised reference and the novelty threshold."""
        if self._fitted is None:
            data = np.stack(list(self.rows))
            center = np.median(data, axis=0)
            scale = np.median(np.abs(data - center), axis=0) * 1.4826
            scale = np.where(scale > _EPS, scale, 1.0)
            z = (data - center) / scale
            own = _knn_mean(z, z, params.k, leave_one_out=True)
            self._threshold = float(np.quantile(own, 1 - params.alpha))
            self._fitted = (z, center, scale)
        z, center, scale = self._fitted
        return z, self._threshold

    def standardise(self, features: NDArray[np.float64]) -> NDArray[np.float64]:
        assert self._fitted is not None
        _, center, scale = self._fitted
        result: NDArray[np.float64] = (features - center) / scale
        return result


def _knn_mean(
    queries: NDArray[np.float64], reference: NDArray[np.float64], k: int, leave_one_out: bool
) -> NDArray[np.float64]:
    """Mean Euclidean distance of each query to its ``k`` nearest reference rows (skipping the
    query itself, the zero distance on the diagonal, with ``leave_one_out``)."""
    d = np.sqrt(((queries[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2))
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
    k = min(k, reference.shape[0] - (1 if leave_one_out else 0))
    nearest = np.partition(d, k - 1, axis=1)[:, :k]
    result: NDArray[np.float64] = nearest.mean(axis=1)
    return result


class NormalBoxes:
    """Per-source reference of normal boxes; see the module docstring. Not thread-safe."""

    def __init__(self, params: NoveltyParams | None = None) -> None:
        self.params = params or NoveltyParams()
        self._sources: dict[str, _Reference] = {}
        self._provisional: dict[str, _Reference] = {}

    def size(self, source: str, provisional: bool = False) -> int:
        """Boxes in the source's served (or ``provisional``) reference."""
        reference = (self._provisional if provisional else self._sources).get(source)
        return 0 if reference is None else len(reference.rows)

    def add(
        self, source: str, boxes: Sequence[Box], shape: tuple[int, int], provisional: bool = False
    ) -> None:
        """The boxes of one normal image of ``source`` (shape: its height and width);
        ``provisional``: an image of its calibration window."""
        references = self._provisional if provisional else self._sources
        reference = references.setdefault(source, _Reference(self.params.capacity))
        for box in boxes:
            reference.add(box_features(box, shape))

    def provisional(self, source: str) -> bool:
        """Whether the provisional reference judges ``source`` (the served one is too small)."""
        return self.size(source) < self.params.min_reference

    def novel(self, source: str, boxes: Sequence[Box], shape: tuple[int, int]) -> list[bool] | None:
        """For each box, whether it is novel; None while the source has too few references."""
        provisional = self.provisional(source)
        if self.size(source, provisional) < self.params.min_reference:
            return None
        if not boxes:
            return []
        reference = (self._provisional if provisional else self._sources)[source]
        z, threshold = reference.fit(self.params)
        queries = reference.standardise(np.stack([box_features(b, shape) for b in boxes]))
        scores = _knn_mean(queries, z, self.params.k, leave_one_out=False)
        return [bool(s > threshold) for s in scores]
