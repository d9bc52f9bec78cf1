"""A synthetic sky: noisy star fields with known anomalies and an optional drift, as FITS.

Every image carries :class:`GroundTruth` (is it an anomaly, which kind, which stream segment)
so detection quality can be measured; scoring never reads it. Deterministic for a seed: the
n-th image of a stream is always the same.

Normal images: sky background + Gaussian read noise + Poisson(4) stars with a Gaussian PSF.
Anomalies (``anomaly_rate`` of images): ``streak`` (a satellite trail), ``blob`` (a large
diffuse source), ``bad_column`` (a saturated detector column). Drift (after ``drift_after``
images): brighter, noisier background and broader PSF (worse seeing), truth segment "drift".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from processors.core.imaging import encode_fits
from processors.core.records import GroundTruth
from processors.ingest.base import RawImage, SourceItem

__all__ = ["ANOMALY_KINDS", "SyntheticSky"]

ANOMALY_KINDS = ("streak", "blob", "bad_column")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class SyntheticSky:
    name: str = "synthetic"
    seed: int = 0
    size: int = 64
    anomaly_rate: float = 0.03
    drift_after: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be in [0, 1], got {self.anomaly_rate}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")

    @property
    def endless(self) -> bool:
        """Without a ``limit`` the sky never runs out of images."""
        return self.limit is None

    def __iter__(self) -> Iterator[SourceItem]:
        n = 0
        while self.limit is None or n < self.limit:
            yield self.image(n)
            n += 1

    def image(self, n: int) -> RawImage:
        rng = np.random.default_rng([self.seed, n])
        drifted = self.drift_after is not None and n >= self.drift_after
        kind = None
        if rng.random() < self.anomaly_rate:
            kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
        pixels = self._render(rng, drifted, kind)
        ra = float(rng.uniform(0, 360))
        dec = float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
        return RawImage(
            source=self.name,
            survey="synthetic",
            format="fits",
            pixels=encode_fits(pixels, {"SKYSEED": self.seed, "SKYN": n}),
            width=self.size,
            height=self.size,
            bands=1,
            observed_at=_EPOCH + timedelta(seconds=30 * n),
            ra=ra,
            dec=dec,
            provenance={"generator": "synthetic-sky", "seed": str(self.seed), "n": str(n)},
            truth=GroundTruth(
                is_anomaly=kind is not None, kind=kind, segment="drift" if drifted else "baseline"
            ),
        )

    def _render(
        self, rng: np.random.Generator, drifted: bool, kind: str | None
    ) -> NDArray[np.float32]:
        s = self.size
        sky, noise, psf = (160.0, 9.0, 2.2) if drifted else (100.0, 5.0, 1.4)
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        img = np.full((s, s), sky, dtype=np.float32)
        for _ in range(int(rng.poisson(4))):
            cx, cy = rng.uniform(2, s - 2, size=2)
            flux = float(rng.lognormal(7.0, 0.8))
            img += (
                flux
                / (2 * np.pi * psf**2)
                * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * psf**2))
            )
        if kind == "streak":
            angle = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(s * 0.3, s * 0.7, size=2)
            dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
            img += float(rng.uniform(150, 400)) * np.exp(-(dist**2) / (2 * 1.0**2))
        elif kind == "blob":
            cx, cy = rng.uniform(s * 0.3, s * 0.7, size=2)
            radius = rng.uniform(s * 0.12, s * 0.25)
            img += float(rng.uniform(80, 200)) * np.exp(
                -((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2)
            )
        elif kind == "bad_column":
            col = int(rng.integers(2, s - 2))
            img[:, col : col + int(rng.integers(1, 3))] = 60000.0
        img += rng.normal(0.0, noise, size=(s, s)).astype(np.float32)
        return img
