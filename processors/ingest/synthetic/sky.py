"""A synthetic sky: noisy cutouts with known anomalies and scheduled drifts, as FITS.

Every image carries :class:`GroundTruth` (is it an anomaly, which kind, which condition of the
schedule it was taken under) so detection quality can be measured; scoring never reads it.
Deterministic for a seed: the n-th image of a stream is always the same.

Two kinds of cutout (``kind``):

- ``direct``: a star field: sky background + Gaussian noise + Poisson(``stars``) stars with a
  Gaussian PSF;
- ``difference``: what a survey's image subtraction leaves (like a ZTF difference cutout):
  noise, a transient of widely varying brightness at the centre, and Poisson(``residuals``)
  subtraction residuals (dipoles). Its normal population is broad, faint to bright, so a drift
  that buries the structure in noise makes every image look like the faintest normal ones:
  the detector goes blind (its flag rate collapses), as measured on real ZTF cutouts.

Anomalies (``anomaly_rate`` of images): ``streak`` (a satellite trail), ``blob`` (a large
diffuse source), ``bad_column`` (a saturated detector column). In difference cutouts their
amplitude is set against the noise, so they stay as visible under every condition.

Conditions (:data:`CONDITIONS`) change through the stream by a schedule, ``drifts`` =
``"START:NAME,START:NAME,..."`` (from image ``START`` on, condition ``NAME``; ``baseline``
before the first). With ``cycle`` the schedule repeats every ``cycle`` images (an endless
stream with a drift every few thousand images). ``drift_after=N`` is short for
``drifts="N:seeing"``.

``kind=survey`` (with ``surveys=wide,deep,...``) is the sky as several surveys see it,
with six anomaly classes and survey drifts: see processors/ingest/synthetic/survey_sky.

Example:
    >>> sky = SyntheticSky(seed=1, drifts="2:noisy,4:baseline", cycle=6)
    >>> [sky.condition_at(n) for n in range(8)]
    ['baseline', 'baseline', 'noisy', 'noisy', 'baseline', 'baseline', 'baseline', 'baseline']
    >>> sky.image(3).truth["segment"]
    'noisy'
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import ConfigError
from processors.core.imaging import encode_fits
from processors.core.records import Box, GroundTruth
from processors.ingest.sources.base import BaseSource, Capabilities
from processors.ingest.sources.items import RawImage, SourceItem
from processors.ingest.synthetic.survey_sky import SURVEYS, SurveySky

__all__ = ["ANOMALY_KINDS", "CONDITIONS", "KINDS", "SkyCondition", "SyntheticSky"]

ANOMALY_KINDS = ("streak", "blob", "bad_column")
KINDS = ("direct", "difference", "survey")
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SkyCondition:
    """Observing conditions: background, noise sigma, PSF sigma (px), mean star / residual
    counts per cutout."""

    sky: float = 100.0
    noise: float = 5.0
    psf: float = 1.4
    stars: float = 4.0
    residuals: float = 2.0


CONDITIONS: dict[str, SkyCondition] = {
    "baseline": SkyCondition(),
    # brighter sky, more noise, worse seeing
    "seeing": SkyCondition(sky=160.0, noise=9.0, psf=2.2),
    # twice the noise: faint structure drowns
    "noisy": SkyCondition(noise=10.0),
    # blurred
    "blur": SkyCondition(psf=2.6),
    # four times the stars and residuals (a field near the Galactic plane)
    "crowded": SkyCondition(stars=16.0, residuals=8.0),
}


def _schedule(drifts: str) -> list[tuple[int, str]]:
    steps = [(0, "baseline")]
    for part in filter(None, (p.strip() for p in drifts.split(","))):
        start, sep, name = part.partition(":")
        if not sep or not start.strip().isdigit() or name.strip() not in CONDITIONS:
            raise ConfigError(
                f"drifts: {part!r} is not START:CONDITION with START an integer >= 0 and "
                f"CONDITION one of {', '.join(CONDITIONS)}"
            )
        steps.append((int(start), name.strip()))
    return sorted(steps, key=lambda s: s[0])


@dataclass
class SyntheticSky(BaseSource):
    """The synthetic sky (see the module docstring); image ``n`` depends only on the seed, the
    settings and ``n``."""

    capabilities = Capabilities(positions=True, truth=True)
    name: str = "synthetic"
    seed: int = 0
    size: int = 64
    anomaly_rate: float = 0.03
    drift_after: int | None = None
    drifts: str = ""
    cycle: int | None = None
    kind: str = "direct"
    limit: int | None = None
    surveys: str = "wide,deep"

    def __post_init__(self) -> None:
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ConfigError(f"anomaly_rate must be in [0, 1], got {self.anomaly_rate}")
        if self.size < 16:
            raise ConfigError(f"size must be at least 16 pixels, got {self.size}")
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.cycle is not None and self.cycle < 1:
            raise ConfigError(f"cycle must be >= 1, got {self.cycle}")
        drifts = self.drifts or (f"{self.drift_after}:seeing" if self.drift_after else "")
        self._surveys: SurveySky | None = None
        if self.kind == "survey":
            self._surveys = SurveySky(
                self.seed, self.size, self.anomaly_rate, drifts, self.surveys, self.cycle
            )
            self._steps = [(0, "baseline")]
        else:
            self._steps = _schedule(drifts)

    @property
    def endless(self) -> bool:
        """Without a ``limit`` the sky never runs out of images."""
        return self.limit is None

    def condition_at(self, n: int) -> str:
        """The condition the n-th image is taken under."""
        if self._surveys is not None:
            return self._surveys.segment_at(n)
        position = n % self.cycle if self.cycle else n
        return [name for start, name in self._steps if start <= position][-1]

    def __iter__(self) -> Iterator[SourceItem]:
        n = 0
        while self.limit is None or n < self.limit:
            yield self.image(n)
            n += 1

    def image(self, n: int) -> RawImage:
        if self._surveys is not None:
            return self._survey_image(n)
        rng = np.random.default_rng([self.seed, n])
        condition = self.condition_at(n)
        anomaly = None
        if rng.random() < self.anomaly_rate:
            anomaly = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
        render = self._difference if self.kind == "difference" else self._direct
        boxes: list[Box] = []
        pixels = render(rng, CONDITIONS[condition], anomaly, boxes)
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
            provenance={
                "generator": f"synthetic-sky/{self.kind}",
                "seed": str(self.seed),
                "n": str(n),
                "condition": condition,
            },
            truth=GroundTruth(
                is_anomaly=anomaly is not None, kind=anomaly, segment=condition, boxes=boxes
            ),
        )

    def _survey_image(self, n: int) -> RawImage:
        """Image n of ``kind=survey`` (processors/ingest/synthetic/survey_sky): a science, template,
        difference cube from one of the active surveys."""
        assert self._surveys is not None
        cube, survey, anomaly, segment, where = self._surveys.render(n)
        rng = np.random.default_rng([self.seed, n, 11])
        ra = float(rng.uniform(0, 360))
        dec = float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
        return RawImage(
            source=self.name,
            survey=f"synthetic-{survey}",
            format="fits",
            pixels=encode_fits(cube, {"SKYSEED": self.seed, "SKYN": n, "SURVEY": survey}),
            width=self.size,
            height=self.size,
            bands=3,
            observed_at=_EPOCH + timedelta(seconds=30 * n),
            ra=ra,
            dec=dec,
            provenance={
                "generator": "synthetic-sky/survey",
                "seed": str(self.seed),
                "n": str(n),
                "survey": survey,
                "pixel_scale": str(SURVEYS[survey].pixel_scale),
                "planes": "science,template,difference",
            },
            truth=GroundTruth(
                is_anomaly=anomaly is not None,
                kind=anomaly,
                segment=segment,
                boxes=[] if where is None or anomaly is None else [_box(anomaly, *where)],
            ),
        )

    def _grid(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float32)
        return yy, xx

    @staticmethod
    def _psf(
        xx: NDArray[np.float32],
        yy: NDArray[np.float32],
        cx: float,
        cy: float,
        sigma: float,
        flux: float,
    ) -> NDArray[np.float64]:
        """A Gaussian PSF of total ``flux`` centred on (cx, cy), in float64 (added to the
        float32 image in one rounding)."""
        profile = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        return np.asarray(flux / (2 * np.pi * sigma**2) * profile, dtype=np.float64)

    def _direct(
        self, rng: np.random.Generator, c: SkyCondition, anomaly: str | None, boxes: list[Box]
    ) -> NDArray[np.float32]:
        s = self.size
        yy, xx = self._grid()
        img = np.full((s, s), c.sky, dtype=np.float32)
        for _ in range(int(rng.poisson(c.stars))):
            cx, cy = rng.uniform(2, s - 2, size=2)
            img += self._psf(xx, yy, cx, cy, c.psf, float(rng.lognormal(7.0, 0.8)))
        if anomaly == "bad_column":
            col = int(rng.integers(2, s - 2))
            width = int(rng.integers(1, 3))
            img[:, col : col + width] = 60000.0  # saturated
            boxes.append(_box(anomaly, col, 0, col + width, s))
        elif anomaly is not None:
            low, high = (150.0, 400.0) if anomaly == "streak" else (80.0, 200.0)
            img += self._shape(rng, anomaly, xx, yy, boxes) * float(rng.uniform(low, high))
        img += rng.normal(0.0, c.noise, size=(s, s)).astype(np.float32)
        return img

    def _difference(
        self, rng: np.random.Generator, c: SkyCondition, anomaly: str | None, boxes: list[Box]
    ) -> NDArray[np.float32]:
        s = self.size
        yy, xx = self._grid()
        img = rng.normal(0.0, c.noise, size=(s, s)).astype(np.float32)
        cx, cy = s / 2 + rng.normal(0.0, 0.5, size=2)
        img += self._psf(xx, yy, cx, cy, c.psf, float(rng.lognormal(5.3, 1.0)))
        for _ in range(int(rng.poisson(c.residuals))):
            rx, ry = rng.uniform(4, s - 4, size=2)
            dx, dy = rng.normal(0.0, 0.7, size=2)
            flux = float(rng.lognormal(4.8, 0.8))
            img += self._psf(xx, yy, rx, ry, c.psf, flux)
            img -= self._psf(xx, yy, rx + dx, ry + dy, c.psf, flux)
        if anomaly == "bad_column":
            col = int(rng.integers(2, s - 2))
            width = int(rng.integers(1, 3))
            img[:, col : col + width] += 50.0 * c.noise
            boxes.append(_box(anomaly, col, 0, col + width, s))
        elif anomaly is not None:
            low, high = (3.0, 8.0) if anomaly == "streak" else (2.0, 5.0)
            shape = self._shape(rng, anomaly, xx, yy, boxes)
            img += shape * float(rng.uniform(low, high)) * c.noise
        return img

    def _shape(
        self,
        rng: np.random.Generator,
        anomaly: str,
        xx: NDArray[np.float32],
        yy: NDArray[np.float32],
        boxes: list[Box],
    ) -> NDArray[np.float32]:
        """A streak or a blob of unit peak, at a random place; its truth box goes to ``boxes``
        (the streak's line within the image, 2 sigma wide; the blob's 2-radius square)."""
        s = self.size
        if anomaly == "streak":
            angle = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(s * 0.3, s * 0.7, size=2)
            dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
            boxes.append(_line_box(anomaly, float(cx), float(cy), float(angle), s, pad=2.0))
            return np.exp(-(dist**2) / 2.0)
        cx, cy = rng.uniform(s * 0.3, s * 0.7, size=2)
        radius = rng.uniform(s * 0.12, s * 0.25)
        boxes.append(_box(anomaly, cx - 2 * radius, cy - 2 * radius, cx + 2 * radius,
                          cy + 2 * radius, s))  # fmt: skip
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))


def _box(label: str, x1: float, y1: float, x2: float, y2: float, size: float | None = None) -> Box:
    """A truth box (confidence 1), clipped to ``[0, size]`` (or the given corners)."""
    hi = size if size is not None else max(x2, y2)
    return Box(
        label=label,
        confidence=1.0,
        x1=float(max(0.0, x1)),
        y1=float(max(0.0, y1)),
        x2=float(min(hi, x2)),
        y2=float(min(hi, y2)),
    )


def _line_box(label: str, cx: float, cy: float, angle: float, size: int, pad: float) -> Box:
    """The bounding box of the line through (cx, cy) along ``angle`` inside the image."""
    dx, dy = float(np.cos(angle)), float(np.sin(angle))
    ts = []
    for origin, step in ((cx, dx), (cy, dy)):
        if abs(step) > 1e-9:
            ts += [(0.0 - origin) / step, (size - origin) / step]
    inside = [
        (cx + t * dx, cy + t * dy)
        for t in ts
        if -1e-6 <= cx + t * dx <= size + 1e-6 and -1e-6 <= cy + t * dy <= size + 1e-6
    ]
    xs, ys = [p[0] for p in inside], [p[1] for p in inside]
    return _box(label, min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad, size)
