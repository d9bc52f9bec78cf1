"""Threshold decay: a calibrated threshold relaxes as a calibration ages (DESIGN §5).

``t(n) = clamp(base * (1 - decay * ln(1 + n)), floor, ceiling)``, ``n`` = images scored for
that (model, source) since its last calibration. Pure; :meth:`ThresholdDecay.due` bounds the
cadence (one ``threshold.decayed`` every ``every`` images, and only when the value moved by at
least ``min_step``), so the log gets a handful of events per calibration, not one per image.

Defaults: ``decay=0.01``, ``floor=0.5``, ``ceiling=1.0``, ``every=256``, ``min_step=0.002``
(thresholds are on the calibrated [0, 1] scale of :mod:`processors.ood.ensemble`).

Example:
    >>> policy = ThresholdDecay()
    >>> policy.threshold(0.95, 0), round(policy.threshold(0.95, 1000), 4)
    (0.95, 0.8844)
    >>> policy.due(255, 0.95, 0.95), policy.due(256, 0.95, 0.95) is not None
    (None, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ThresholdDecay"]


@dataclass(frozen=True)
class ThresholdDecay:
    decay: float = 0.01
    floor: float = 0.5
    ceiling: float = 1.0
    every: int = 256
    min_step: float = 0.002

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        if not 0.0 <= self.floor <= self.ceiling <= 1.0:
            raise ValueError(f"need 0 <= floor <= ceiling <= 1, got {self.floor}, {self.ceiling}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every!r}")

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
