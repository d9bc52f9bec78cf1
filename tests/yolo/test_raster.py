from __future__ import annotations

import numpy as np
import pytest

from processors.core.exceptions import BadImageError
from processors.core.records import ImageRecord
from processors.yolo.raster import as_plane, record_plane, stretch_to_uint8
from tests.detect.blobs import blob_image, fits_record


def test_plane_averages_finite_bands_in_any_layout() -> None:
    hwc = np.zeros((8, 10, 3), dtype=np.float32)
    hwc[..., 0], hwc[..., 1], hwc[..., 2] = 1.0, 2.0, np.nan
    hwc[0, 0, :] = np.nan
    plane = as_plane(hwc)
    assert plane.shape == (8, 10)
    assert plane[1, 1] == pytest.approx(1.5)
    assert np.isnan(plane[0, 0])
    np.testing.assert_array_equal(as_plane(np.moveaxis(hwc, -1, 0)), plane)


def test_plane_refuses_ambiguous_and_empty_images() -> None:
    with pytest.raises(BadImageError, match="layout"):
        as_plane(np.zeros((3, 8, 3)))
    assert as_plane(np.zeros((3, 8, 3)), layout="hwc").shape == (3, 8)
    with pytest.raises(BadImageError, match="no finite"):
        as_plane(np.full((8, 8), np.nan))
    with pytest.raises(BadImageError, match="2-D or 3-D"):
        as_plane(np.zeros((2, 2, 2, 2)))


def test_stretch_is_deterministic_monotone_and_grey() -> None:
    image, _ = blob_image(3, size=64)
    first, second = stretch_to_uint8(image), stretch_to_uint8(image.copy())
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[..., 0], first[..., 2])
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(first[..., 0].ravel()[order].astype(int)) >= 0)
    assert first.max() == 255 and first.min() == 0


def test_stretch_of_constant_or_nan_pixels() -> None:
    assert stretch_to_uint8(np.full((16, 16), 7.0)).max() == 0
    image, _ = blob_image(4, size=32)
    image[0, :] = np.nan
    assert (stretch_to_uint8(image)[0] == 0).all()


def test_record_plane_decodes_and_checks_the_declared_shape() -> None:
    image, _ = blob_image(5, size=32)
    record = fits_record(image)
    np.testing.assert_allclose(record_plane(record), image)
    with pytest.raises(BadImageError, match="record says"):
        record_plane(ImageRecord(**{**record, "width": 31}))  # type: ignore[typeddict-item]
