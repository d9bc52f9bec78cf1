"""Which model scores which image, and in which role: production, shadow and canary.

Pure (no I/O, no clock): the plan depends only on the images (id, source) and the
``ControlState`` snapshot, so every scorer instance, and every replay, routes alike.

Roles name the slot that produced a ScoreRecord:

- ``production``: the production model (``state.production``, else the configured backbone);
- ``shadow``: the shadow model (``state.shadow``); scored for every image, never served;
- ``canary``: the canary model (``state.canary`` with traffic fraction ``f``) on the images whose
  hash point ``int(sha256(image_id)[:8], 16) / 2**32`` is below ``f`` (the same image is always
  routed the same way, and raising ``f`` only adds images to the canary's share).

The served decision of an image is exactly one record: the canary's when the image is
canary-routed *and* the canary has a calibration for the image's source; the production
model's otherwise. A canary-routed image whose source the canary has not calibrated yet is
served by production and also gets an uncalibrated canary record (never a candidate); those
records fill the canary's reference window, so the controller can calibrate it. Nothing ever
waits for a shadow or canary calibration. An image the canary serves is also scored by
production, unserved (role ``shadow``, production's version: ``paired``): the canary's health
is judged against production's verdicts on the same images. Production's features are computed
for the whole batch anyway, so the pair costs only its OOD decisions.

Example:
    >>> from processors.core.control import ControlState, ModelSlot
    >>> state = ControlState(canary=ModelSlot("v2", "efficientnet_lite0", fraction=0.5))
    >>> plan = plan_roles(["a", "b", "c"], ["sky"] * 3, state, production_version="v1")
    >>> [(a.model_version, a.role, a.rows, a.served) for a in plan]  # v2 not calibrated yet
    [('v1', 'production', (0, 1, 2), True), ('v2', 'canary', (1, 2), False)]
    >>> from processors.core.control import Calibration
    >>> cal = Calibration("v2", "sky", "a" * 64, 0.05, 2, {}, "e1")
    >>> state = ControlState(canary=state.canary, calibrations={"v2|sky": cal})
    >>> plan = plan_roles(["a", "b", "c"], ["sky"] * 3, state, production_version="v1")
    >>> for a in plan:
    ...     print(a.model_version, a.role, a.rows, a.served, a.paired)
    v1 production (0,) True False
    v2 canary (1, 2) True False
    v1 shadow (1, 2) False True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from processors.core.control import ControlState, ModelSlot

__all__ = ["Assignment", "Role", "canary_point", "plan_roles", "routes_to_canary"]

Role = Literal["production", "shadow", "canary"]


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


@dataclass(frozen=True)
class Assignment:
    """One model scores ``rows`` (indices into the batch, ascending) and stamps ``role``.

    ``served`` is True when these records are the images' served decisions.
    """

    model_version: str
    role: Role
    rows: tuple[int, ...]
    served: bool
    slot: ModelSlot | None = None
    paired: bool = False  # production's unserved verdicts on the canary's images


def plan_roles(
    image_ids: Sequence[str],
    sources: Sequence[str],
    state: ControlState,
    production_version: str,
) -> list[Assignment]:
    """The assignments for one batch: production first, then canary (served, then not), shadow.

    Every row is in exactly one served assignment. Empty assignments are left out. A shadow or
    canary slot naming the production version is ignored (it would duplicate production).
    """
    n = len(image_ids)
    if len(sources) != n:
        raise ValueError(f"{n} image ids but {len(sources)} sources")
    canary = state.canary
    if canary is not None and (canary.version == production_version or canary.fraction <= 0):
        canary = None
    shadow = state.shadow
    if shadow is not None and shadow.version == production_version:
        shadow = None
    production_rows: list[int] = []
    canary_served: list[int] = []
    canary_unserved: list[int] = []
    for i, (image_id, source) in enumerate(zip(image_ids, sources, strict=True)):
        if canary is not None and routes_to_canary(image_id, canary.fraction):
            if state.calibration_for(canary.version, source) is not None:
                canary_served.append(i)
                continue
            canary_unserved.append(i)
        production_rows.append(i)
    plan = [
        Assignment(production_version, "production", tuple(production_rows), True, state.production)
    ]
    if canary is not None:
        plan.append(Assignment(canary.version, "canary", tuple(canary_served), True, canary))
        plan.append(
            Assignment(
                production_version,
                "shadow",
                tuple(canary_served),
                False,
                state.production,
                paired=True,
            )
        )
        plan.append(Assignment(canary.version, "canary", tuple(canary_unserved), False, canary))
    if shadow is not None:
        plan.append(Assignment(shadow.version, "shadow", tuple(range(n)), False, shadow))
    return [a for a in plan if a.rows]
