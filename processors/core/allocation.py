"""How ingest shares its draws among sources: weights from ``source.weights_set``, a floor.

Pure. :func:`allocate` turns the raw weights the controller published (flag rate times one
minus error rate, per source) into shares of the draws for the sources that are active now:
proportional to the weights, normalised to 1, none below ``floor`` (so a quiet source is still
sampled and can prove itself again). A source without a published weight gets the mean of all
published ones (equal shares when none is known). :class:`WeightedRoundRobin` draws from shares
deterministically (smooth weighted round robin): over any run of draws each source's count is
within one of its share, and the same shares always give the same order.

Example:
    >>> shares = allocate({"a": 0.10, "b": 0.02, "c": 0.0}, ["a", "b", "c"], floor=0.05)
    >>> {k: round(v, 3) for k, v in shares.items()}
    {'a': 0.792, 'b': 0.158, 'c': 0.05}
    >>> picker = WeightedRoundRobin()
    >>> "".join(picker.pick({"a": 0.75, "b": 0.25}) for _ in range(8))
    'aabaaaba'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["WeightedRoundRobin", "allocate"]


def allocate(
    weights: Mapping[str, float], sources: Sequence[str], floor: float = 0.05
) -> dict[str, float]:
    """Shares of ``sources`` (each >= ``floor``, summing to 1); see the module docstring.

    With ``floor * len(sources) > 1`` the floor cannot hold and shares are equal. With no
    signal anywhere (all weights zero) the shares are equal.
    """
    if not sources:
        return {}
    known = [max(float(w), 0.0) for w in weights.values()]
    fallback = sum(known) / len(known) if known else 1.0
    raw = {s: max(float(weights.get(s, fallback)), 0.0) for s in sources}
    total = sum(raw.values())
    if total <= 0 or floor * len(raw) >= 1.0:
        return dict.fromkeys(sorted(raw), 1.0 / len(raw))
    share = {s: v / total for s, v in raw.items()}
    # Lift the starved to the floor and scale the rest into what is left (at most n rounds).
    fixed: dict[str, float] = {}
    for _ in range(len(share)):
        free = [s for s in share if s not in fixed]
        budget = 1.0 - floor * len(fixed)
        mass = sum(share[s] for s in free)
        if mass <= 0:
            break
        lifted = [s for s in free if share[s] / mass * budget < floor]
        if not lifted:
            return {s: fixed.get(s, share[s] / mass * budget) for s in sorted(share)}
        fixed.update(dict.fromkeys(lifted, floor))
    rest = [s for s in share if s not in fixed]
    left = (1.0 - floor * len(fixed)) / len(rest) if rest else 0.0
    return {s: fixed.get(s, left) for s in sorted(share)}


class WeightedRoundRobin:
    """Smooth weighted round robin over changing shares; deterministic, no randomness.

    Each pick adds every candidate's share to its credit, takes the candidate with the most
    credit (ties: the first in sorted order) and charges it the total. Candidates that leave
    keep no credit; new ones start at zero.
    """

    def __init__(self) -> None:
        self._credit: dict[str, float] = {}

    def pick(self, shares: Mapping[str, float]) -> str:
        if not shares:
            raise ValueError("no source to pick from")
        self._credit = {s: self._credit.get(s, 0.0) for s in shares}
        for source, share in shares.items():
            self._credit[source] += share
        chosen = max(sorted(self._credit), key=lambda s: self._credit[s])
        self._credit[chosen] -= sum(shares.values())
        return chosen
