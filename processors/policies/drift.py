"""Drift policy: compare each window of a (model, source)'s served scores with its calibration.

Pure (no I/O, no clock). :func:`judge_window` tests one finished window against a
:class:`~processors.policies.profile.DriftProfile` (the calibration's held-out images);
:class:`Hysteresis` turns a sequence of window results into a drift decision;
:class:`DriftPolicy` is the two behind the policies' one interface (``update``), as the controller
uses them; :class:`DriftMonitor` combines both for a stream of scores (what the doctest and
tests drive).

A window *disagrees* with the calibration when any test fires:

- **score distribution**: two-sample KS of the window's ensemble scores against the profile's,
  ``p < ks_p`` (default 0.002), *and* a PSI above its sampling noise by more than ``psi_min``
  (default 0.1; the noise of PSI over ``b`` bins between samples of ``n`` and ``m`` is about
  ``(b - 1)(1/n + 1/m)``, 0.28 at 64 against 64, so a fixed 0.2 would mean nothing at these
  sizes). KL divergence is reported as evidence only;
- **features**: KS of each principal-component projection of the window's features against the
  profile's, Bonferroni-corrected over the components, ``p < feature_p`` (default 0.002): the
  inputs moved even where the scores have not (yet);
- **flag rate**: the window's flagged fraction against the rate the calibration expects at the
  thresholds in force (decayed ones included), a two-sided exact binomial test with
  ``p < flag_p`` (default 0.002). It sees a flood of flags at once; a collapse to none is
  seen by the sequential test (:mod:`processors.policies.sequential`) and the score and
  feature tests first (no flag in 64 images at a 5 % target has p = 0.04, never significant).

The bounds are strict because windows are judged often (every ``drift_step`` images, see
:class:`Hysteresis`): at 0.002 per test, three tests and two disjoint windows, stationary
streams of 8,000 images raised no drift (three streams: synthetic star fields and difference
cutouts; ``tools/bench/policy_sim.py``), where 0.01 raised one on two of them.

:class:`Hysteresis`: drift is raised only after ``consecutive`` (default 2) disjoint disagreeing
windows in a row; after a raise it stays quiet for ``cooldown`` windows (default 0: the
controller judges windows only against the calibration that served them, so a recalibration
cannot be taken for a drift and nothing needs to wait). :func:`change_point` then locates where
the change began, so the new reference holds post-drift images only.

Example (scores of a calibrated detector are near uniform on normal data):
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> monitor = DriftMonitor(rng.uniform(size=64), target_fpr=0.05, window=64)
    >>> verdicts = [monitor.update(float(s), bool(s > 0.95)) for s in rng.uniform(size=1280)]
    >>> [v.drift for v in verdicts if v is not None].count(True)
    0
    >>> flood = [monitor.update(float(s), bool(s > 0.7)) for s in rng.uniform(0.3, 1.0, 128)]
    >>> [v.drift for v in flood if v is not None]
    [False, True]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest, ks_2samp

__all__ = [
    "DriftMonitor",
    "DriftPolicy",
    "DriftTests",
    "DriftWindow",
    "Hysteresis",
    "WindowVerdict",
    "change_point",
    "judge_window",
    "kl_divergence",
    "population_stability_index",
]

_EPS = 1e-4


def _binned(
    reference: NDArray[np.float64], current: NDArray[np.float64], bins: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both samples' fractions over bins cut at the reference's quantiles (smoothed, > 0)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1)
    p = (ref + _EPS) / (ref.sum() + _EPS * ref.size)
    q = (cur + _EPS) / (cur.sum() + _EPS * cur.size)
    return p, q


def _psi(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    return float(np.sum((q - p) * np.log(q / p)))


def _kl(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    return float(np.sum(q * np.log(q / p)))


def population_stability_index(
    reference: NDArray[np.float64], current: NDArray[np.float64], bins: int = 10
) -> float:
    """PSI = sum((q - p) ln(q / p)) over reference-quantile bins; > 0.2 is a material shift.

    >>> x = np.linspace(0, 1, 200)
    >>> round(population_stability_index(x, x), 6), population_stability_index(x, x + 0.5) > 1
    (0.0, True)
    """
    return _psi(*_binned(np.asarray(reference, float), np.asarray(current, float), bins))


def kl_divergence(
    reference: NDArray[np.float64], current: NDArray[np.float64], bins: int = 10
) -> float:
    """KL(current || reference) over the same bins as :func:`population_stability_index`.

    >>> x = np.linspace(0, 1, 200)
    >>> round(kl_divergence(x, x), 6)
    0.0
    """
    return _kl(*_binned(np.asarray(reference, float), np.asarray(current, float), bins))


@dataclass(frozen=True)
class DriftTests:
    """Per-window test parameters; see the module docstring for what each one gates."""

    ks_p: float = 0.002
    psi_min: float = 0.1
    feature_p: float = 0.002
    flag_p: float = 0.002
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("ks_p", "feature_p", "flag_p"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)!r}")
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins!r}")


@dataclass(frozen=True)
class WindowVerdict:
    """The statistics of one finished window and whether it disagrees with the calibration."""

    size: int
    ks_statistic: float
    ks_p: float
    psi: float
    psi_noise: float
    kl: float
    feature_p: float
    flag_rate: float
    expected_flag_rate: float
    flag_p: float
    disagrees: bool
    reason: str
    drift: bool = False

    def evidence(self) -> dict[str, float]:
        """The numbers for a ``drift.detected`` event's ``evidence``."""
        return {
            "window_size": float(self.size),
            "ks_statistic": self.ks_statistic,
            "ks_p": self.ks_p,
            "psi": self.psi,
            "psi_noise": self.psi_noise,
            "kl": self.kl,
            "feature_ks_p": self.feature_p,
            "flag_rate": self.flag_rate,
            "expected_flag_rate": self.expected_flag_rate,
            "flag_p": self.flag_p,
        }


def judge_window(
    scores: NDArray[np.floating],
    flags: NDArray[np.bool_],
    reference_scores: NDArray[np.floating],
    expected_flag_rate: float,
    tests: DriftTests = DriftTests(),
    projections: NDArray[np.floating] | None = None,
    reference_projections: NDArray[np.floating] | None = None,
) -> WindowVerdict:
    """Test one window against its calibration (see the module docstring). Pure."""
    s = np.asarray(scores, dtype=np.float64)
    ref = np.asarray(reference_scores, dtype=np.float64)
    n, m = s.size, ref.size
    ks = ks_2samp(s, ref)
    p, q = _binned(ref, s, tests.bins)  # one binning for PSI and KL
    psi = _psi(p, q)
    psi_noise = (p.size - 1) * (1.0 / n + 1.0 / m)
    feature_p = 1.0
    if projections is not None and reference_projections is not None:
        x, r = np.asarray(projections, float), np.asarray(reference_projections, float)
        pvalues = [float(ks_2samp(x[:, j], r[:, j]).pvalue) for j in range(x.shape[1])]
        feature_p = min(1.0, min(pvalues) * len(pvalues)) if pvalues else 1.0
    flagged = int(np.count_nonzero(flags))
    # A calibration whose held-out images never (or always) flag still has a finite rate.
    p0 = min(max(expected_flag_rate, 0.5 / m), 1.0 - 0.5 / m)
    flag_p = float(binomtest(flagged, n, p0).pvalue)
    reasons = []
    if ks.pvalue < tests.ks_p and psi - psi_noise > tests.psi_min:
        reasons.append("score distribution")
    if feature_p < tests.feature_p:
        reasons.append("features")
    if flag_p < tests.flag_p:
        reasons.append("flag flood" if flagged / n > p0 else "flag collapse")
    return WindowVerdict(
        size=n,
        ks_statistic=float(ks.statistic),
        ks_p=float(ks.pvalue),
        psi=psi,
        psi_noise=float(psi_noise),
        kl=_kl(p, q),
        feature_p=float(feature_p),
        flag_rate=flagged / n,
        expected_flag_rate=float(expected_flag_rate),
        flag_p=flag_p,
        disagrees=bool(reasons),
        reason=", ".join(reasons),
    )


def change_point(
    values: NDArray[np.floating], scale: NDArray[np.floating], min_size: int = 16
) -> int:
    """Where a single shift in the mean of ``values`` ``(n, k)`` most likely begins (row index).

    Binary segmentation: for every split ``t`` (both sides at least ``min_size`` rows) the
    statistic ``t (n - t) / n * ||(mean[:t] - mean[t:]) / scale||^2`` (a two-sample Hotelling
    statistic with a diagonal covariance ``scale**2``) is computed; the arg max is the change.
    With ``n < 2 * min_size`` there is nothing to split and 0 is returned. Pure, deterministic.

    >>> x = np.concatenate([np.zeros((40, 2)), np.ones((60, 2))])
    >>> change_point(x + np.random.default_rng(0).normal(0, 0.3, x.shape), np.ones(2))
    40
    """
    x = np.asarray(values, dtype=np.float64) / np.maximum(np.asarray(scale, float), 1e-12)
    n = x.shape[0]
    if n < 2 * min_size:
        return 0
    cumulative = np.cumsum(x, axis=0)
    total = cumulative[-1]
    splits = np.arange(min_size, n - min_size + 1)
    left = cumulative[splits - 1] / splits[:, None]
    right = (total - cumulative[splits - 1]) / (n - splits)[:, None]
    statistic = splits * (n - splits) / n * ((left - right) ** 2).sum(axis=1)
    return int(splits[int(np.argmax(statistic))])


@dataclass
class Hysteresis:
    """``consecutive`` disjoint windows in a row must disagree to raise drift; then quiet.

    Windows may be judged more often than they are long (a window of ``w`` items every ``w /
    spacing`` items): ``spacing`` verdicts apart, two windows are disjoint, so drift is raised
    when the verdicts ``0, spacing, 2 spacing, ...`` back from the newest all disagree. With
    ``spacing=1`` this is the classic streak. Sliding the windows does not lower the evidence
    needed (still ``consecutive`` disjoint windows) but no longer waits for a fixed grid to line
    up with the change. After a raise, ``cooldown`` verdicts are ignored.

    The state is plain data (:meth:`to_dict` / :meth:`from_dict`), so it persists in a table
    and a restarted controller resumes mid-streak.

    >>> h = Hysteresis(consecutive=2, spacing=4)
    >>> [h.step(v) for v in [True, False, False, False, True]]
    [False, False, False, False, True]
    """

    consecutive: int = 2
    cooldown: int = 0
    spacing: int = 1
    trail: list[int] = field(default_factory=list)
    quiet: int = 0
    windows: int = 0

    def __post_init__(self) -> None:
        if self.consecutive < 1 or self.cooldown < 0 or self.spacing < 1:
            raise ValueError("consecutive and spacing must be >= 1, cooldown >= 0")

    @property
    def streak(self) -> int:
        """Disagreeing disjoint windows in a row, ending with the newest verdict."""
        count = 0
        for back in range(0, len(self.trail), self.spacing):
            if not self.trail[-1 - back]:
                break
            count += 1
        return count

    def step(self, disagrees: bool) -> bool:
        """Account one judged window; True when it completes the hysteresis (drift)."""
        self.windows += 1
        self.trail = [*self.trail, int(disagrees)][-((self.consecutive - 1) * self.spacing + 1) :]
        if self.quiet > 0:
            self.quiet -= 1
            return False
        if self.streak >= self.consecutive:
            self.trail, self.quiet = [], self.cooldown
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hysteresis:
        return cls(**data)


@dataclass(frozen=True)
class DriftWindow:
    """One finished window of a lane's served scores against its calibration's profile.

    ``hysteresis`` is the lane's (mutated by :meth:`DriftPolicy.update`, stored by the caller).
    """

    scores: NDArray[np.floating]
    flags: NDArray[np.bool_]
    reference_scores: NDArray[np.floating]
    expected_flag_rate: float
    projections: NDArray[np.floating] | None
    reference_projections: NDArray[np.floating] | None
    hysteresis: Hysteresis


@dataclass(frozen=True)
class DriftPolicy:
    """:func:`judge_window`, then the window's :class:`Hysteresis`: a drift or nothing."""

    tests: DriftTests = field(default_factory=DriftTests)

    def update(self, window: DriftWindow) -> list[WindowVerdict]:
        """The window's verdict (``drift`` True) when it completes the hysteresis, else none."""
        verdict = judge_window(
            window.scores,
            window.flags,
            window.reference_scores,
            window.expected_flag_rate,
            self.tests,
            window.projections,
            window.reference_projections,
        )
        if not window.hysteresis.step(verdict.disagrees):
            return []
        return [WindowVerdict(**{**asdict(verdict), "drift": True})]


@dataclass
class DriftMonitor:
    """Streaming use of :func:`judge_window` + :class:`Hysteresis` on one calibration.

    ``reference``: the calibration's held-out ensemble scores; ``target_fpr``: the flag rate it
    expects. ``update`` takes one served score (and optionally its feature projection).
    """

    reference: NDArray[np.float64]
    target_fpr: float
    window: int = 64
    tests: DriftTests = field(default_factory=DriftTests)
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    reference_projections: NDArray[np.float64] | None = None
    _scores: list[float] = field(default_factory=list, repr=False)
    _flags: list[bool] = field(default_factory=list, repr=False)
    _projections: list[NDArray[np.float64]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.reference = np.asarray(self.reference, dtype=np.float64)
        if self.reference.size < 10:
            raise ValueError(f"reference needs at least 10 scores, got {self.reference.size}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")
        if self.window < 10:
            raise ValueError(f"window must be >= 10, got {self.window!r}")

    def update(
        self, score: float, flagged: bool, projection: NDArray[np.float64] | None = None
    ) -> WindowVerdict | None:
        """Add one served score; returns the verdict when it completes a window, else None."""
        self._scores.append(float(score))
        self._flags.append(bool(flagged))
        if projection is not None:
            self._projections.append(np.asarray(projection, dtype=np.float64))
        if len(self._scores) < self.window:
            return None
        use_features = self.reference_projections is not None and self._projections
        verdict = judge_window(
            np.asarray(self._scores),
            np.asarray(self._flags),
            self.reference,
            self.target_fpr,
            self.tests,
            np.stack(self._projections) if use_features else None,
            self.reference_projections if use_features else None,
        )
        self._scores, self._flags, self._projections = [], [], []
        drift = self.hysteresis.step(verdict.disagrees)
        return WindowVerdict(**{**asdict(verdict), "drift": drift})
