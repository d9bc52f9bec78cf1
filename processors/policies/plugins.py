"""Lane policies by name: the registry the ``control_policy`` setting selects from.

A *lane policy* decides what a (model, source) lane does with its served production scores
after its first calibration. The production one, ``skyloop``, is the controller's own
self-correction (drift, recalibration, refinement, decay, operator recalibration: it needs the
lane's ring and profiles, so :mod:`processors.controller` runs it; here it only says so with
``self_correcting``). Comparison policies for the benchmarks are plug-ins: they register
themselves under a name with :func:`register`, and the controller asks :func:`lane_policy` for
the configured name without knowing any of them. The benchmark baselines live in
:mod:`processors.policies.baselines`, imported only when a name not yet registered is asked
for (:data:`PLUGIN_MODULES`), so the production path never loads them.

Invariants: a name maps to one policy; a lane policy is pure and deterministic (the same
observations give the same threshold changes); its per-lane memory is the dict that
:meth:`LanePolicy.start` returns, kept by the caller in the lane's durable state.

Example:
    >>> lane_policy("skyloop").self_correcting
    True
    >>> static = lane_policy("static")  # loads the benchmark plug-ins on first use
    >>> static.self_correcting, static.update(LaneObservation(static.start(0.9), flagged=True))
    (False, [])
    >>> sorted(registered())
    ['astrolens', 'skyloop', 'static']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = [
    "PLUGIN_MODULES",
    "LaneObservation",
    "LanePolicy",
    "SelfCorrecting",
    "ThresholdChange",
    "lane_policy",
    "register",
    "registered",
]

#: modules that register lane policies when imported (benchmark baselines)
PLUGIN_MODULES: tuple[str, ...] = ("processors.policies.baselines",)


@dataclass(frozen=True)
class LaneObservation:
    """A served production score of a calibrated lane: its policy memory and whether it flagged.

    ``state`` is the lane's memory (what :meth:`LanePolicy.start` returned, mutated in place).
    """

    state: dict[str, float]
    flagged: bool


@dataclass(frozen=True)
class ThresholdChange:
    """A new threshold for every detector of the lane (calibrated scale), and why."""

    value: float
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)


class LanePolicy(Protocol):
    """A lane's threshold policy, registered under ``name``."""

    @property
    def name(self) -> str: ...

    @property
    def self_correcting(self) -> bool:
        """Whether the controller's own corrections (drift, decay, refinement, operator
        recalibration) run for this lane."""
        ...

    def start(self, threshold: float) -> dict[str, float]:
        """The lane's memory after a calibration whose highest threshold is ``threshold``."""
        ...

    def update(self, observation: LaneObservation) -> list[ThresholdChange]:
        """The threshold changes one served production score completes; empty when none."""
        ...


P = TypeVar("P", bound=Callable[[], LanePolicy])
_REGISTRY: dict[str, Callable[[], LanePolicy]] = {}


def register(name: str) -> Callable[[P], P]:
    """Register a factory (a class with defaults, usually) of the lane policy ``name``."""

    def add(factory: P) -> P:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"lane policy {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def registered() -> tuple[str, ...]:
    """The names registered so far (the plug-ins once any of them was asked for)."""
    return tuple(_REGISTRY)


def lane_policy(name: str) -> LanePolicy:
    """The lane policy registered as ``name``; raises ValueError for an unknown name."""
    if name not in _REGISTRY:
        for module in PLUGIN_MODULES:
            importlib.import_module(module)
    if name not in _REGISTRY:
        raise ValueError(f"unknown control policy {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]()


@register("skyloop")
@dataclass(frozen=True)
class SelfCorrecting:
    """The production policy: the controller's own corrections, no baseline threshold rule."""

    name: str = "skyloop"
    self_correcting: bool = True

    def start(self, threshold: float) -> dict[str, float]:
        return {}

    def update(self, observation: LaneObservation) -> list[ThresholdChange]:
        return []
