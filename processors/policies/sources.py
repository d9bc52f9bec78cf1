"""Source policies: rebalancing weights and error back-off. Pure, no clock.

See ARCHITECTURE.md, "Self-correction".

- :class:`Rebalance`: every ``every`` items (default 512) of a source, its weight is ``flag rate *
  (1 - error rate)`` over that window; a ``source.weights_set`` is due when it is the source's
  first, or when the weight moved from the one in force by more than ``min_change`` (relative,
  default 0.25), more than ``min_delta`` (absolute, default 0.005) *and* more than
  ``noise`` (default 3) binomial standard errors of the window's flag rate: at 5 % flags over 512
  images one standard error is already 19 % of the rate, so a weight that moves less than that
  is sampling noise, not news. Ingest turns the weights of the active sources into shares with
  a floor (:func:`processors.core.allocation.allocate`), so no source starves. Each event
  carries one source's weight: it depends on that source's stream only, so the decision is
  deterministic however the sources interleave.
- :class:`ErrorBackoff`: a source whose dead-letter rate over its window passes
  ``max_error_rate`` (default 0.2, with at least ``min_items`` items) is paused for ``base_s``
  seconds (default 30), doubling with each consecutive pause up to ``max_s`` (default 3600).
  It returns a duration; the caller adds it to the event time of the evidence (record
  timestamps, never the wall clock) and keeps the count of consecutive pauses, which a window
  under the bound after a resume resets.

Example:
    >>> Rebalance().weight(flagged=6, errors=20, items=120)
    0.05
    >>> policy = Rebalance()
    >>> policy.due(0.05, None, 512), policy.due(0.065, 0.05, 512), policy.due(0.12, 0.05, 512)
    (True, False, True)
    >>> backoff = ErrorBackoff()
    >>> backoff.pause_for(errors=30, items=100, pauses=0), backoff.pause_for(40, 100, pauses=1)
    (30.0, 60.0)
    >>> backoff.pause_for(errors=1, items=100, pauses=0) is None
    True
    >>> policy.update(SourceWindow(flagged=60, errors=0, items=512, current=0.05))
    [0.1172]
    >>> backoff.update(BackoffWindow(errors=1, items=100, pauses=0))
    []
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BackoffWindow", "ErrorBackoff", "Rebalance", "SourceWindow"]


@dataclass(frozen=True)
class SourceWindow:
    """A source's rebalancing window: its counts and the weight in force (None: never set)."""

    flagged: int
    errors: int
    items: int
    current: float | None


@dataclass(frozen=True)
class BackoffWindow:
    """A source's back-off window, and its consecutive pauses so far (0 for the first)."""

    errors: int
    items: int
    pauses: int


@dataclass(frozen=True)
class Rebalance:
    every: int = 512
    min_change: float = 0.25
    min_delta: float = 0.005
    noise: float = 3.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.min_change < 0 or self.min_delta < 0 or self.noise < 0:
            raise ValueError("every must be >= 1; min_change, min_delta and noise >= 0")

    @staticmethod
    def weight(flagged: int, errors: int, items: int) -> float:
        """``flag rate * (1 - error rate)``: flags among scored images, errors among all items.

        ``items`` counts scored images and dead letters alike.
        """
        if items <= 0:
            return 0.0
        scored = items - errors
        flag_rate = flagged / scored if scored > 0 else 0.0
        return round(flag_rate * (1.0 - errors / items), 4)

    def update(self, window: SourceWindow) -> list[float]:
        """The window's weight when it should be published (see :meth:`due`), else nothing."""
        weight = self.weight(window.flagged, window.errors, window.items)
        return [weight] if self.due(weight, window.current, window.items) else []

    def due(self, weight: float, current: float | None, items: int) -> bool:
        """Whether ``weight`` (over ``items``) should be published, given the one in force
        (None: never set)."""
        if current is None:
            return True
        delta = abs(weight - current)
        p = min(max(current, 1.0 / max(items, 1)), 1.0)
        standard_error = (p * (1.0 - p) / max(items, 1)) ** 0.5
        return (
            delta > self.min_delta
            and delta > self.min_change * max(current, 1e-12)
            and delta > self.noise * standard_error
        )


@dataclass(frozen=True)
class ErrorBackoff:
    max_error_rate: float = 0.2
    min_items: int = 20
    base_s: float = 30.0
    max_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_error_rate < 1.0:
            raise ValueError(f"max_error_rate must be in (0, 1), got {self.max_error_rate!r}")
        if self.base_s <= 0 or self.max_s < self.base_s:
            raise ValueError("need 0 < base_s <= max_s")

    def update(self, window: BackoffWindow) -> list[float]:
        """Seconds to pause for when the window's error rate is over the bound, else nothing."""
        pause_s = self.pause_for(window.errors, window.items, window.pauses)
        return [] if pause_s is None else [pause_s]

    def breached(self, errors: int, items: int) -> bool:
        return items >= self.min_items and errors / items > self.max_error_rate

    def pause_for(self, errors: int, items: int, pauses: int) -> float | None:
        """Seconds to pause for when the error rate is over the bound, else None.

        ``pauses``: consecutive pauses of this source so far (0 for the first).
        """
        if not self.breached(errors, items):
            return None
        return min(self.base_s * 2.0 ** max(pauses, 0), self.max_s)
