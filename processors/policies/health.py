"""Health policy: a sustained error rate or latency breach pauses the whole pipeline.

Pure (no I/O, no clock). :class:`HealthPolicy` judges windows of ``window`` items (served scores
and dead letters, all sources together): a window *breaches* when its dead-letter share passes
``max_error_rate`` (default 0.5: most inputs failing, beyond what one bad source's back-off
handles) or the 99th percentile of per-image scoring latency passes ``max_latency_p99_ms``
(default 5000 ms). ``consecutive`` (default 3) breaching windows in a row → pause. The pause is
a circuit breaker: it lasts ``pause_s`` (default 60 s), doubling with each consecutive pause up
to ``max_pause_s`` (default 3600 s); when it ends the controller resumes on probation, and the
first window after the resume either resets the doubling (healthy) or pauses again at once
(still breaching; one window is enough on probation).

Example:
    >>> policy = HealthPolicy(window=4, consecutive=2)
    >>> state = HealthState()
    >>> [policy.observe(state, latency_ms=10.0, error=e) is not None for e in [1, 1, 1, 0] * 2]
    [False, False, False, False, False, False, False, True]
    >>> verdict = policy.observe(state, 10.0, False)  # nothing until the next window ends
    >>> verdict is None, state.streak
    (True, 0)
    >>> policy.update(HealthObservation(state, latency_ms=10.0, error=False))
    []
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["HealthObservation", "HealthPolicy", "HealthState", "HealthVerdict"]


@dataclass(frozen=True)
class HealthVerdict:
    """A breach that completes the hysteresis: pause for ``pause_s`` seconds."""

    reason: str
    error_rate: float
    latency_p99_ms: float
    items: int
    pause_s: float

    def evidence(self) -> dict[str, float]:
        return {
            "error_rate": self.error_rate,
            "latency_p99_ms": self.latency_p99_ms,
            "window_items": float(self.items),
            "pause_s": self.pause_s,
        }


@dataclass
class HealthState:
    """Mutable window and breaker state (kept in memory by the controller)."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    items: int = 0
    streak: int = 0
    pauses: int = 0
    probation: bool = False


@dataclass(frozen=True)
class HealthObservation:
    """One item of the pipeline: a served score (with its latency) or a dead letter."""

    state: HealthState
    latency_ms: float | None
    error: bool


@dataclass(frozen=True)
class HealthPolicy:
    window: int = 256
    max_error_rate: float = 0.5
    max_latency_p99_ms: float = 5000.0
    consecutive: int = 3
    pause_s: float = 60.0
    max_pause_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.consecutive < 1:
            raise ValueError("window and consecutive must be >= 1")
        if not 0.0 < self.max_error_rate <= 1.0 or self.max_latency_p99_ms <= 0:
            raise ValueError("max_error_rate must be in (0, 1] and max_latency_p99_ms > 0")

    def update(self, observation: HealthObservation) -> list[HealthVerdict]:
        """The pause verdict the item completes (see :meth:`observe`), else nothing."""
        o = observation
        verdict = self.observe(o.state, o.latency_ms, o.error)
        return [] if verdict is None else [verdict]

    def observe(
        self, state: HealthState, latency_ms: float | None, error: bool
    ) -> HealthVerdict | None:
        """Account one item (a served score with its latency, or a dead letter).

        Returns a verdict when the pipeline should pause now, else None.
        """
        state.items += 1
        state.errors += int(error)
        if latency_ms is not None:
            state.latencies.append(float(latency_ms))
        if state.items < self.window:
            return None
        error_rate = state.errors / state.items
        p99 = float(np.percentile(state.latencies, 99)) if state.latencies else 0.0
        items = state.items
        state.latencies, state.errors, state.items = [], 0, 0
        reasons = []
        if error_rate > self.max_error_rate:
            reasons.append("error rate")
        if p99 > self.max_latency_p99_ms:
            reasons.append("latency p99")
        if not reasons:
            state.streak = 0
            if state.probation:
                state.probation, state.pauses = False, 0
            return None
        state.streak += 1
        if state.streak < self.consecutive and not state.probation:
            return None
        state.streak, state.probation = 0, False
        pause_s = min(self.pause_s * 2.0**state.pauses, self.max_pause_s)
        state.pauses += 1
        return HealthVerdict(", ".join(reasons), error_rate, p99, items, pause_s)

    @staticmethod
    def resumed(state: HealthState) -> None:
        """The pause ended: the next window is on probation."""
        state.probation = True
        state.latencies, state.errors, state.items, state.streak = [], 0, 0, 0
