from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processors.core.exceptions import BadImageError
from processors.core.imaging import encode_fits, encode_png
from processors.report.plots import (
    TrajectoryPoint,
    draw_boxes,
    plot_map50_trajectory,
    plot_threshold_history,
    stretch,
    thumbnail_png,
)


def _open(png: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def test_fits_thumbnail_is_stretched_and_scaled() -> None:
    flux = np.full((20, 30), 100.0, dtype=np.float32)
    flux[5:8, 5:8] = 5000.0
    flux[0, 0] = np.nan
    img = _open(thumbnail_png(encode_fits(flux), "fits", size=60))
    assert img.size == (60, 40) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels[12, 12] == 255 and pixels[30, 50] == 0  # source bright, background dark
    assert pixels[0, 0] == 0  # NaN shown black


def test_rgb_png_keeps_colour_and_is_downscaled() -> None:
    rgb = np.zeros((200, 100, 3), dtype=np.uint8)
    rgb[:, :, 0] = np.linspace(0, 255, 100, dtype=np.uint8)
    img = _open(thumbnail_png(encode_png(rgb), "png"))
    assert img.size == (48, 96) and img.mode == "RGB"


def test_asinh_lifts_faint_values() -> None:
    ramp = np.linspace(0.0, 1.0, 101).reshape(1, -1)
    assert stretch(ramp)[0, 10] > 2 * stretch(ramp, asinh=False)[0, 10]
    assert stretch(np.full((3, 3), 7.0)).max() == 0
    assert stretch(np.full((3, 3), np.nan)).max() == 0


def test_undecodable_pixels_raise_bad_image() -> None:
    with pytest.raises(BadImageError):
        thumbnail_png(b"not an image", "png")


def test_threshold_history_is_a_png_step_plot(tmp_path: Path) -> None:
    t0 = datetime(2026, 12, 1, 8, tzinfo=UTC)
    series = {
        "sky · m1": [(t0, 0.9), (t0 + timedelta(hours=1), 0.87), (t0 + timedelta(hours=2), 0.93)],
        "ztf · m1": [(t0 + timedelta(minutes=30), 0.8)],
        "idle · m1": [],  # a series without points is left out, not an error
    }
    path = plot_threshold_history(series, tmp_path / "thresholds.png")
    assert path == tmp_path / "thresholds.png"
    img = _open(path.read_bytes())
    assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


def test_threshold_history_of_one_instant_still_draws(tmp_path: Path) -> None:
    at = datetime(2026, 12, 1, 8, tzinfo=UTC)
    path = plot_threshold_history({"sky · m1": [(at, 0.9)]}, tmp_path / "one.png")
    assert path is not None and _open(path.read_bytes()).format == "PNG"


def test_empty_threshold_history_writes_no_file(tmp_path: Path) -> None:
    assert plot_threshold_history({}, tmp_path / "none.png") is None
    assert plot_threshold_history({"sky · m1": []}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def _box(x1: float, y1: float, x2: float, y2: float, confidence: float = 0.9) -> dict:
    return {"label": "source", "confidence": confidence, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def test_boxes_are_drawn_scaled_and_clipped() -> None:
    grey = Image.fromarray(np.full((80, 80), 60, dtype=np.uint8))
    drawn = np.asarray(draw_boxes(grey, [_box(5, 10, 10, 15), _box(30, 30, 99, 99)], scale=2.0))
    assert drawn.shape == (80, 80, 3)
    green = (drawn == (0, 255, 0)).all(axis=2)
    # the first box, at twice its image coordinates: (10, 20)-(20, 30), outlined, hollow
    assert green[30, 10:21].all() and green[20:31, 10].all() and green[20:31, 20].all()
    assert not green[25, 15]
    # the second runs off the thumbnail: cut at its edges, in the second colour
    gold = (drawn == (255, 215, 0)).all(axis=2)
    assert gold[60:80, 79].all() and gold[79, 60:80].all() and gold[60, 60:80].all()
    assert not gold[70, 70]
    # each label sits above its box, in its colour (anti-aliased) on a black plate
    above = drawn[8:20, 10:60].astype(int)
    assert (above == 0).all(axis=2).any()
    assert ((above[..., 1] > 150) & (above[..., 0] < 100)).any()
    assert ((drawn[48:60, 20:80, 2].astype(int) < 100) & (drawn[48:60, 20:80, 0] > 150)).any()


def test_boxes_outside_the_image_or_not_finite_are_not_drawn() -> None:
    grey = Image.fromarray(np.full((20, 20), 60, dtype=np.uint8))
    boxes = [_box(30, 30, 40, 40), _box(-9, -9, -2, -2), _box(float("nan"), 1, 5, 5)]
    drawn = np.asarray(draw_boxes(grey, boxes))
    assert (drawn == 60).all()


def test_fits_thumbnail_with_a_box_differs_only_around_it() -> None:
    flux = np.full((24, 24), 100.0, dtype=np.float32)
    flux[10:14, 10:14] = 5000.0
    plain = np.asarray(_open(thumbnail_png(encode_fits(flux), "fits")).convert("RGB"))
    boxed = thumbnail_png(encode_fits(flux), "fits", boxes=[_box(9, 9, 15, 15, 0.81)])
    drawn = np.asarray(_open(boxed))
    assert drawn.shape == plain.shape == (96, 96, 3)
    changed = (drawn != plain).any(axis=2)
    assert changed[60, 36:61].all()  # the bottom edge, 4 thumbnail pixels per image pixel
    assert not changed[62:, :].any() and not changed[:, :35].any()  # below and left of it


def test_map50_trajectory_plots_measured_cycles(tmp_path: Path) -> None:
    points = [
        TrajectoryPoint(1, "yolo@1", 0.4, "passed"),
        TrajectoryPoint(2, "yolo@2", None, "-"),
        TrajectoryPoint(3, "yolo@3", 0.2, "failed"),
    ]
    path = plot_map50_trajectory(points, tmp_path / "map50.png")
    assert path is not None
    img = _open(path.read_bytes())
    assert img.format == "PNG" and img.size[0] > 300
    unmeasured = [TrajectoryPoint(1, "yolo@1", None, "-")]
    assert plot_map50_trajectory(unmeasured, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_crowded_labels_keep_the_most_confident() -> None:
    grey = Image.fromarray(np.full((80, 80), 60, dtype=np.uint8))
    # two boxes side by side at the same height: their labels would overlap
    boxes = [_box(20, 40, 30, 50, 0.55), _box(24, 40, 34, 50, 0.93)]
    drawn = np.asarray(draw_boxes(grey, boxes)).astype(int)
    above = drawn[26:40, :]
    green = (above[..., 1] > 150) & (above[..., 0] < 100)  # the first box's colour
    gold = (above[..., 0] > 150) & (above[..., 2] < 100)  # the second's, more confident
    assert gold.any() and not green.any()
    # both boxes are outlined all the same
    assert (drawn[50, 20:31] == (0, 255, 0)).all(axis=1).any()
    assert (drawn[40:51, 34] == (255, 215, 0)).all()
