"""Source policies: rebalancing weights and error back-off (DESIGN §5). Pure, no clock.

- :func:`rebalance`: weight proportional to flag rate * (1 - error rate) over a rolling
  window, normalised to sum 1, with ``floor`` (default 0.05) per active source so none starves.
- :class:`ErrorBackoff`: a source whose dead-letter rate over its window passes ``max_error_rate``
  (default 0.2, at least ``min_items`` items) is paused for ``base_s`` seconds, doubling with
  each consecutive pause up to ``max_s``. It returns a duration only: the caller adds it to the
  evidence's event time (record timestamps, never the wall clock), so a replay decides alike.

Example:
    >>> w = rebalance({"a": (0.10, 0.0), "b": (0.02, 0.0), "c": (0.0, 0.0)}, floor=0.05)
    >>> {k: round(v, 3) for k, v in w.items()}
    {'a': 0.792, 'b': 0.158, 'c': 0.05}
    >>> backoff = ErrorBackoff()
    >>> backoff.pause_for("a", errors=30, items=100), backoff.pause_for("a", 40, 100)
    (30.0, 60.0)
    >>> backoff.pause_for("b", errors=1, items=100) is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ErrorBackoff", "rebalance"]


def rebalance(rates: Mapping[str, tuple[float, float]], floor: float = 0.05) -> dict[str, float]:
    """Weights from ``{source: (flag rate, error rate)}``; each >= ``floor``, summing to 1.

    With no signal anywhere (all products zero) the weights are equal.
    """
    if not rates:
        return {}
    if not 0.0 <= floor * len(rates) <= 1.0:
        raise ValueError(f"floor {floor} is too large for {len(rates)} sources")
    raw = {s: max(flag, 0.0) * (1.0 - min(max(err, 0.0), 1.0)) for s, (flag, err) in rates.items()}
    total = sum(raw.values())
    if total <= 0:
        return dict.fromkeys(sorted(raw), 1.0 / len(raw))
    share = {s: v / total for s, v in raw.items()}
    # Lift the starved to the floor and scale the rest into what is left (at most n rounds).
    fixed: dict[str, float] = {}
    for _ in range(len(share)):
        free = [s for s in share if s not in fixed]
        budget = 1.0 - floor * len(fixed)
        mass = sum(share[s] for s in free)
        lifted = [s for s in free if share[s] / mass * budget < floor]
        if not lifted:
            return {s: fixed.get(s, share[s] / mass * budget) for s in sorted(share)}
        fixed.update(dict.fromkeys(lifted, floor))
    return {s: fixed.get(s, floor) for s in sorted(share)}


@dataclass
class ErrorBackoff:
    max_error_rate: float = 0.2
    min_items: int = 20
    base_s: float = 30.0
    max_s: float = 3600.0
    _pauses: dict[str, int] = field(default_factory=dict, repr=False)

    def pause_for(self, source: str, errors: int, items: int) -> float | None:
        """Seconds to pause ``source`` for, when its error rate is over the bound; else None.

        Each consecutive pause doubles the back-off; :meth:`healthy` resets it.
        """
        if items < self.min_items or errors / items <= self.max_error_rate:
            return None
        count = self._pauses.get(source, 0)
        self._pauses[source] = count + 1
        return min(self.base_s * 2.0**count, self.max_s)

    def healthy(self, source: str) -> None:
        """A window under the bound after a resume: the next pause starts from ``base_s``."""
        self._pauses.pop(source, None)
