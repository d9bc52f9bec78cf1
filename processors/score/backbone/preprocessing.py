"""Backbone preprocessing: survey cutouts of any size and range to normalised model inputs.

What it consumes: decoded pixels, ``float32`` arrays ``(h, w, bands)`` (or ``(h, w)``) of any
size and dynamic range (FITS cutouts: negative values and NaNs possible; 8-bit PNG/JPEG decoded
to 0..255).

Preprocessing, per image (documented because every scorer must agree on it):
  1. non-finite pixels are replaced by the median of the image's finite pixels (an image with no
     finite pixel raises :class:`BadImageError`);
  2. bands: 1 is replicated to 3; 2 becomes ``(b0, (b0 + b1) / 2, b1)``; 3 is kept; more than 3
     keeps the first three (RGBA drops its alpha);
  3. a robust linear stretch over all three bands jointly (keeps colour balance): the 0.5 and
     99.5 percentiles map to 0 and 1, then clip to ``[0, 1]`` (``stretch="asinh"`` applies
     ``asinh(10 x) / asinh(10)`` after it, lifting faint structure); a constant image (no spread
     between the percentiles) becomes mid-grey 0.5;
  4. the whole image (no crop; non-square images are squeezed) is resized to
     ``image_size x image_size`` with bilinear interpolation, antialiased when shrinking;
  5. normalised with the model's own mean/std (ImageNet statistics for timm ImageNet models;
     0.5/0.5 for the TF-ported EfficientNet-Lite weights and for ViT).

Invariant: :func:`preprocess_batch` row ``i`` equals :func:`preprocess_image` of image ``i``
bit for bit; both are pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError

__all__ = ["preprocess_batch", "preprocess_image"]

_LOW_PERCENTILE, _HIGH_PERCENTILE = 0.5, 99.5
_ASINH_SOFTENING = 10.0
_STATS_PIXELS = 1 << 18


def _robust_unit_range(image: NDArray[Any]) -> NDArray[np.float32]:
    """Steps 1-3 of the module docstring: ``(h, w, bands)`` in, ``(h, w, 1 or 3)`` in [0, 1] out.

    A single band stays single (the caller replicates it after resizing, which is cheaper and
    equal). Images over ``_STATS_PIXELS`` pixels estimate the median and percentiles on the
    regular subgrid ``[::s, ::s]`` that brings them under it (deterministic).
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise BadImageError(f"expected an (h, w) or (h, w, bands) array, got shape {array.shape}")
    h, w, bands = array.shape
    if h < 1 or w < 1 or bands < 1:
        raise BadImageError(f"empty image of shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise BadImageError(f"pixels must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if bands == 2:
        array = np.stack([array[..., 0], 0.5 * (array[..., 0] + array[..., 1]), array[..., 1]], 2)
    elif bands > 3:
        array = array[:, :, :3]
    step = max(1, math.ceil(math.sqrt(h * w / _STATS_PIXELS)))
    finite = np.isfinite(array)
    if not finite.all():
        values = array[::step, ::step][finite[::step, ::step]]
        if values.size == 0:
            values = array[finite]
        if values.size == 0:
            raise BadImageError("image has no finite pixel values")
        array = np.where(finite, array, np.float32(np.median(values)))
    lo, hi = np.percentile(array[::step, ::step], [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(array.min()), float(array.max())
    if not hi > lo:
        return np.full(array.shape, 0.5, dtype=np.float32)
    scaled = np.clip((array - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return scaled.astype(np.float32, copy=False)


def preprocess_image(
    image: NDArray[Any],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    stretch: Literal["linear", "asinh"] = "linear",
) -> torch.Tensor:
    """One image to a normalised ``(3, image_size, image_size)`` float32 tensor.

    Pure and deterministic; raises :class:`BadImageError` for a non-2/3-D, empty, non-numeric or
    all-non-finite array. Steps in the module docstring.
    """
    unit = _robust_unit_range(image)
    if stretch == "asinh":
        unit = (np.arcsinh(_ASINH_SOFTENING * unit) / np.arcsinh(_ASINH_SOFTENING)).astype(
            np.float32
        )
    tensor = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None]
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = F.interpolate(
            tensor,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor[0] - mean_t) / std_t


def _unit_range_of_stack(stack: NDArray[np.float32]) -> NDArray[np.float32]:
    """:func:`_robust_unit_range` of every image of an ``(m, h, w, bands)`` float32 stack.

    Row ``i`` of the result equals ``_robust_unit_range(stack[i])`` bit for bit: the common case
    (all pixels finite, percentiles spread) runs the same float32 operations on the whole stack;
    rows with non-finite pixels or a degenerate spread take the single-image path.
    """
    m, h, w, bands = stack.shape
    if bands == 2:
        stack = np.stack([stack[..., 0], 0.5 * (stack[..., 0] + stack[..., 1]), stack[..., 1]], 3)
    elif bands > 3:
        stack = stack[..., :3]
    out = np.empty(stack.shape, dtype=np.float32)
    step = max(1, math.ceil(math.sqrt(h * w / _STATS_PIXELS)))
    plain = np.asarray(np.isfinite(stack).reshape(m, -1).all(axis=1))
    if plain.any():
        sample = stack if plain.all() else stack[plain]
        quantiles = np.percentile(
            sample[:, ::step, ::step].reshape(sample.shape[0], -1),
            [_LOW_PERCENTILE, _HIGH_PERCENTILE],
            axis=1,
        )
        lo = np.zeros(m, dtype=quantiles.dtype)
        hi = np.ones(m, dtype=quantiles.dtype)
        lo[plain], hi[plain] = quantiles
        plain = np.asarray(plain & (hi > lo))
    if plain.any():
        shape = (-1, 1, 1, 1)
        lo32 = lo.astype(np.float32).reshape(shape)
        span32 = np.where(plain, hi - lo, 1).astype(np.float32).reshape(shape)
        # Rows taking the single-image path below are overwritten; computing them is harmless.
        np.clip((stack - lo32) / span32, 0.0, 1.0, out=out)
    for row in np.flatnonzero(~plain):
        out[row] = _robust_unit_range(stack[row])
    return out


def preprocess_batch(
    images: Sequence[NDArray[Any]],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    stretch: Literal["linear", "asinh"] = "linear",
) -> torch.Tensor:
    """Many images to a normalised ``(n, 3, image_size, image_size)`` float32 tensor.

    Row ``i`` equals ``preprocess_image(images[i], ...)`` (tested bit for bit); images of one
    shape go through each step together (one percentile call, one resize), which is what makes
    survey cutouts (all of one size) cheap. Raises :class:`BadImageError` naming the index of
    the first image that cannot be used.
    """
    try:
        return _preprocess_groups(images, image_size, mean, std, stretch)
    except BadImageError:
        for index, image in enumerate(images):  # name the first culprit, as one by one would
            try:
                _robust_unit_range(image)
            except BadImageError as exc:
                raise BadImageError(f"image {index}: {exc}") from exc
        raise


def _preprocess_groups(
    images: Sequence[NDArray[Any]],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    stretch: Literal["linear", "asinh"],
) -> torch.Tensor:
    groups: dict[tuple[int, ...], list[int]] = {}
    arrays: list[NDArray[np.float32]] = []
    for index, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if not (
            array.ndim == 3
            and min(array.shape) >= 1
            and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_)
        ):
            raise BadImageError(f"image {index} is not an (h, w, bands) numeric array")
        arrays.append(array.astype(np.float32, copy=False))
        groups.setdefault(array.shape, []).append(index)
    out = torch.empty(len(arrays), 3, size, size)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    for rows in groups.values():
        unit = _unit_range_of_stack(np.stack([arrays[i] for i in rows]))
        if stretch == "asinh":
            unit = (np.arcsinh(_ASINH_SOFTENING * unit) / np.arcsinh(_ASINH_SOFTENING)).astype(
                np.float32
            )
        tensor = torch.from_numpy(np.ascontiguousarray(unit.transpose(0, 3, 1, 2)))
        if tensor.shape[-2:] != (size, size):
            tensor = F.interpolate(
                tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        if len(rows) == len(arrays):  # the usual case: one shape, normalise in place
            torch.sub(tensor, mean_t, out=out).div_(std_t)
        else:
            out[rows] = (tensor - mean_t) / std_t
    return out
