"""The one interface of the self-correction policies: ``update(observation) -> decisions``.

Every policy in :mod:`processors.policies` is a frozen, configured object with one entry point,
River-style: :meth:`Policy.update` takes one observation (the evidence: a window's counts, a
served image, a model's outputs so far) and returns the decisions it makes, a list that is
empty when nothing is due. Invariants every policy keeps:

- pure: no I/O and no clock (times come in the observation, from the records);
- deterministic: the same observations in the same order give the same decisions, so a
  replayed controller makes the decisions it made before;
- a policy that needs memory across observations keeps it in a state object named in the
  observation (a :class:`~processors.policies.health.HealthState`, a
  :class:`~processors.policies.rollout.RolloutTrack`, a lane's ``policy`` dict), never in
  itself: the caller stores that state durably (the controller's tables), the policy stays a
  value that settings build.

The policies' finer methods (``due``, ``weight``, ``pause_for``, ``observe``, ...) stay as
their documented building blocks; the controller (:mod:`processors.controller`) calls
``update``.

Example:
    >>> from processors.policies.sources import ErrorBackoff, BackoffWindow
    >>> policy: Policy[BackoffWindow, float] = ErrorBackoff()
    >>> policy.update(BackoffWindow(errors=30, items=100, pauses=1))
    [60.0]
    >>> isinstance(policy, Policy)
    True
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

__all__ = ["Policy"]

ObservationT = TypeVar("ObservationT", contravariant=True)
DecisionT = TypeVar("DecisionT")


@runtime_checkable
class Policy(Protocol[ObservationT, DecisionT]):
    """Evidence in, decisions out (see the module docstring for the invariants)."""

    def update(self, observation: ObservationT) -> list[DecisionT]:
        """The decisions ``observation`` completes; empty when nothing is due."""
        ...
