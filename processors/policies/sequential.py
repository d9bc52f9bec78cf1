"""Sequential drift test: two one-sided CUSUMs on the conformal p-values of served scores.

Pure (no I/O, no clock). A window test judges 64 images at a time and forgets; a change that no
single window can prove (a detector going blind: at a 5 % target, no flag in 64 images still
has p = 0.04) is never raised. The sequential test accumulates the evidence across windows.

**Per image.** A served image's vote statistic ``s`` (its ``vote_k``-th largest calibrated
score: it is flagged exactly when ``s`` passes the threshold, so a flood or a collapse of flags
is a shift of ``s``; the ensemble mean can stay put while two detectors fall and one rises) is
ranked among the calibration's held-out ones (the drift profile's, ``m`` of them, centred by
:func:`reference_votes`): ``u = (#{> s} + (#{= s} + 1) / 2) / (m + 1)``, a conformal
(mid-rank) p-value, and ``z = Phi^-1(1 - u)``: high scores, high ``z``.
On images exchangeable with the held-out ones, ``u`` depends on ranks only, so the statistic's
whole distribution is free of the detectors, the features and the data.

**Two CUSUMs** (Page 1954): ``up = max(0, up + z - k)`` (a flood: scores too high) and
``down = max(0, down - z - k)`` (a collapse: scores too low, the detector blinds). Drift is
raised when either exceeds ``h``. ``k`` (default 0.75) is half the shift, in standard
deviations of ``z``, that the test is quickest at (Page's optimum for a shift of 1.5); a smaller
``k`` needs a far higher ``h`` on a small reference (m = 64: 21 at k = 0.5). The onset estimate is
the first image of the alarming statistic's last excursion above 0 (the image after it was
last 0), the classic CUSUM change-point estimate.

**The threshold is set from a run length, never from a stream.** Because the null depends on
ranks only, :func:`cusum_threshold` simulates it exactly: for each of ``replications`` seeded
replications, a reference of ``m`` uniform values and a stream of ``horizon`` uniform values;
the CUSUMs never depend on ``h``, so the largest statistic each replication reaches is recorded
and ``h`` is the quantile at ``1 - horizon / arl``: the chance of a false alarm within
``horizon`` images of a calibration is at most ``horizon / arl`` (default 4096 / 10^6: at most
0.4 % of stationary epochs of 4,096 images raise a false drift, about 0.1 false alarms per
100,000 stationary images). The simulation draws a new reference in every replication, so it
counts the reference's own sampling error (a calibration of 64 held-out images biases ``z`` by
about 1/8 of a standard deviation): a small reference gets a higher ``h``. ``m`` is rounded
down to a grid (:data:`SIZE_GRID`; a smaller reference is the more conservative); the default
test's ``h`` per grid size is tabled (:data:`DEFAULT_THRESHOLDS`), others are simulated once
and cached.

**Features too** (:func:`observe_lane`): the image's projection on each of the drift profile's
principal components is ranked among the held-out images' the same way, with two CUSUMs per
component at ``arl x components`` (Bonferroni; :data:`FEATURE_THRESHOLDS`) and a larger
allowance, ``feature_k`` = 1.0: the inputs can move while the votes have not yet (a gain change
shifts a component before the flags notice), but a real night's "normal" drifts slowly along
them too (at k = 0.75 the shared ZTF night raised one at alert 716).

A statistic above half its threshold is *leaning*: refinement waits (see
:mod:`processors.policies.refine`).

Example (a calibrated detector's scores are uniform on normal data; a blind one scores low):
    >>> rng = np.random.default_rng(0)
    >>> test = SequentialTest()
    >>> reference = np.sort(rng.uniform(size=64))
    >>> h = test.threshold(64)
    >>> state = Cusum()
    >>> [state.step(test.z(float(s), reference), i, test.k, h) for i, s in
    ...  enumerate(rng.uniform(size=2000))].count(True)
    0
    >>> alarms = [state.step(test.z(float(s), reference), 2000 + i, test.k, h) for i, s in
    ...  enumerate(rng.uniform(0.0, 0.3, size=96))]
    >>> state.alarm(h), alarms.index(True)  # (direction, onset seq), images to the alarm
    (('collapse', 2002), 35)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FEATURE_COMPONENTS",
    "FEATURE_THRESHOLDS",
    "SIZE_GRID",
    "Cusum",
    "SequentialTest",
    "cusum_threshold",
    "mid_rank_p",
    "observe_lane",
]

SIZE_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)
# h of the default SequentialTest per grid size, as cusum_threshold computes it (about 20 s
# each on one core; tests/policies/test_sequential.py recomputes one): a lookup, not a stall.
DEFAULT_THRESHOLDS = {
    10: 196.9707,
    16: 31.2807,
    24: 17.6569,
    32: 15.0718,
    48: 12.1398,
    64: 11.1637,
    96: 10.235,
    128: 9.7042,
    192: 9.2423,
    256: 9.1972,
    384: 8.9658,
    512: 8.7632,
    768: 8.7141,
    1024: 8.6616,
    2048: 8.5898,
}


FEATURE_COMPONENTS = 8  # the drift profile's principal components (calibration's default)
# h of SequentialTest().for_components(8) per grid size (k 1.0, arl 8e6, 32,000 replications,
# seed 21), as cusum_threshold computes it; below 32 held-out images the feature CUSUMs are off.
FEATURE_THRESHOLDS = {
    32: 10.8885,
    48: 9.607,
    64: 9.3654,
    96: 8.9347,
    128: 8.3732,
    192: 7.9073,
    256: 8.0009,
    384: 7.8925,
    512: 7.934,
    768: 7.8676,
    1024: 7.5309,
    2048: 7.6338,
}


def vote_statistic(calibrated: NDArray[np.float64], vote_k: int) -> NDArray[np.float64]:
    """Each row's ``vote_k``-th largest calibrated score: the image is flagged exactly when this
    is above the (common) threshold, so its distribution carries the flag rate at any one."""
    rows = np.atleast_2d(np.asarray(calibrated, dtype=np.float64))
    return np.asarray(-np.sort(-rows, axis=1)[:, vote_k - 1])


def reference_votes(calibrated: NDArray[np.float64], vote_k: int) -> NDArray[np.float64]:
    """The profile's held-out vote statistics, sorted and centred for new images.

    A held-out row's calibrated score counts the other calibration rows below it, a new
    image's counts all of them: on the grid ``j / n`` a row's sits between 0 and 1 step below
    the image's rank among both, so each reference value moves up half a step (``n`` from the
    grid: the smallest gap between a detector's distinct held-out scores).
    """
    rows = np.asarray(calibrated, dtype=np.float64)
    gaps = np.diff(np.unique(rows[:, 0]))
    step = float(gaps.min()) if gaps.size else 0.0
    return np.sort(vote_statistic(rows, vote_k) + step / 2.0)


def mid_rank_p(score: float, sorted_reference: NDArray[np.float64]) -> float:
    """``(#{ref > s} + (#{ref = s} + 1) / 2) / (m + 1)``: in ``(0, 1)``, small for high scores."""
    m = sorted_reference.shape[0]
    below = int(np.searchsorted(sorted_reference, score, side="left"))
    not_above = int(np.searchsorted(sorted_reference, score, side="right"))
    return ((m - not_above) + (not_above - below + 1) / 2.0) / (m + 1)


@functools.lru_cache(maxsize=64)
def cusum_threshold(
    size: int,
    k: float,
    arl: float,
    horizon: int,
    replications: int,
    seed: int,
) -> float:
    """``h`` with P(max of either CUSUM over ``horizon`` images > h) ≤ ``horizon / arl``.

    Exact Monte-Carlo of the rank null (see the module docstring): deterministic in its
    arguments (a seeded generator), computed once per argument tuple.
    """
    if size < 1 or horizon < 1 or replications < 10 or not arl > horizon:
        raise ValueError("need size >= 1, horizon >= 1, replications >= 10, arl > horizon")
    rng = np.random.default_rng(seed)
    # z of an image with j of the m reference values below it (mid-rank p-value, no ties)
    z_of_rank = ndtri(1.0 - ((size - np.arange(size + 1)) + 0.5) / (size + 1))
    peaks = []
    for first in range(0, replications, 1024):
        block = min(1024, replications - first)
        reference = np.sort(rng.uniform(size=(block, size)), axis=1)
        stream = rng.uniform(size=(block, horizon))
        ranks = np.stack([np.searchsorted(r, x) for r, x in zip(reference, stream, strict=True)])
        z = np.ascontiguousarray(z_of_rank[ranks].T)  # (horizon, block): one row per image
        up, down, peak = np.zeros(block), np.zeros(block), np.zeros(block)
        for row in z:
            up = np.maximum(up + row - k, 0.0)
            down = np.maximum(down - row - k, 0.0)
            np.maximum(peak, np.maximum(up, down), out=peak)
        peaks.append(peak)
    peak = np.concatenate(peaks)
    return float(np.quantile(peak, 1.0 - horizon / arl, method="higher"))


@dataclass(frozen=True)
class SequentialTest:
    """Parameters of the two CUSUMs; :meth:`threshold` is ``h`` for a reference of ``m``."""

    k: float = 0.75
    arl: float = 1e6
    horizon: int = 4096
    replications: int = 16000
    seed: int = 20
    feature_k: float = 1.0  # the feature projections' allowance; 0: no feature CUSUMs

    def __post_init__(self) -> None:
        if not self.k > 0.0 or self.feature_k < 0.0:
            raise ValueError(f"need k > 0 and feature_k >= 0, got {self.k!r}, {self.feature_k!r}")
        if not self.arl > self.horizon >= 1:
            raise ValueError(f"need arl > horizon >= 1, got {self.arl!r}, {self.horizon!r}")
        if self.horizon / self.arl < 2.0 / self.replications:
            raise ValueError("replications too few to place h at 1 - horizon / arl")

    def threshold(self, size: int) -> float:
        """``h`` for a profile of ``size`` held-out scores (rounded down to :data:`SIZE_GRID`).
        Asked once per image and CUSUM: answered from a cache per (test, grid size)."""
        grid = max((g for g in SIZE_GRID if g <= size), default=SIZE_GRID[0])
        return _threshold(self, grid)

    @functools.lru_cache(maxsize=64)  # noqa: B019  (frozen and few: the lane's two tests)
    def for_components(self, components: int) -> SequentialTest:
        """The test of each of ``components`` feature projections (allowance ``feature_k``;
        Bonferroni: ``arl`` times ``components``, twice the replications for the rarer
        quantile, its own seed)."""
        return replace(
            self,
            k=self.feature_k or self.k,
            arl=self.arl * components,
            replications=2 * self.replications,
            seed=self.seed + 1,
        )

    @staticmethod
    def z(score: float, sorted_reference: NDArray[np.float64]) -> float:
        """The image's standard-normal score ``Phi^-1(1 - u)`` (``u``: :func:`mid_rank_p`)."""
        return float(ndtri(1.0 - mid_rank_p(score, sorted_reference)))

    def observe(
        self, cusum: Cusum, score: float, sorted_reference: NDArray[np.float64], seq: int
    ) -> tuple[str, dict[str, float], int] | None:
        """Step ``cusum`` with image ``seq``; on an alarm (reason, evidence, onset seq)."""
        h = self.threshold(sorted_reference.shape[0])
        cusum.step(self.z(score, sorted_reference), seq, self.k)
        alarm = cusum.alarm(h)
        if alarm is None:
            return None
        direction, onset = alarm
        evidence = {
            "cusum_up": cusum.up,
            "cusum_down": cusum.down,
            "cusum_threshold": h,
            "cusum_k": self.k,
            "cusum_arl": self.arl,
            "reference_size": float(sorted_reference.shape[0]),
            "images_since_onset": float(seq + 1 - onset),
        }
        return f"sequential: vote {direction}", evidence, onset


@functools.lru_cache(maxsize=256)
def _threshold(test: SequentialTest, grid: int) -> float:
    if test == SequentialTest():
        return DEFAULT_THRESHOLDS[grid]
    if test == SequentialTest().for_components(FEATURE_COMPONENTS):
        return FEATURE_THRESHOLDS.get(grid, float("inf"))  # off below 32 held-out images
    return cusum_threshold(grid, test.k, test.arl, test.horizon, test.replications, test.seed)


def observe_lane(
    test: SequentialTest,
    state: dict[str, Any],
    vote: float,
    sorted_votes: NDArray[np.float64],
    projection: NDArray[np.float64],
    sorted_projections: NDArray[np.float64],
    seq: int,
) -> tuple[tuple[str, dict[str, float], int] | None, bool]:
    """Step a lane's CUSUMs (``state``, updated in place) with image ``seq``: its vote
    statistic against the held-out ones, and each feature projection against the held-out
    images' (``sorted_projections``: ``(m, k)``, each column sorted). Returns (the alarm:
    reason, evidence, onset seq; or None) and whether anything leans. The vote CUSUMs run at
    ``test``; the ``k`` projections' at :meth:`SequentialTest.for_components`, so the chance of
    a false alarm within ``horizon`` images is at most ``2 horizon / arl`` in all."""
    votes = Cusum.from_dict(state.get("vote") or {})
    columns = sorted_projections.shape[1]
    alarm = test.observe(votes, vote, sorted_votes, seq)
    leaning = votes.leaning(test.threshold(sorted_votes.shape[0]))
    if not test.feature_k:
        state["vote"] = votes.to_dict()
        return alarm, leaning or alarm is not None
    per_pc = test.for_components(columns)
    h_pc = per_pc.threshold(sorted_projections.shape[0])
    pcs = [Cusum.from_dict(d) for d in state.get("pc") or [{}] * columns]
    for j, cusum in enumerate(pcs):
        found = per_pc.observe(cusum, float(projection[j]), sorted_projections[:, j], seq)
        if found is not None and alarm is None:
            way = "up" if found[0].endswith("flood") else "down"
            alarm = (f"sequential: feature component {j} shifted {way}", *found[1:])
        leaning = leaning or cusum.leaning(h_pc)
    state["vote"], state["pc"] = votes.to_dict(), [c.to_dict() for c in pcs]
    return alarm, leaning or alarm is not None


@dataclass
class Cusum:
    """The two statistics of one calibration epoch, and where each excursion began (a seq).

    Plain data (:meth:`to_dict` / :meth:`from_dict`): it persists with the lane.
    """

    up: float = 0.0
    down: float = 0.0
    up_from: int = -1
    down_from: int = -1
    images: int = 0

    def step(self, z: float, seq: int, k: float, h: float = float("inf")) -> bool:
        """Account image ``seq`` with standard score ``z``; True when a statistic passes ``h``."""
        self.images += 1
        self.up = max(self.up + z - k, 0.0)
        self.down = max(self.down - z - k, 0.0)
        self.up_from = -1 if self.up == 0.0 else (seq if self.up_from < 0 else self.up_from)
        self.down_from = -1 if self.down == 0.0 else (seq if self.down_from < 0 else self.down_from)
        return max(self.up, self.down) > h

    def leaning(self, h: float) -> bool:
        """Either statistic above half its threshold."""
        return max(self.up, self.down) > h / 2.0

    def alarm(self, h: float) -> tuple[str, int] | None:
        """("flood" | "collapse", onset seq) when a statistic is above ``h``, else None."""
        if self.up > h and self.up >= self.down:
            return "flood", self.up_from
        if self.down > h:
            return "collapse", self.down_from
        return None

    def to_dict(self) -> dict[str, Any]:
        # written per image and CUSUM (ten a lane): explicit, where asdict deep-copies
        return {
            "up": self.up,
            "down": self.down,
            "up_from": self.up_from,
            "down_from": self.down_from,
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cusum:
        return cls(**data)
