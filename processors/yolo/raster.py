"""One 2-D plane per image, and the one 8-bit stretch every detector input goes through.

Localization, dataset writing and YOLO inference must see an image the same way, or a detector
trained on one rendering is evaluated on another. This module is that single rendering:

- :func:`as_plane` turns a ``(h, w)``, ``(bands, h, w)`` or ``(h, w, bands)`` array (the last is
  what :func:`processors.core.imaging.decode_image` returns) into a float32 ``(h, w)`` plane:
  the mean of the finite band values at each pixel, NaN where no band is finite.
- :func:`stretch_to_uint8` maps a plane to ``(h, w, 3)`` uint8 with an asinh stretch anchored on
  the plane's own robust background (median) and noise (MAD), so faint sources stay visible
  and a bright one does not flatten the rest. It depends on nothing but the pixels: equal
  inputs give equal bytes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError
from processors.core.imaging import decode_image
from processors.core.records import ImageRecord

__all__ = ["Layout", "as_plane", "record_plane", "robust_background", "stretch_to_uint8"]

Layout = Literal["auto", "hw", "chw", "hwc"]
_BAND_COUNTS = (1, 2, 3, 4)
# Noise multiples below the background where the stretch starts, and the asinh softening:
# pixels within a few sigma of the background stay in the linear part of the curve.
_FLOOR_SIGMA = 2.0
_SOFTENING_SIGMA = 3.0


def _layout_of(shape: tuple[int, ...]) -> Literal["hw", "chw", "hwc"]:
    if len(shape) == 2:
        return "hw"
    if len(shape) != 3:
        raise BadImageError(f"an image must be 2-D or 3-D; got shape {shape}")
    first, last = shape[0] in _BAND_COUNTS, shape[2] in _BAND_COUNTS
    if first and not last:
        return "chw"
    if last and not first:
        return "hwc"
    raise BadImageError(
        f"cannot tell bands from pixels in shape {shape}; pass layout='chw' or layout='hwc'"
    )


def as_plane(image: NDArray[np.generic], layout: Layout = "auto") -> NDArray[np.float32]:
    """The ``(h, w)`` float32 plane of ``image``: the mean of its finite bands at each pixel.

    ``layout="auto"`` reads 3-D arrays as bands-first when only the first axis has 1-4 entries
    and bands-last when only the last has; an ambiguous shape raises :class:`BadImageError`.
    """
    array = np.asarray(image, dtype=np.float32)
    kind = _layout_of(array.shape) if layout == "auto" else layout
    if kind == "hw":
        if array.ndim != 2:
            raise BadImageError(f"layout 'hw' needs a 2-D array; got shape {array.shape}")
        plane = array
    else:
        if array.ndim != 3:
            raise BadImageError(f"layout {kind!r} needs a 3-D array; got shape {array.shape}")
        bands_last = array if kind == "hwc" else np.moveaxis(array, 0, -1)
        finite = np.isfinite(bands_last)
        counts = finite.sum(axis=-1)
        sums = np.where(finite, bands_last, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            plane = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if min(plane.shape) < 2:
        raise BadImageError(f"degenerate image of shape {plane.shape}")
    if not np.isfinite(plane).any():
        raise BadImageError("image has no finite pixel values")
    return np.ascontiguousarray(plane, dtype=np.float32)


def record_plane(record: ImageRecord) -> NDArray[np.float32]:
    """Decode an ImageRecord's pixels (checked against its declared shape) to one plane."""
    return as_plane(decode_image(record), layout="hwc")


def robust_background(plane: NDArray[np.float32]) -> tuple[float, float]:
    """``(median, sigma)`` of the finite pixels, sigma from the median absolute deviation.

    Falls back to the standard deviation when more than half the pixels are equal (MAD 0);
    sigma is 0 only for a constant image.
    """
    values = plane[np.isfinite(plane)].astype(np.float64)
    median = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - median)))
    if sigma <= 0.0:
        sigma = float(values.std())
    return median, sigma


def stretch_to_uint8(image: NDArray[np.generic], layout: Layout = "auto") -> NDArray[np.uint8]:
    """Render ``image`` as ``(h, w, 3)`` uint8 (grey replicated) with a robust asinh stretch.

    0 is ``median - 2 sigma`` and below, 255 the brightest finite pixel; non-finite pixels are 0.
    A constant image renders as all 0.
    """
    plane = as_plane(image, layout).astype(np.float64)
    median, sigma = robust_background(plane.astype(np.float32))
    finite = np.isfinite(plane)
    if sigma <= 0.0:
        grey = np.zeros(plane.shape, dtype=np.uint8)
    else:
        floor = median - _FLOOR_SIGMA * sigma
        soft = _SOFTENING_SIGMA * sigma
        top = float(plane[finite].max())
        span = np.arcsinh(max(top - floor, soft) / soft)
        shifted = np.clip(np.where(finite, plane, floor) - floor, 0.0, None)
        scaled = np.arcsinh(shifted / soft) / span
        grey = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
