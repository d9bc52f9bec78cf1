"""Threshold decay: a calibrated threshold relaxes as a calibration ages.

See ARCHITECTURE.md, "Self-correction".

``t(n) = clamp(base * (1 - decay * ln(1 + n)), floor, ceiling)``, ``n`` = images served for that
(model, source) since its last calibration. Pure; :meth:`ThresholdDecay.due` bounds the cadence
(one ``threshold.decayed`` every ``every`` images, and only when the value moved by at least
``min_step``), so the log gets a handful of events per calibration, not one per image.

Besides the fixed ``floor``, a data-derived bound: :meth:`ThresholdDecay.bounded` never
lowers a threshold below the point where the calibration's own held-out images would be flagged
at more than ``max_rate_ratio`` times the rate they are flagged at the base thresholds, so decay
can make the detector more sensitive but never turn it into a flood on its own.

Defaults: ``decay=0.002``, ``floor=0.5``, ``ceiling=1.0``, ``every=256``, ``min_step=0.002``,
``max_rate_ratio=1.1`` (thresholds are on the calibrated [0, 1] scale of
:mod:`processors.ood.ensemble`). With these, a 0.93 threshold reaches 0.915 after about 4,000
images.

Example:
    >>> policy = ThresholdDecay(decay=0.01, max_rate_ratio=1.5)
    >>> policy.threshold(0.95, 0), round(policy.threshold(0.95, 1000), 4)
    (0.95, 0.8844)
    >>> policy.due(255, 0.95, 0.95), policy.due(256, 0.95, 0.95) is not None
    (None, True)
    >>> rate = lambda t: max(0.0, 1.0 - t)  # flag rate of held-out images at threshold t
    >>> policy.bounded(0.8, base=0.95, rate=rate)  # 0.8 would flag 0.2 > 1.5 * 0.05
    0.925
    >>> policy.update(DecayObservation(served=256, base=0.95, current=0.95, rate=rate))  # bounded
    [0.925]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DecayObservation", "ThresholdDecay"]


@dataclass(frozen=True)
class DecayObservation:
    """A served image of a calibrated lane.

    ``served``: images served since the calibration; ``base``: its threshold; ``current``: the
    threshold in force; ``rate``: the calibration's held-out flag rate at a threshold
    (non-increasing; called only when a decay is due).
    """

    served: int
    base: float
    current: float
    rate: Callable[[float], float]


@dataclass(frozen=True)
class ThresholdDecay:
    decay: float = 0.002
    floor: float = 0.5
    ceiling: float = 1.0
    every: int = 256
    min_step: float = 0.002
    max_rate_ratio: float = 1.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        if not 0.0 <= self.floor <= self.ceiling <= 1.0:
            raise ValueError(f"need 0 <= floor <= ceiling <= 1, got {self.floor}, {self.ceiling}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every!r}")
        if self.max_rate_ratio < 1.0:
            raise ValueError(f"max_rate_ratio must be >= 1, got {self.max_rate_ratio!r}")

    def threshold(self, base: float, n: int) -> float:
        """The decayed threshold after ``n`` images since calibration (``n >= 0``)."""
        value = base * (1.0 - self.decay * math.log1p(max(n, 0)))
        return min(max(value, self.floor), self.ceiling)

    def due(self, n: int, base: float, current: float) -> float | None:
        """The new threshold when an event is due at image ``n``, else None.

        Due only on multiples of ``every`` and when it differs from ``current`` (the value in
        force) by at least ``min_step``; deterministic in its inputs, so a replayed controller
        emits the same decays.
        """
        if n <= 0 or n % self.every:
            return None
        value = self.threshold(base, n)
        return value if abs(value - current) >= self.min_step else None

    def update(self, observation: DecayObservation) -> list[float]:
        """The decayed threshold when a decay is due (bounded, to 4 places), else nothing.

        :meth:`due`, then :meth:`bounded`; nothing when the bounded value moved less than
        ``min_step`` from the one in force.
        """
        o = observation
        value = self.due(o.served, o.base, o.current)
        if value is None:
            return []
        value = round(self.bounded(value, o.base, o.rate), 4)
        return [] if abs(value - o.current) < self.min_step else [value]

    def bounded(self, value: float, base: float, rate: Callable[[float], float]) -> float:
        """``value`` raised, if needed, to keep ``rate(value) <= max_rate_ratio * rate(base)``.

        ``rate`` must be non-increasing (a flag rate as a function of the threshold). Searched
        by bisection to 1e-3, deterministic.
        """
        cap = self.max_rate_ratio * max(rate(base), 1e-9)
        if rate(value) <= cap or value >= base:
            return value
        low, high = value, base  # rate(low) > cap >= rate(high)
        while high - low > 1e-3:
            mid = (low + high) / 2
            low, high = (low, mid) if rate(mid) <= cap else (mid, high)
        return round(high, 3)
