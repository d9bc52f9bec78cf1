"""The synthetic sky as several surveys see it: science/template/difference triplets with truth.

``synthetic?kind=survey&surveys=wide,deep`` (see :class:`~processors.ingest.synthetic.sky.
SyntheticSky`). Each image is taken by one of the active surveys (:data:`SURVEYS`: its own
pixel scale, PSF, sky background, read noise and gain) and is a 3-band FITS cube like a ZTF
alert triplet: a science exposure, a template (a deeper reference of the same field under the
survey's baseline seeing) and their difference (science minus template). The scene is real
in arcseconds (galaxies and stars at positions and sizes drawn in arcsec) and rendered at each
survey's pixel scale, so the same sky looks different per survey.

Anomaly classes (:data:`ANOMALY_CLASSES`, ``anomaly_rate`` of images), each with where it is
(its truth box, :meth:`SurveySky.truth_box`):

- ``transient``: a point source in the science exposure only, visible in the difference;
- ``lensing_arc``: a tangential arc around a massive galaxy (in science and template);
- ``merger``: two overlapping galaxies with a tidal tail (an irregular galaxy);
- ``satellite_trail``, ``cosmic_ray``: single-exposure artefacts (science only);
- ``bad_column``: a hot pixel cluster and a bad detector column (science only).

Drift schedule ``drifts=START:NAME,...``: NAME is a condition (``seeing``: PSF 1.7x;
``background``: sky 3x; ``gain``: gain halved, so noise up) or ``+SURVEY``, a new survey that
joins the mix from START on; ``baseline`` ends the conditions. Truth: ``kind`` is the anomaly
class, ``segment`` the conditions in force (e.g. ``seeing+space``), so when each drift starts
is queryable in ClickHouse (``truth_segment``). Deterministic per (seed, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import ConfigError

__all__ = ["ANOMALY_CLASSES", "SURVEYS", "SurveyProfile", "SurveySky", "TruthBox"]

ANOMALY_CLASSES = (
    "transient",
    "lensing_arc",
    "merger",
    "satellite_trail",
    "cosmic_ray",
    "bad_column",
)
SURVEY_CONDITIONS = ("baseline", "seeing", "background", "gain")
TruthBox = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, inclusive-exclusive


@dataclass(frozen=True)
class SurveyProfile:
    """What a survey's camera and site make of the sky (pixel scale and PSF FWHM in arcsec,
    sky in counts per pixel, read noise in counts, gain in electrons per count)."""

    pixel_scale: float
    psf_fwhm: float
    sky: float
    read_noise: float
    gain: float
    zero_point: float  # counts of a reference (magnitude 20) source


SURVEYS: dict[str, SurveyProfile] = {
    "wide": SurveyProfile(0.396, 1.4, 120.0, 5.0, 4.7, 900.0),  # SDSS-like
    "deep": SurveyProfile(0.262, 1.1, 60.0, 3.0, 4.0, 2500.0),  # DECaLS-like
    "transient": SurveyProfile(1.01, 2.0, 180.0, 8.0, 6.2, 600.0),  # ZTF-like
    "space": SurveyProfile(0.05, 0.11, 4.0, 2.5, 2.0, 4000.0),  # HST-like
}


def _parse(drifts: str, surveys: str) -> tuple[list[str], list[tuple[int, str]]]:
    active = [s.strip() for s in surveys.split(",") if s.strip()]
    unknown = [s for s in active if s not in SURVEYS]
    if not active or unknown:
        raise ConfigError(
            f"surveys={surveys!r}: accepted values are comma-separated names of "
            f"{', '.join(SURVEYS)}"
        )
    steps: list[tuple[int, str]] = []
    for part in filter(None, (p.strip() for p in drifts.split(","))):
        start, sep, name = part.partition(":")
        name = name.strip()
        known = name in SURVEY_CONDITIONS or (name.startswith("+") and name[1:] in SURVEYS)
        if not sep or not start.strip().isdigit() or not known:
            raise ConfigError(
                f"drifts: {part!r} is not START:NAME with START an integer >= 0 and NAME one of "
                f"{', '.join(SURVEY_CONDITIONS)} or +SURVEY ({', '.join(SURVEYS)})"
            )
        steps.append((int(start), name))
    return active, sorted(steps, key=lambda s: s[0])


@dataclass(frozen=True)
class _Shot:
    survey: str
    profile: SurveyProfile
    condition: str
    segment: str


class SurveySky:
    """Renders image ``n`` of a stream: ``render(n) -> (cube (h, w, 3), survey, anomaly,
    segment, box)``; see the module docstring."""

    def __init__(
        self,
        seed: int,
        size: int,
        anomaly_rate: float,
        drifts: str,
        surveys: str,
        cycle: int | None,
    ) -> None:
        self.seed = seed
        self.size = size
        self.anomaly_rate = anomaly_rate
        self.cycle = cycle
        self.surveys, self.steps = _parse(drifts, surveys)

    def shot_at(self, n: int) -> tuple[list[str], str]:
        """Surveys active and the condition in force for the n-th image."""
        position = n % self.cycle if self.cycle else n
        active, condition = list(self.surveys), "baseline"
        for start, name in self.steps:
            if start > position:
                break
            if name.startswith("+"):
                if name[1:] not in active:
                    active.append(name[1:])
            else:
                condition = name
        return active, condition

    def segment_at(self, n: int) -> str:
        active, condition = self.shot_at(n)
        joined = [s for s in active if s not in self.surveys]
        return "+".join([condition, *joined])

    def render(self, n: int) -> tuple[NDArray[np.float32], str, str | None, str, TruthBox | None]:
        rng = np.random.default_rng([self.seed, n, 7])
        active, condition = self.shot_at(n)
        survey = active[int(rng.integers(len(active)))]
        profile = SURVEYS[survey]
        seeing = profile.psf_fwhm * (1.7 if condition == "seeing" else 1.0)
        sky = profile.sky * (3.0 if condition == "background" else 1.0)
        gain = profile.gain * (0.5 if condition == "gain" else 1.0)
        anomaly = None
        if rng.random() < self.anomaly_rate:
            anomaly = ANOMALY_CLASSES[int(rng.integers(len(ANOMALY_CLASSES)))]
        static, box = self._scene(rng, profile, anomaly)
        science_extra = np.zeros_like(static)
        template_psf = self._psf_px(profile, profile.psf_fwhm)
        science_psf = self._psf_px(profile, seeing)
        if anomaly in ("transient", "satellite_trail"):
            science_extra, box = self._single_epoch(rng, profile, anomaly)
        science = _blur(static + science_extra, science_psf) + sky
        template = _blur(static, template_psf) + profile.sky
        science = self._noisy(rng, science, gain, profile.read_noise)
        # the template is a stack of many exposures: a quarter of the noise
        template = (
            profile.sky
            + (self._noisy(rng, template, gain, profile.read_noise) - profile.sky) * 0.25
        )
        if anomaly == "cosmic_ray":
            box = self._cosmic_ray(rng, science)
        if anomaly == "bad_column":
            box = self._bad_column(rng, science)
        difference = (science - sky) - (template - profile.sky)
        cube = np.stack([science, template, difference], axis=-1).astype(np.float32)
        return cube, survey, anomaly, self.segment_at(n), box

    # -- scene, in arcsec, rendered at the survey's pixel scale ------------------------------
    def _psf_px(self, profile: SurveyProfile, fwhm: float) -> float:
        return max(fwhm / profile.pixel_scale / 2.355, 0.5)

    def _grid(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        yy, xx = np.mgrid[0 : self.size, 0 : self.size].astype(np.float64)
        return yy, xx

    def _galaxy(
        self,
        xx: NDArray[np.float64],
        yy: NDArray[np.float64],
        cx: float,
        cy: float,
        r_px: float,
        q: float,
        angle: float,
        flux: float,
    ) -> NDArray[np.float64]:
        dx, dy = xx - cx, yy - cy
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / q
        profile = np.exp(-np.hypot(u, v) / max(r_px, 0.3))
        return flux * profile / max(profile.sum(), 1e-9)

    def _scene(
        self, rng: np.random.Generator, p: SurveyProfile, anomaly: str | None
    ) -> tuple[NDArray[np.float64], TruthBox | None]:
        s = self.size
        yy, xx = self._grid()
        img = np.zeros((s, s))
        field_arcsec = s * p.pixel_scale
        for _ in range(int(rng.poisson(2 + field_arcsec / 20))):
            cx, cy = rng.uniform(0, s, 2)
            r = rng.lognormal(0.0, 0.5) / p.pixel_scale  # ~1 arcsec scale length
            img += self._galaxy(
                xx,
                yy,
                cx,
                cy,
                r,
                rng.uniform(0.3, 1),
                rng.uniform(0, np.pi),
                p.zero_point * rng.lognormal(0.5, 0.8),
            )
        for _ in range(int(rng.poisson(3))):
            y, x = rng.integers(0, s, 2)
            img[y, x] += p.zero_point * rng.lognormal(0.0, 1.0)
        box: TruthBox | None = None
        c = s / 2
        if anomaly == "lensing_arc":
            einstein = min(rng.uniform(1.0, 2.5) / p.pixel_scale, s * 0.35)
            img += self._galaxy(xx, yy, c, c, einstein / 3, 0.8, 0.0, p.zero_point * 8)
            radius = np.hypot(xx - c, yy - c)
            phi = np.arctan2(yy - c, xx - c)
            centre, span = rng.uniform(-np.pi, np.pi), rng.uniform(0.6, 1.4)
            dphi = np.angle(np.exp(1j * (phi - centre)))
            arc = np.exp(-((radius - einstein) ** 2) / 2.0) * (np.abs(dphi) < span / 2)
            img += p.zero_point * 3 * arc / max(arc.sum(), 1e-9) * 20
            box = _box_of(arc > 0.1)
        elif anomaly == "merger":
            r = max(1.2 / p.pixel_scale, 2.0)
            sep = rng.uniform(1.0, 2.0) * r
            a = rng.uniform(0, np.pi)
            for sign in (-1, 1):
                img += self._galaxy(
                    xx,
                    yy,
                    c + sign * sep / 2 * np.cos(a),
                    c + sign * sep / 2 * np.sin(a),
                    r,
                    0.7,
                    a,
                    p.zero_point * 6,
                )
            tail = np.exp(
                -np.hypot(xx - c - 2 * sep * np.cos(a + 0.6), yy - c - 2 * sep * np.sin(a + 0.6))
                / (r * 1.5)
            )
            img += p.zero_point * 2 * tail / max(tail.sum(), 1e-9)
            region = np.hypot(xx - c, yy - c) < 2.5 * sep + r
            box = _box_of(region)
        return img, box

    def _single_epoch(
        self, rng: np.random.Generator, p: SurveyProfile, anomaly: str
    ) -> tuple[NDArray[np.float64], TruthBox]:
        s = self.size
        yy, xx = self._grid()
        img = np.zeros((s, s))
        if anomaly == "transient":
            x, y = (int(v) for v in rng.integers(s // 4, 3 * s // 4, 2))
            img[y, x] = p.zero_point * rng.uniform(3.0, 10.0)
            half = int(np.ceil(3 * self._psf_px(p, p.psf_fwhm * 1.7))) + 1
            return img, (
                max(x - half, 0),
                max(y - half, 0),
                min(x + half + 1, s),
                min(y + half + 1, s),
            )
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(s * 0.3, s * 0.7, 2)
        dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        trail = (dist < 0.8).astype(np.float64)
        img += trail * p.sky * rng.uniform(0.5, 1.5)
        return img, _box_of(trail > 0) or (0, 0, s, s)

    def _cosmic_ray(self, rng: np.random.Generator, science: NDArray[np.float64]) -> TruthBox:
        s = self.size
        x, y = (int(v) for v in rng.integers(2, s - 6, 2))
        length = int(rng.integers(1, 5))
        dx, dy = (int(v) for v in rng.integers(0, 2, 2))
        for k in range(length):
            science[min(y + k * dy, s - 1), min(x + k * dx, s - 1)] += rng.uniform(5e3, 3e4)
        return (x, y, min(x + length * dx + 1, s), min(y + length * dy + 1, s))

    def _bad_column(self, rng: np.random.Generator, science: NDArray[np.float64]) -> TruthBox:
        s = self.size
        col = int(rng.integers(2, s - 2))
        science[:, col] = 6.0e4  # saturated column
        hy, hx = (int(v) for v in rng.integers(0, s - 1, 2))
        science[hy : hy + 2, hx : hx + 2] = 6.0e4  # a hot pixel cluster
        return (min(col, hx), 0, max(col + 1, hx + 2), s)

    @staticmethod
    def _noisy(
        rng: np.random.Generator, counts: NDArray[np.float64], gain: float, read_noise: float
    ) -> NDArray[np.float64]:
        sigma = np.sqrt(np.maximum(counts, 0.0) / gain + read_noise**2)
        return counts + rng.normal(0.0, 1.0, counts.shape) * sigma

    def truth_box(self, n: int) -> TruthBox | None:
        """Where image n's anomaly is (pixels; None for a normal image)."""
        return self.render(n)[4]


def _blur(img: NDArray[np.float64], sigma: float) -> NDArray[np.float64]:
    from scipy.ndimage import gaussian_filter

    return np.asarray(gaussian_filter(img, sigma, mode="constant"), dtype=np.float64)


def _box_of(mask: NDArray[np.bool_]) -> TruthBox | None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
