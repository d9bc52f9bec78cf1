"""The serving roles of models: :class:`ModelSlot`, :class:`Rollout`, and canary routing.

Two kinds of model go through the same lifecycle, each with its own :class:`Rollout`:
``scorer`` (a backbone and weights the scoring processor runs) and ``detector`` (a YOLO
localizer the detect processor runs). A model's kind is fixed when it is registered
(``model.registered`` with ``extra["kind"]``; default ``scorer``); later events name only its
version.

Plain immutable data and pure functions. The ``model.*`` events are folded into these by
:mod:`processors.core.control` (the rules are stated there, beside the rest of the fold); this
module imports nothing of the fold, so the fold may import it.

Example:
    >>> rollout = Rollout(production=ModelSlot("v1", "effnet"), shadow=ModelSlot("v2", "effnet"))
    >>> rollout.role_of("v2"), rollout.without("v2").shadow
    ('shadow', None)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "MODEL_KINDS",
    "ModelKind",
    "ModelSlot",
    "Rollout",
    "canary_point",
    "routes_to_canary",
]

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
