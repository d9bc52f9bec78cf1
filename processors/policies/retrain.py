"""When to retrain the detector: enough new pseudo-labels, a cooldown, and a budget.

Pure (no I/O, no clock: the caller passes event time). :class:`RetrainTrigger` is asked after
each new pseudo-label:

- fewer than ``min_samples`` (default 64) new samples since the last request → nothing;
- within ``cooldown_s`` (default 3600 s) of the last request → nothing (the samples wait);
- ``max_per_day`` (default 6) requests already in the trailing 24 h → ``defer`` (one
  ``budget.deferred`` per budget window, so the log says why training waits), else
  ``request`` (``retrain.requested``).

Example:
    >>> from datetime import UTC, datetime, timedelta
    >>> trigger = RetrainTrigger(min_samples=10, cooldown_s=60, max_per_day=2)
    >>> t0 = datetime(2026, 12, 1, tzinfo=UTC)
    >>> trigger.decide(9, [], t0), trigger.decide(10, [], t0)
    (None, 'request')
    >>> trigger.decide(10, [t0], t0 + timedelta(seconds=30))  # cooling down
    >>> trigger.decide(10, [t0, t0 + timedelta(minutes=5)], t0 + timedelta(hours=1))
    'defer'
    >>> trigger.decide(10, [t0], t0 + timedelta(hours=25))
    'request'
    >>> trigger.update(RetrainObservation(10, [t0], t0 + timedelta(hours=25)))
    ['request']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

__all__ = ["RetrainObservation", "RetrainTrigger"]

DAY = timedelta(days=1)
Decision = Literal["request", "defer"]


@dataclass(frozen=True)
class RetrainObservation:
    """New samples since the last request, the past request times, and the event time now."""

    new_samples: int
    requests: Sequence[datetime]
    now: datetime


@dataclass(frozen=True)
class RetrainTrigger:
    min_samples: int = 64
    cooldown_s: float = 3600.0
    max_per_day: int = 6

    def __post_init__(self) -> None:
        if self.min_samples < 1 or self.max_per_day < 1 or self.cooldown_s < 0:
            raise ValueError("min_samples and max_per_day must be >= 1, cooldown_s >= 0")

    def update(self, observation: RetrainObservation) -> list[Decision]:
        """``["request"]``, ``["defer"]`` (over budget) or nothing (see :meth:`decide`)."""
        o = observation
        decision = self.decide(o.new_samples, o.requests, o.now)
        return [] if decision is None else [decision]

    def decide(
        self, new_samples: int, requests: Sequence[datetime], now: datetime
    ) -> Decision | None:
        """``request``, ``defer`` (over budget) or None, given the past request times."""
        if new_samples < self.min_samples:
            return None
        if requests and (now - max(requests)).total_seconds() < self.cooldown_s:
            return None
        if sum(1 for at in requests if now - at < DAY) >= self.max_per_day:
            return "defer"
        return "request"
