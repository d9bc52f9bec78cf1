"""Drift policy: compare each window of a (model, source)'s scores with its calibration window.

Pure (no I/O, no clock): :class:`DriftMonitor` sees one served score at a time and, at the end
of every window of ``window`` scores, returns a :class:`WindowVerdict` with the statistics.
A window *disagrees* with the calibration when either test fires:

- **distribution**: two-sample KS of the window's ensemble scores against the calibration
  window's, ``p < ks_p`` (default 0.01), *and* PSI above ``psi_min`` (default 0.2), so a tiny
  but "significant" shift on a long stream does not count; KL divergence is reported as
  evidence only;
- **flag rate**: the window's flagged fraction against ``target_fpr``, a two-sided exact
  binomial test with ``p < flag_p`` (default 0.005). It sees a flood of flags and a collapse
  to none alike (a blinded detector), often a window earlier than the score distribution.
  (0.005, not 0.001: at a 0.05 target a 128-image window with no flag at all has p = 0.0033,
  so a stricter bound could never see a collapse; two windows in a row keep false alarms
  rare.)

Hysteresis: ``drift`` is raised only after ``consecutive`` (default 2) disagreeing windows in
a row; after a raise the monitor stays quiet for ``cooldown`` windows (default 2), so one blip
never triggers anything and a recalibration is not itself taken for a drift.

Example (scores of a calibrated detector are near uniform on normal data):
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> monitor = DriftMonitor(rng.uniform(size=64), target_fpr=0.05, window=128)
    >>> verdicts = [monitor.update(float(s), bool(s > 0.95)) for s in rng.uniform(size=1280)]
    >>> [v.drift for v in verdicts if v is not None].count(True)
    0
    >>> flood = [monitor.update(float(s), bool(s > 0.7)) for s in rng.uniform(0.3, 1.0, 256)]
    >>> [v.drift for v in flood if v is not None]
    [False, True]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.stats import binomtest, ks_2samp

__all__ = ["DriftMonitor", "WindowVerdict", "kl_divergence", "population_stability_index"]

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
class WindowVerdict:
    """The statistics of one finished window and what the monitor made of them.

    ``index`` counts windows since the monitor started (0-based); ``disagrees`` is this window's
    own test result; ``drift`` is True on the window that completes the hysteresis.
    """

    index: int
    size: int
    ks_statistic: float
    ks_p: float
    psi: float
    kl: float
    flag_rate: float
    flag_p: float
    disagrees: bool
    drift: bool
    reason: str

    def evidence(self) -> dict[str, float]:
        """The numbers for a ``drift.detected`` event's ``evidence``."""
        return {
            "window_index": float(self.index),
            "window_size": float(self.size),
            "ks_statistic": self.ks_statistic,
            "ks_p": self.ks_p,
            "psi": self.psi,
            "kl": self.kl,
            "flag_rate": self.flag_rate,
            "flag_p": self.flag_p,
        }


@dataclass
class DriftMonitor:
    """Windowed drift test with hysteresis and cooldown; see the module docstring.

    ``reference``: the calibration window's ensemble scores (the calibration part of the
    reference, scored by the ensemble fitted on it). ``target_fpr``: the calibrated flag rate.
    """

    reference: NDArray[np.float64]
    target_fpr: float
    window: int = 128
    ks_p: float = 0.01
    psi_min: float = 0.2
    flag_p: float = 0.005
    consecutive: int = 2
    cooldown: int = 2
    _scores: list[float] = field(default_factory=list, repr=False)
    _flags: int = 0
    _index: int = 0
    _streak: int = 0
    _quiet: int = 0

    def __post_init__(self) -> None:
        self.reference = np.asarray(self.reference, dtype=np.float64)
        if self.reference.size < 10:
            raise ValueError(f"reference needs at least 10 scores, got {self.reference.size}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr!r}")
        if self.window < 10 or self.consecutive < 1 or self.cooldown < 0:
            raise ValueError("window must be >= 10, consecutive >= 1 and cooldown >= 0")

    def update(self, score: float, flagged: bool) -> WindowVerdict | None:
        """Add one served score; returns the verdict when it completes a window, else None."""
        self._scores.append(float(score))
        self._flags += int(flagged)
        if len(self._scores) < self.window:
            return None
        verdict = self._judge(np.asarray(self._scores), self._flags)
        self._scores, self._flags = [], 0
        self._index += 1
        return verdict

    def _judge(self, scores: NDArray[np.float64], flags: int) -> WindowVerdict:
        ks = ks_2samp(scores, self.reference)
        p, q = _binned(self.reference, scores, bins=10)  # one binning for PSI and KL
        psi = _psi(p, q)
        flag_p = float(binomtest(flags, scores.size, self.target_fpr).pvalue)
        reasons = []
        if ks.pvalue < self.ks_p and psi > self.psi_min:
            reasons.append("score distribution")
        if flag_p < self.flag_p:
            reasons.append(
                "flag flood" if flags / scores.size > self.target_fpr else "flag collapse"
            )
        disagrees = bool(reasons)
        drift = False
        if self._quiet > 0:
            self._quiet -= 1
            self._streak = 0
        else:
            self._streak = self._streak + 1 if disagrees else 0
            if self._streak >= self.consecutive:
                drift, self._streak, self._quiet = True, 0, self.cooldown
        return WindowVerdict(
            index=self._index,
            size=int(scores.size),
            ks_statistic=float(ks.statistic),
            ks_p=float(ks.pvalue),
            psi=psi,
            kl=_kl(p, q),
            flag_rate=flags / scores.size,
            flag_p=flag_p,
            disagrees=disagrees,
            drift=drift,
            reason=", ".join(reasons),
        )
