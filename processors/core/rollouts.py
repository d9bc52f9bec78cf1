"""Model lifecycle in the control fold: registration, gate, shadow, canary, promotion, rollback.

Two kinds of model go through the same lifecycle, each with its own :class:`Rollout`:
``scorer`` (a backbone and weights the scoring processor runs) and ``detector`` (a YOLO
localizer the detect processor runs). A model's kind is fixed when it is registered
(``model.registered`` with ``extra["kind"]``; default ``scorer``); later events name only its
version.

Rules the fold enforces, so that no processor has to re-check them:

- ``model.shadow_started`` needs no gate: a shadow never serves (a scoring model's gate is
  judged on its shadow records, see :mod:`processors.policies.rollout`). A version whose gate
  failed, or that was rolled back, is not put back in shadow.
- ``model.canary_started`` and ``model.promoted`` take effect only for a version whose latest
  gate verdict is ``passed``: a model that failed its gate, or was never gated, never serves.
- ``model.gate_failed`` and ``model.rolled_back`` take the version out of shadow and canary at
  once; a rolled-back *production* version hands production back to the version it replaced.
- ``model.promoted`` makes the version production and ends its shadow and canary.

Pure: no I/O, no clock; the same events in the same order give the same rollouts.

Example:
    >>> from processors.core.control import ControlState, new_event
    >>> reg = {"model_version": "yolo@1", "extra": {"kind": "detector"}}
    >>> s = ControlState.initial().apply(new_event("model.registered", "yolo@1", "t", reg), 0)
    >>> canary = {"model_version": "yolo@1", "fraction": 0.2}
    >>> s = s.apply(new_event("model.canary_started", "yolo@1", "c", canary), 1)
    >>> s.detector.canary is None  # never gated: never serves
    True
    >>> s = s.apply(new_event("model.gate_passed", "yolo@1", "t", {"model_version": "yolo@1"}), 2)
    >>> s = s.apply(new_event("model.canary_started", "yolo@1", "c", canary), 3)
    >>> s.detector.canary.version, s.detector.canary.fraction, s.canary
    ('yolo@1', 0.2, None)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, TypeVar

from processors.core.records import ControlParams

if TYPE_CHECKING:
    from processors.core.control import ControlState

__all__ = [
    "MODEL_KINDS",
    "ModelKind",
    "ModelSlot",
    "Rollout",
    "apply_model_event",
    "canary_point",
    "routes_to_canary",
]

V = TypeVar("V")
ModelKind = Literal["scorer", "detector"]
MODEL_KINDS: tuple[ModelKind, ...] = ("scorer", "detector")


@dataclass(frozen=True)
class ModelSlot:
    """A model version in a role: its backbone name (scorers), weights artifact and kind."""

    version: str
    backbone: str | None
    artifact_id: str | None = None
    fraction: float = 1.0
    kind: ModelKind = "scorer"


@dataclass(frozen=True)
class Rollout:
    """The serving roles of one kind of model. ``replaced`` is what production was before."""

    production: ModelSlot | None = None
    shadow: ModelSlot | None = None
    canary: ModelSlot | None = None
    replaced: ModelSlot | None = None

    def role_of(self, version: str) -> str | None:
        """``production``, ``canary`` or ``shadow`` when ``version`` holds that role, else None."""
        for role in ("production", "canary", "shadow"):
            slot = getattr(self, role)
            if slot is not None and slot.version == version:
                return role
        return None

    def without(self, version: str) -> Rollout:
        """This rollout with ``version`` out of shadow and canary."""
        shadow = None if self.shadow and self.shadow.version == version else self.shadow
        canary = None if self.canary and self.canary.version == version else self.canary
        return replace(self, shadow=shadow, canary=canary)


def canary_point(image_id: str) -> float:
    """The image's fixed point in ``[0, 1)``: the first 32 bits of sha256(image_id) / 2**32.

    Example:
        >>> canary_point("abc") == int(hashlib.sha256(b"abc").hexdigest()[:8], 16) / 2**32
        True
    """
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 2**32


def routes_to_canary(image_id: str, fraction: float) -> bool:
    """Whether a canary with traffic ``fraction`` takes this image (``canary_point < fraction``)."""
    return canary_point(image_id) < fraction


def _kind_of(value: str | None) -> ModelKind:
    return "detector" if value == "detector" else "scorer"


def apply_model_event(
    base: ControlState, kind: str, subject: str, p: ControlParams
) -> ControlState:
    """Fold one ``model.*`` event into ``base`` (see the module docstring for the rules)."""
    version = p.get("model_version") or subject
    known = base.registered.get(version)
    model_kind = known.kind if known else _kind_of((p.get("extra") or {}).get("kind"))
    slot = known or ModelSlot(version, p.get("backbone"), p.get("artifact_id"), kind=model_kind)
    rollout = base.rollout(model_kind)
    gate = base.gates.get(version)
    retired = version in base.rolled_back
    if kind == "model.registered":
        return replace(base, registered=_put(base.registered, version, slot))
    if kind == "model.gate_passed":
        return replace(base, gates=_put(base.gates, version, True))
    if kind == "model.gate_failed":
        base = replace(base, gates=_put(base.gates, version, False))
        return base.with_rollout(model_kind, rollout.without(version))
    if kind == "model.shadow_started":
        if gate is False or retired:
            return base
        return base.with_rollout(model_kind, replace(rollout, shadow=slot))
    if kind == "model.canary_started":
        if gate is not True or retired:
            return base
        canary = replace(slot, fraction=float(p.get("fraction") or 0.1))
        return base.with_rollout(model_kind, replace(rollout, canary=canary))
    if kind == "model.promoted":
        if gate is not True:
            return base
        promoted = replace(slot, fraction=1.0)
        return base.with_rollout(
            model_kind, Rollout(production=promoted, replaced=rollout.production)
        )
    if kind == "model.rolled_back":
        base = replace(base, rolled_back=_put(base.rolled_back, version, True))
        after = rollout.without(version)
        if rollout.production is not None and rollout.production.version == version:
            after = replace(after, production=rollout.replaced, replaced=None)
        return base.with_rollout(model_kind, after)
    return base


def _put(mapping: Mapping[str, V], key: str, value: V) -> Mapping[str, V]:
    return MappingProxyType({**mapping, key: value})
