"""Typed parameters per control event type, over the flat ``params`` record of the log.

The Avro record keeps one flat, all-optional ``params`` (:class:`~processors.core.records.
ControlParams`) for every type, so the stored log never changes shape. Each event type reads only
some of its fields; the models here say which, with their types and ranges:

==========================================================  =====================================
type                                                        model
==========================================================  =====================================
``threshold.set``, ``threshold.decayed``                    :class:`ThresholdParams`
``calibration.updated``                                     :class:`CalibrationParams`
``drift.detected``                                          :class:`DriftParams`
``decisions.revised``                                       :class:`RevisionParams`
``source.weights_set``                                      :class:`WeightsParams`
``source.paused``, ``pipeline.paused``                      :class:`PauseParams`
``retrain.requested``                                       :class:`RetrainParams`
``model.*``                                                 :class:`ModelParams`
``calibration.requested``, ``*.resumed``, ``budget.deferred``  :class:`ReasonParams`
==========================================================  =====================================

Invariants:

- :meth:`from_params` never refuses: it applies exactly the defaults the fold always applied
  (an empty ``model_version`` is None, a missing ``vote_k`` is 1, ...), so folding the typed
  value gives the same state as folding the raw record did;
- :meth:`problems` says what is out of type or range (non-finite numbers, a threshold outside
  the calibrated [0, 1] scale, a canary fraction outside (0, 1], ...); an empty list means the
  params are valid for their type. :func:`params_problems` and :func:`params_valid` apply it to
  a whole event (an unknown type is a problem; params that do not parse are one too).

Example:
    >>> from processors.core.events import new_event
    >>> ev = new_event("threshold.set", "sky", "operator", {"thresholds": {"knn": 0.97}})
    >>> params_of(ev)
    ThresholdParams(model_version=None, thresholds={'knn': 0.97}, detector=None, value=None)
    >>> params_valid(ev)
    True
    >>> ThresholdParams.of(ev).thresholds["knn"]
    0.97
    >>> bad = new_event("model.canary_started", "v2", "c", {"fraction": float("nan")})
    >>> params_problems(bad)
    ['fraction nan is not in (0, 1]']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Self, cast

from processors.core.events import EventType
from processors.core.records import ControlEventRecord, ControlParams

__all__ = [
    "PARAMS_MODELS",
    "THRESHOLD_RANGE",
    "CalibrationParams",
    "DriftParams",
    "EventParams",
    "ModelParams",
    "PauseParams",
    "ReasonParams",
    "RetrainParams",
    "RevisionParams",
    "ThresholdParams",
    "WeightsParams",
    "params_of",
    "params_problems",
    "params_valid",
]


def _finite(
    name: str, value: float | None, low: float, high: float, *, open_low: bool = False
) -> list[str]:
    """Problems of an optional number that must be finite and in ``[low, high]``."""
    if value is None:
        return []
    if not isinstance(value, int | float) or isinstance(value, bool):
        return [f"{name} {value!r} is not a number"]
    below = value <= low if open_low else value < low
    if not math.isfinite(value) or below or value > high:
        return [f"{name} {value} is not in {'(' if open_low else '['}{low:g}, {high:g}]"]
    return []


THRESHOLD_RANGE = (-0.5, 1.5)
"""Where a calibration's per-detector threshold may lie. Calibrated scores are in [0, 1], but a
threshold just outside them is meaningful: a calibration on ``m`` held-out images picks from
the grid ``(j + 0.5) / m``, ``j = -1 .. m``
(:meth:`~processors.ood.ensemble.OODEnsemble.thresholds_for_fpr`), so ``-0.5 / m`` flags every
image and ``1 + 0.5 / m`` none (measured: 1.05 from a 20-image reference); with ``m >= 1`` the
grid lies in this range. An operator's or a policy's ``threshold.set`` stays on [0, 1]
(:func:`params_problems`)."""


def _unit_map(name: str, values: Mapping[str, float]) -> list[str]:
    """Problems of per-detector thresholds: each finite and within :data:`THRESHOLD_RANGE`."""
    low, high = THRESHOLD_RANGE
    return [p for key, v in sorted(values.items()) for p in _finite(f"{name}[{key}]", v, low, high)]


@dataclass(frozen=True)
class EventParams:
    """Base of the per-type models; the empty model (no field read) is always valid."""

    TYPES: ClassVar[tuple[EventType, ...]] = ()

    @classmethod
    def from_params(cls, p: ControlParams) -> EventParams:
        return cls()

    @classmethod
    def of(cls, event: ControlEventRecord) -> Self:
        """``event``'s params as this model; ValueError when its type is not one of ``TYPES``."""
        if event["type"] not in cls.TYPES:
            raise ValueError(f"{event['type']!r} params are not {cls.__name__}")
        return cast(Self, cls.from_params(event["params"]))

    def problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class ReasonParams(EventParams):
    """Events that carry only a free-text ``reason``."""

    TYPES: ClassVar[tuple[EventType, ...]] = (
        EventType.CALIBRATION_REQUESTED,
        EventType.REVISION_REQUESTED,
        EventType.SOURCE_RESUMED,
        EventType.PIPELINE_RESUMED,
        EventType.BUDGET_DEFERRED,
    )
    reason: str | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> ReasonParams:
        return cls(p.get("reason") or None)


@dataclass(frozen=True)
class ThresholdParams(EventParams):
    """An override for the subject source: ``model_version`` None means for whatever serves.

    ``thresholds`` (per detector) and/or one ``detector`` with its ``value``; all on [0, 1].
    """

    TYPES: ClassVar[tuple[EventType, ...]] = (
        EventType.THRESHOLD_SET,
        EventType.THRESHOLD_DECAYED,
    )
    model_version: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    detector: str | None = None
    value: float | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> ThresholdParams:
        return cls(
            p.get("model_version") or None,
            dict(p.get("thresholds") or {}),
            p.get("detector") or None,
            p.get("value"),
        )

    def problems(self) -> list[str]:
        return _unit_map("thresholds", self.thresholds) + _finite("value", self.value, 0, 1)


@dataclass(frozen=True)
class CalibrationParams(EventParams):
    """A (model, source) reference set and its thresholds at ``target_fpr`` with ``vote_k``."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.CALIBRATION_UPDATED,)
    model_version: str = ""
    artifact_id: str = ""
    target_fpr: float = 0.0
    vote_k: int = 1
    thresholds: Mapping[str, float] = field(default_factory=dict)
    profile_id: str | None = None
    reason: str | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> CalibrationParams:
        return cls(
            p.get("model_version") or "",
            p.get("artifact_id") or "",
            float(p.get("target_fpr") or 0.0),
            int(p.get("vote_k") or 1),
            dict(p.get("thresholds") or {}),
            (p.get("extra") or {}).get("drift_profile"),
            p.get("reason") or None,
        )

    def problems(self) -> list[str]:
        # 0 means "not stated": calibrations of older logs carry no target_fpr
        found = _finite("target_fpr", self.target_fpr, 0, 1)
        found += [] if self.vote_k >= 1 else [f"vote_k {self.vote_k} < 1"]
        return found + _unit_map("thresholds", self.thresholds)


@dataclass(frozen=True)
class DriftParams(EventParams):
    """A drift of ``model_version`` on the subject source; ``extra`` names the windows."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.DRIFT_DETECTED,)
    model_version: str | None = None
    reason: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, p: ControlParams) -> DriftParams:
        extra = dict(p.get("extra") or {})
        return cls(p.get("model_version") or None, p.get("reason") or None, extra)


@dataclass(frozen=True)
class RevisionParams(EventParams):
    """Served decisions of ``model_version`` on the subject source decided again under the
    calibration ``extra["calibration"]`` (the drift's recalibration); ``artifact_id`` names the
    list of revised decisions, ``extra["revision"]`` is the lane's revision number."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.DECISIONS_REVISED,)
    model_version: str | None = None
    artifact_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_params(cls, p: ControlParams) -> RevisionParams:
        return cls(p.get("model_version") or None, p.get("artifact_id"), dict(p.get("extra") or {}))

    def problems(self) -> list[str]:
        revision = self.extra.get("revision", "")
        found = (
            []
            if revision.isdigit() and int(revision) >= 1
            else [f"extra.revision {revision!r} is not a number >= 1"]
        )
        return found + ([] if self.extra.get("calibration") else ["extra.calibration missing"])


@dataclass(frozen=True)
class WeightsParams(EventParams):
    """Source weights (finite, >= 0): all of them (subject ``pipeline``) or one source's."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.SOURCE_WEIGHTS_SET,)
    weights: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_params(cls, p: ControlParams) -> WeightsParams:
        return cls(dict(p.get("weights") or {}))

    def problems(self) -> list[str]:
        return [
            problem
            for name, weight in sorted(self.weights.items())
            for problem in _finite(f"weights[{name}]", weight, 0, math.inf)
        ]


@dataclass(frozen=True)
class PauseParams(EventParams):
    """Why and until when (None: until resumed) a source or the pipeline pauses."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.SOURCE_PAUSED, EventType.PIPELINE_PAUSED)
    reason: str | None = None
    until: datetime | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> PauseParams:
        return cls(p.get("reason") or None, p.get("until"))

    def problems(self) -> list[str]:
        if self.until is not None and not isinstance(self.until, datetime):
            return [f"until {self.until!r} is not a time"]
        return []


@dataclass(frozen=True)
class RetrainParams(EventParams):
    """A training request for the dataset manifest ``extra["manifest"]`` (an artifact id)."""

    TYPES: ClassVar[tuple[EventType, ...]] = (EventType.RETRAIN_REQUESTED,)
    manifest: str = ""
    reason: str | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> RetrainParams:
        return cls((p.get("extra") or {}).get("manifest", ""), p.get("reason") or None)

    def problems(self) -> list[str]:
        return [] if self.manifest else ["extra.manifest missing"]


@dataclass(frozen=True)
class ModelParams(EventParams):
    """A model lifecycle step of ``model_version`` (None: the subject is the version).

    ``kind`` (``extra["kind"]``) and the weights matter at registration; ``fraction`` (of the
    images, (0, 1]) at a canary start; None means the fold's default.
    """

    TYPES: ClassVar[tuple[EventType, ...]] = tuple(t for t in EventType if t.is_model_event)
    model_version: str | None = None
    backbone: str | None = None
    artifact_id: str | None = None
    kind: str | None = None
    fraction: float | None = None
    reason: str | None = None

    @classmethod
    def from_params(cls, p: ControlParams) -> ModelParams:
        return cls(
            p.get("model_version") or None,
            p.get("backbone"),
            p.get("artifact_id"),
            (p.get("extra") or {}).get("kind"),
            p.get("fraction"),
            p.get("reason") or None,
        )

    def problems(self) -> list[str]:
        found = _finite("fraction", self.fraction, 0, 1, open_low=True)
        if self.kind not in (None, "scorer", "detector"):
            found.append(f"kind {self.kind!r} is not scorer or detector")
        return found


#: the model of each event type's params
PARAMS_MODELS: Mapping[EventType, type[EventParams]] = {
    t: model
    for model in (
        ReasonParams,
        ThresholdParams,
        CalibrationParams,
        DriftParams,
        RevisionParams,
        WeightsParams,
        PauseParams,
        RetrainParams,
        ModelParams,
    )
    for t in model.TYPES
}


def params_of(event: ControlEventRecord) -> EventParams | None:
    """The typed params of ``event`` (None for a type this version does not know)."""
    model = PARAMS_MODELS.get(event["type"])  # type: ignore[call-overload]
    return None if model is None else model.from_params(event["params"])


def params_problems(event: ControlEventRecord) -> list[str]:
    """What makes ``event``'s params invalid for its type; empty when they are valid."""
    if event["type"] not in PARAMS_MODELS:
        return [f"unknown event type {event['type']!r}"]
    try:
        params = params_of(event)
    except (TypeError, ValueError, AttributeError) as exc:
        return [f"params do not parse: {exc}"]
    found = [] if params is None else params.problems()
    if isinstance(params, ThresholdParams) and event["type"] == EventType.THRESHOLD_SET:
        # an override is a calibrated score: [0, 1]; only calibrations use the wider grid
        found += [
            p
            for key, v in sorted(params.thresholds.items())
            for p in _finite(f"thresholds[{key}]", v, 0, 1)
            if p not in found
        ]
    return found


def params_valid(event: ControlEventRecord) -> bool:
    """Whether ``event``'s params are valid for its type (finite, in range)."""
    return not params_problems(event)
