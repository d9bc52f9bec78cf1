"""Comparison policies for benchmarks: a static calibration, and AstroLens v1.1's thresholds.

Selected with the setting ``control_policy`` (``skyloop``, the default; ``static``;
``astrolens``) so that ``tools/bench/drift.py`` runs each through the same real processes. Both
are plug-ins: they register themselves in :mod:`processors.policies.plugins` when this module is
imported, which the registry does the first time a name it does not know is asked for; the
production path never imports this module.

- ``static``: calibrate each (model, source) once from its first reference window; never
  correct anything afterwards.
- ``astrolens``: the self-correcting threshold of AstroLens v1.1 (samantaba/astroLens,
  ``scripts/streaming_discovery.py`` and ``scripts/discovery_loop.py``), on top of the same first
  calibration: after a *cycle* with no anomaly the threshold is multiplied by 0.97; when the
  *daily* anomaly rate passes 10 % it is multiplied by 1.4, under 0.3 % by 0.9; it stays within
  [1.5, 5.0]. AstroLens thresholds an unbounded OOD score; ours are calibrated scores in
  [0, 1] (the fraction of held-out reference images scoring lower). The mapping used here reads
  AstroLens's threshold as a z-score: ``z = Phi^-1(t)`` for our calibrated threshold ``t``, and
  a detector votes when ``Phi^-1(score) > z``, i.e. ``score > Phi(z)``. Its floor 1.5 and ceiling
  5.0 are then 1.5 and 5 standard deviations (calibrated thresholds 0.933 and 0.9999997). A
  cycle is 32 images (AstroLens downloads 30 per cycle) and a "day" is 128 images, the
  evaluation window: both far shorter than AstroLens's own (1 minute, 24 hours), which only
  makes it react faster than it would.

Example:
    >>> policy = AstroLensV11()
    >>> state = policy.start(0.93)
    >>> changes = [policy.step(state, flagged=False) for _ in range(64)]
    >>> [round(c, 4) for c in changes if c is not None]  # z 1.48 * 0.97 is below the floor
    [0.9332]
    >>> changes = [policy.step(state, flagged=True) for _ in range(128)]
    >>> [round(c, 4) for c in changes if c is not None]  # a day at 100 %: z 1.5 * 1.4
    [0.9821]
    >>> memory = policy.start(0.9821)
    >>> changes = [policy.update(LaneObservation(memory, flagged=False)) for _ in range(32)]
    >>> [(round(c.value, 4), c.reason, round(c.evidence["z"], 3)) for c in sum(changes, [])]
    [(0.9791, 'astrolens v1.1', 2.036)]
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import norm

from processors.policies.plugins import LaneObservation, ThresholdChange, register

__all__ = ["AstroLensV11", "Static"]


@register("static")
@dataclass(frozen=True)
class Static:
    """Calibrated once (the controller's first calibration); never corrected afterwards."""

    name: str = "static"
    self_correcting: bool = False

    def start(self, threshold: float) -> dict[str, float]:
        return {}

    def update(self, observation: LaneObservation) -> list[ThresholdChange]:
        return []


@register("astrolens")
@dataclass(frozen=True)
class AstroLensV11:
    """AstroLens v1.1's threshold rules, as a lane policy (see the module docstring)."""

    name: str = "astrolens"
    self_correcting: bool = False
    cycle: int = 32
    day: int = 128
    quiet_factor: float = 0.97
    flood_factor: float = 1.4
    drought_factor: float = 0.9
    flood_rate: float = 0.10
    drought_rate: float = 0.003
    floor: float = 1.5
    ceiling: float = 5.0

    @staticmethod
    def start(threshold: float) -> dict[str, float]:
        """State for a fresh calibration whose (calibrated) threshold is ``threshold``."""
        z = float(norm.ppf(min(max(threshold, 1e-9), 1 - 1e-9)))
        return {"z": z, "cycle_n": 0, "cycle_flags": 0, "day_n": 0, "day_flags": 0}

    def update(self, observation: LaneObservation) -> list[ThresholdChange]:
        """The new threshold when one served image changed it (see :meth:`step`), else none.

        A lane without memory (its calibration was adopted from the log, not made by this
        controller since it started) is left alone.
        """
        state = observation.state
        if not state:
            return []
        value = self.step(state, observation.flagged)
        if value is None:
            return []
        return [ThresholdChange(value, "astrolens v1.1", {"z": float(state["z"])})]

    def step(self, state: dict[str, float], flagged: bool) -> float | None:
        """Account one served image; the new calibrated threshold when it changed, else None."""
        state["cycle_n"] += 1
        state["day_n"] += 1
        state["cycle_flags"] += int(flagged)
        state["day_flags"] += int(flagged)
        z = state["z"]
        if state["cycle_n"] >= self.cycle:
            if state["cycle_flags"] == 0:
                z *= self.quiet_factor
            state["cycle_n"] = state["cycle_flags"] = 0
        if state["day_n"] >= self.day:
            rate = state["day_flags"] / state["day_n"]
            if rate > self.flood_rate:
                z *= self.flood_factor
            elif rate < self.drought_rate:
                z *= self.drought_factor
            state["day_n"] = state["day_flags"] = 0
        z = min(max(z, self.floor), self.ceiling)
        if z == state["z"]:
            return None
        state["z"] = z
        return float(norm.cdf(z))
