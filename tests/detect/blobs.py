"""Synthetic sky cutouts with Gaussian sources at known boxes, for the detect tests."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from processors.core.records import Box

__all__ = ["blob_image", "blob_set"]


def blob_image(
    seed: int, size: int = 128, sources: int | None = None, noise: float = 5.0
) -> tuple[NDArray[np.float32], list[Box]]:
    """Noise around 100 with 1-3 round sources; truth boxes are centre +- 3 sigma, clipped."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, noise, (size, size))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    boxes: list[Box] = []
    count = int(rng.integers(1, 4)) if sources is None else sources
    for _ in range(count):
        sigma = float(rng.uniform(2.0, 4.0))
        margin = 3 * sigma
        cx, cy = rng.uniform(margin, size - margin, 2)
        peak = float(rng.uniform(12.0, 30.0)) * noise
        image += peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        boxes.append(
            Box(
                label="source",
                confidence=1.0,
                x1=float(cx - margin),
                y1=float(cy - margin),
                x2=float(cx + margin),
                y2=float(cy + margin),
            )
        )
    return image.astype(np.float32), boxes


Sample = tuple[NDArray[np.float32], list[Box]]


def blob_set(first_seed: int, n: int, size: int = 128) -> list[Sample]:
    return [blob_image(first_seed + k, size) for k in range(n)]
