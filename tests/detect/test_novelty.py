"""Novel boxes against a source's normal ones: calibrated on normal data, blind before it."""

from __future__ import annotations

import numpy as np
import pytest

from processors.core.records import Box
from processors.detect.novelty import NormalBoxes, NoveltyParams, box_features
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.yolo.extraction import extract_boxes
from processors.yolo.raster import record_plane


def _planes(seed: int, n: int, anomaly_rate: float) -> list[tuple[np.ndarray, dict | None]]:
    sky = SyntheticSky(name="sky", seed=seed, kind="difference", anomaly_rate=anomaly_rate)
    out = []
    for i in range(n):
        record = to_record(sky.image(i))
        out.append((record_plane(record), record["truth"]))
    return out


def _reference(seed: int = 1, n: int = 150) -> NormalBoxes:
    normal = NormalBoxes()
    for plane, _ in _planes(seed, n, 0.0):
        normal.add("sky", extract_boxes(plane), plane.shape[:2])
    return normal


def test_normal_boxes_of_new_images_are_rarely_novel() -> None:
    normal = _reference()
    assert normal.size("sky") >= normal.params.min_reference
    flags = []
    for plane, _ in _planes(2, 150, 0.0):  # other normal images of the same source
        flags += normal.novel("sky", extract_boxes(plane), plane.shape[:2]) or []
    assert len(flags) > 100
    # calibrated at alpha = 0.02 on the reference itself; a fresh sample stays near it
    assert np.mean(flags) <= 3 * normal.params.alpha, np.mean(flags)


def test_the_box_on_an_anomaly_is_novel_more_often_than_the_others() -> None:
    normal = _reference()
    on_anomaly, elsewhere = [], []
    for plane, truth in _planes(3, 80, 1.0):
        if not truth or truth.get("kind") not in ("streak", "blob", "bad_column"):
            continue
        boxes = extract_boxes(plane)
        flags = normal.novel("sky", boxes, plane.shape[:2]) or []
        for box, flag in zip(boxes, flags, strict=True):
            hit = any(_overlap(box, t) for t in truth["boxes"])
            (on_anomaly if hit else elsewhere).append(flag)
    assert len(on_anomaly) > 20 and len(elsewhere) > 5, (len(on_anomaly), len(elsewhere))
    assert np.mean(on_anomaly) > 0.5 > 0.2 > np.mean(elsewhere), (
        np.mean(on_anomaly),
        np.mean(elsewhere),
    )


def _overlap(box: Box, truth: dict) -> bool:
    return min(box["x2"], truth["x2"]) > max(box["x1"], truth["x1"]) and min(
        box["y2"], truth["y2"]
    ) > max(box["y1"], truth["y1"])


def test_nothing_is_judged_before_min_reference_and_the_reference_is_bounded() -> None:
    normal = NormalBoxes(NoveltyParams(min_reference=10, capacity=12))
    box = Box(label="source", confidence=0.8, x1=1.0, y1=1.0, x2=5.0, y2=6.0)
    normal.add("sky", [box] * 9, (64, 64))
    assert normal.novel("sky", [box], (64, 64)) is None
    assert normal.novel("other", [box], (64, 64)) is None
    normal.add("sky", [box] * 9, (64, 64))
    assert normal.size("sky") == 12
    assert normal.novel("sky", [], (64, 64)) == []
    assert normal.novel("sky", [box], (64, 64)) == [False]


def test_features_do_not_depend_on_where_the_long_side_lies() -> None:
    wide = Box(label="source", confidence=0.7, x1=10.0, y1=30.0, x2=50.0, y2=34.0)
    tall = Box(label="source", confidence=0.7, x1=30.0, y1=10.0, x2=34.0, y2=50.0)
    assert np.allclose(box_features(wide, (64, 64)), box_features(tall, (64, 64)))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        NoveltyParams(alpha=0.0)
    with pytest.raises(ValueError, match="capacity"):
        NoveltyParams(min_reference=100, capacity=50)


def test_a_provisional_reference_judges_until_the_served_one_is_full() -> None:
    box = {"label": "source", "confidence": 0.8, "x1": 10.0, "y1": 10.0, "x2": 15.0, "y2": 15.0}
    streak = {**box, "x1": 2.0, "x2": 62.0, "y2": 14.0}
    normal = NormalBoxes(NoveltyParams(min_reference=10))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.uniform(5, 50, 2)
        shifted = {**box, "x1": x, "x2": x + 5.0, "y1": y, "y2": y + 5.0}
        normal.add("sky", [shifted], (64, 64), provisional=True)  # type: ignore[list-item]
    assert normal.provisional("sky") and normal.size("sky", provisional=True) == 20
    assert normal.novel("sky", [streak, box], (64, 64)) == [True, False]  # type: ignore[list-item]
    normal.add("sky", [streak] * 10, (64, 64))  # type: ignore[list-item]
    assert not normal.provisional("sky")  # the served reference judges now: streaks are normal
    assert normal.novel("sky", [streak], (64, 64)) == [False]  # type: ignore[list-item]
