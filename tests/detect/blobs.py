"""Synthetic sky cutouts with Gaussian sources at known boxes, for the detect tests."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from processors.core.imaging import encode_fits
from processors.core.records import Box, ImageRecord

__all__ = ["blob_image", "blob_set", "fits_record"]


def blob_image(
    seed: int, size: int = 128, sources: int | None = None, noise: float = 5.0
) -> tuple[NDArray[np.float32], list[Box]]:
    """Noise around 100 with 1-3 separate round sources; truth boxes are centre +- 3 sigma."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, noise, (size, size))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    boxes: list[Box] = []
    count = int(rng.integers(1, 4)) if sources is None else sources
    for _ in range(count):
        sigma = float(rng.uniform(2.0, 4.0))
        margin = 3 * sigma
        for _ in range(100):  # keep sources apart: blended sources are one source
            cx, cy = rng.uniform(margin, size - margin, 2)
            if all(
                max(abs(cx - (b["x1"] + b["x2"]) / 2), abs(cy - (b["y1"] + b["y2"]) / 2))
                > margin + (b["x2"] - b["x1"]) / 2
                for b in boxes
            ):
                break
        else:
            break
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


def fits_record(image: NDArray[np.float32], image_id: str = "img") -> ImageRecord:
    """An ImageRecord carrying ``image`` as FITS, as the ingest processor writes one."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return ImageRecord(
        image_id=image_id,
        source="synthetic",
        survey="synthetic",
        ra=None,
        dec=None,
        observed_at=now,
        fetched_at=now,
        format="fits",
        pixels=encode_fits(image),
        uri=None,
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        bands=1 if image.ndim == 2 else int(image.shape[2]),
        provenance={},
        truth=None,
    )
