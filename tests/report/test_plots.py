from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processors.core.exceptions import BadImageError
from processors.core.imaging import encode_fits, encode_png
from processors.report.plots import plot_threshold_history, stretch, thumbnail_png


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
