"""Planted instrument changes for the real-image drift bench: what changes, and by how much.

Each kind is a transform of one real cutout (:class:`tools.bench.real_images.Cutout`) applied
to every image from the change index on. Magnitudes are stated in physical terms and fixed
here, before any detector was run on them (they are not tuned to make a detector look good):

==============  ==================================================================================
``seeing``      the PSF widens: Gaussian blur of sigma ``SEEING_SIGMA`` = 1.5 px (ZTF: 1"/px, so
                a 2" FWHM seeing becomes ~4.1")
``noise``       sky noise doubles in variance: Gaussian noise of ``NOISE_SIGMA`` = 1.0 x the
                image's robust std (1.4826 x MAD, per band)
``blind``       ``seeing`` and ``noise`` together: faint structure drowns (flags collapse)
``gain``        the exposure's gain rises by ``GAIN`` = 1.2 (a 0.2 mag zero-point change) that
                the reference does not follow: a difference cutout gains 0.2 x its science stamp
``gradient``    a linear background ramp of ``GRADIENT`` = 2 x the robust std peak to peak across
                the cutout, in a direction drawn per image (scattered light, moon)
``pixel_scale`` pixels ``PIXEL_SCALE`` = 1.5 times larger on the sky: the same sky resampled
                (area-averaged) onto 1.5 x fewer pixels per side (63 px -> 42 px)
``saturation``  the saturation level drops to the exposure's ``SATURATION_QUANTILE`` = 99th
                percentile: brighter pixels clip there (a difference cutout loses the clipped
                science flux)
``survey_join`` another survey joins the stream: from the change on, ``JOIN_SHARE`` = 1 in 2
                images comes from it (Hubble tiles into ZTF, ZTF cutouts into Hubble); this is a
                stream change, see :func:`tools.bench.real_streams.change_stream`
==============  ==================================================================================

A transform acts on the image the pipeline scores. ``seeing``, ``noise``, ``gradient`` and
``pixel_scale`` act on it directly (for a difference cutout: a PSF-matched subtraction shows
the worse seeing and the noise; the gradient is background the subtraction left); ``gain``
and ``saturation`` change the new exposure, so on a difference cutout they act on its
science stamp and the difference changes by what the science stamp changed. 8-bit surveys
(Hubble PNG tiles) are clipped to [0, 255] and rounded afterwards, as their encoding would.
NaN (masked) pixels stay NaN and never feed a neighbour.

Invariants: a transform is a pure function of (kind, cutout); the randomness (noise, gradient
direction) is seeded by the kind and the cutout's key, so the same image changes the same way
in every stream and every run. Output is float32, finite wherever the input was.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

from tools.bench.real_images import Cutout

__all__ = [
    "HELD_OUT",
    "IMAGE_KINDS",
    "KINDS",
    "TUNING",
    "describe",
    "planted",
    "robust_std",
]

SEEING_SIGMA: Final = 1.5
NOISE_SIGMA: Final = 1.0
GAIN: Final = 1.2
GRADIENT: Final = 2.0
PIXEL_SCALE: Final = 1.5
SATURATION_QUANTILE: Final = 99.0
JOIN_SHARE: Final = 0.5

KINDS: Final = (
    "seeing",
    "noise",
    "blind",
    "gain",
    "gradient",
    "pixel_scale",
    "saturation",
    "survey_join",
)
HELD_OUT: Final = ("saturation", "survey_join")
"""Kinds kept out of tuning: reported in their own table."""
TUNING: Final = tuple(k for k in KINDS if k not in HELD_OUT)
IMAGE_KINDS: Final = tuple(k for k in KINDS if k != "survey_join")
EIGHT_BIT: Final = frozenset({"hst-hdf"})

Array = NDArray[np.float32]


def describe(kind: str) -> str:
    """The magnitude of ``kind`` in words (printed above the tables)."""
    return {
        "seeing": f"blur sigma {SEEING_SIGMA} px",
        "noise": f"noise {NOISE_SIGMA} x robust std",
        "blind": f"blur {SEEING_SIGMA} px + noise {NOISE_SIGMA} x std",
        "gain": f"gain x{GAIN}",
        "gradient": f"ramp {GRADIENT} x std p-p",
        "pixel_scale": f"pixels x{PIXEL_SCALE}",
        "saturation": f"clip at p{SATURATION_QUANTILE:g}",
        "survey_join": f"{JOIN_SHARE:.0%} other survey",
    }[kind]


def robust_std(image: Array) -> NDArray[np.float64]:
    """Per band 1.4826 x the median absolute deviation of the finite pixels (0 if none)."""
    out = np.zeros(image.shape[2])
    for b in range(image.shape[2]):
        band = image[..., b]
        values = band[np.isfinite(band)]
        if values.size:
            out[b] = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return out


def _rng(kind: str, key: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(kind.encode()), zlib.crc32(key.encode())])


def _filled(image: Array) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The image with NaNs at their band's median (so they feed no neighbour), and the mask."""
    mask = ~np.isfinite(image)
    out = image.astype(np.float64)
    for b in range(image.shape[2]):
        band = out[..., b]
        finite = band[~mask[..., b]]
        band[mask[..., b]] = float(np.median(finite)) if finite.size else 0.0
    return out, mask


def _blur(image: Array, sigma: float) -> Array:
    filled, mask = _filled(image)
    out = gaussian_filter(filled, sigma=(sigma, sigma, 0), mode="reflect")
    out[mask] = np.nan
    return out.astype(np.float32)


def _noise(image: Array, rng: np.random.Generator, before: Array | None = None) -> Array:
    """Noise scaled by the robust std of ``before`` (the unchanged image), else of ``image``."""
    scale = NOISE_SIGMA * robust_std(image if before is None else before)
    return (image + rng.normal(size=image.shape) * scale).astype(np.float32)


def _gradient(image: Array, rng: np.random.Generator) -> Array:
    h, w, _ = image.shape
    theta = rng.uniform(0.0, 2.0 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = np.cos(theta) * xx + np.sin(theta) * yy
    span = float(ramp.max() - ramp.min()) or 1.0
    ramp = (ramp - ramp.min()) / span - 0.5  # -0.5 .. 0.5 across the cutout
    amplitude = GRADIENT * robust_std(image)
    return (image + ramp[..., None] * amplitude).astype(np.float32)


def _pixel_scale(image: Array) -> Array:
    h, w, b = image.shape
    shape = (max(round(h / PIXEL_SCALE), 1), max(round(w / PIXEL_SCALE), 1), b)
    filled, mask = _filled(image)
    out = resize(filled, shape, order=1, anti_aliasing=True, preserve_range=True)
    masked = resize(mask.astype(np.float64), shape, order=0, anti_aliasing=False) > 0.5
    out[masked] = np.nan
    return out.astype(np.float32)


def _saturate(image: Array) -> Array:
    out = image.copy()
    for b in range(image.shape[2]):
        band = out[..., b]
        finite = band[np.isfinite(band)]
        if finite.size:
            level = np.float32(np.percentile(finite, SATURATION_QUANTILE))
            np.minimum(band, level, out=band, where=np.isfinite(band))
    return out


def _on_exposure(cutout: Cutout, change: Callable[[Array], Array]) -> Array:
    """Apply a change of the exposure; a difference cutout changes by what its science did."""
    if cutout.science is None:
        return change(cutout.pixels)
    science = cutout.science
    delta = change(science) - science
    delta[~np.isfinite(delta)] = 0.0
    return (cutout.pixels + delta).astype(np.float32)


def planted(kind: str, cutout: Cutout) -> Array:
    """``cutout``'s pixels after the change ``kind`` (one of :data:`IMAGE_KINDS`)."""
    rng = _rng(kind, cutout.key)
    image = cutout.pixels
    if kind == "seeing":
        out = _blur(image, SEEING_SIGMA)
    elif kind == "noise":
        out = _noise(image, rng)
    elif kind == "blind":
        out = _noise(_blur(image, SEEING_SIGMA), rng, before=image)
    elif kind == "gain":
        out = _on_exposure(cutout, lambda a: (a * np.float32(GAIN)).astype(np.float32))
    elif kind == "gradient":
        out = _gradient(image, rng)
    elif kind == "pixel_scale":
        out = _pixel_scale(image)
    elif kind == "saturation":
        out = _on_exposure(cutout, _saturate)
    else:
        raise ValueError(f"kind {kind!r}: an image change is one of {', '.join(IMAGE_KINDS)}")
    if cutout.survey in EIGHT_BIT:
        out = np.round(np.clip(out, 0.0, 255.0)).astype(np.float32)
    return out
