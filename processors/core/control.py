"""ControlState: the pure fold of ``control.events`` that every processor keeps.

``state = reduce(apply, events, ControlState.initial())``. ``apply`` has no I/O and no clock:
the same log always yields the same state (the replay-determinism invariant), so a processor
that restarts rebuilds exactly the decisions it had. Unknown event types are kept in the count
but change nothing, so old processors survive new event types.

The fold is a table, :data:`FOLD`: a handler per :class:`~processors.core.events.EventType`
reading its typed params (:mod:`processors.core.event_params`); a type without one changes only
the count. The model lifecycle (``model.*``) is folded here too, by the rules of
:func:`_fold_model`. Before a handler runs, :mod:`processors.core.fold_guard` may refuse the
event (its rule table): a refused event only moves ``offset`` and adds to ``events_refused`` and
``refusals``. Imported here: the vocabulary, the typed params, the guard, the rollout data
(:mod:`processors.core.rollouts`); none of them imports this module back.

Example:
    >>> from datetime import UTC, datetime
    >>> ev = new_event("threshold.set", "sky", "operator", {"thresholds": {"knn": 0.97}})
    >>> state = ControlState.initial().apply(ev, offset=0)
    >>> state.threshold_for("any-model", "sky", "knn", default=0.5)
    0.97
    >>> until = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    >>> params = {"reason": "errors", "until": until}
    >>> pause = new_event("source.paused", "sky", "controller", params)
    >>> state = state.apply(pause, offset=1)
    >>> state.is_source_paused("sky", now=until.replace(hour=11)), state.is_source_paused(
    ...     "sky", now=until)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, TypeVar

from processors.core.event_params import (
    CalibrationParams,
    ModelParams,
    PauseParams,
    ThresholdParams,
    WeightsParams,
)
from processors.core.events import EVENT_TYPES, EventType, decision_id, new_event
from processors.core.fold_guard import REFUSALS_KEPT, Refusal, refusal_of, refusal_reason
from processors.core.records import ControlEventRecord
from processors.core.rollouts import ModelKind, ModelSlot, Rollout

__all__ = [
    "EVENT_TYPES",
    "FOLD",
    "Calibration",
    "ControlState",
    "EventType",
    "ModelSlot",
    "Pause",
    "Refusal",
    "RevisionRequest",
    "Rollout",
    "decision_id",
    "new_event",
    "replay",
]

V = TypeVar("V")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Calibration:
    """One source's reference set under one model, and its thresholds at a target FPR.

    Calibration is per (model, source): every source has its own notion of normal (a synthetic
    star field, an RGB Hubble cutout and a ZTF difference image share nothing), so one pooled
    reference would flag whole sources as anomalous.
    """

    model_version: str
    source: str
    artifact_id: str
    target_fpr: float
    vote_k: int
    thresholds: Mapping[str, float]
    event_id: str
    profile_id: str | None = None


@dataclass(frozen=True)
class Pause:
    """Why and until when something is paused; ``until`` None means until resumed.

    ``issued_by`` tells an operator's pause from the controller's: the controller lifts only
    its own pauses when their back-off ends; an operator's stays until an operator resumes.
    """

    reason: str
    until: datetime | None
    event_id: str
    issued_by: str

    def active(self, now: datetime | None) -> bool:
        """Paused at ``now`` (None: ignore ``until``, paused until a resume event)."""
        return self.until is None or now is None or now < self.until


@dataclass(frozen=True)
class RevisionRequest:
    """A source's newest ``revision.requested``: ``calibrations`` are the event ids of the
    source's calibrations folded before it. It applies to a revision waiting for one of them
    only, so a request never makes a later drift's revision early."""

    event_id: str
    at: datetime
    calibrations: tuple[str, ...]


@dataclass(frozen=True)
class ControlState:
    """Immutable; ``apply`` returns a new state. ``offset`` is the last folded log offset.

    ``events_applied`` + ``events_refused`` events were folded; ``refusals`` are the last
    ``REFUSALS_KEPT`` refused ones, oldest first, with their reasons.
    """

    offset: int = -1
    events_applied: int = 0
    events_refused: int = 0
    refusals: tuple[Refusal, ...] = ()
    calibrations: Mapping[str, Calibration] = field(default_factory=lambda: _EMPTY)
    source_thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: _EMPTY)
    source_weights: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    paused_sources: Mapping[str, Pause] = field(default_factory=lambda: _EMPTY)
    calibration_requests: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    revision_requests: Mapping[str, RevisionRequest] = field(default_factory=lambda: _EMPTY)
    # the scoring model's rollout (the detector's is ``detector``); see processors.core.rollouts
    production: ModelSlot | None = None
    shadow: ModelSlot | None = None
    canary: ModelSlot | None = None
    replaced: ModelSlot | None = None
    detector: Rollout = field(default_factory=Rollout)
    registered: Mapping[str, ModelSlot] = field(default_factory=lambda: _EMPTY)
    gates: Mapping[str, bool] = field(default_factory=lambda: _EMPTY)
    rolled_back: Mapping[str, bool] = field(default_factory=lambda: _EMPTY)
    pipeline_paused: Pause | None = None
    drift_events: int = 0

    @staticmethod
    def initial() -> ControlState:
        return ControlState()

    # -- queries -----------------------------------------------------------------------------
    def calibration_for(self, model_version: str, source: str) -> Calibration | None:
        return self.calibrations.get(f"{model_version}|{source}")

    def threshold_for(
        self, model_version: str, source: str, detector: str, default: float
    ) -> float:
        """The (model, source) override when set, else a model-less one, else ``default``.

        ``default`` is the calibration's own threshold. Overrides are keyed
        ``"<model_version>|<source>"``; a ``threshold.set`` without ``model_version`` (an
        operator's, for whatever model serves) is keyed ``"*|<source>"``.
        """
        exact = self.source_thresholds.get(f"{model_version}|{source}", _EMPTY)
        if detector in exact:
            return exact[detector]
        return self.source_thresholds.get(f"*|{source}", _EMPTY).get(detector, default)

    def is_source_paused(self, source: str, now: datetime | None = None) -> bool:
        """Whether ``source`` is paused at ``now`` (None: until a ``source.resumed``)."""
        pause = self.paused_sources.get(source)
        return pause is not None and pause.active(now)

    def rollout(self, kind: ModelKind) -> Rollout:
        """The serving roles of ``kind`` (``scorer`` or ``detector``)."""
        if kind == "detector":
            return self.detector
        return Rollout(self.production, self.shadow, self.canary, self.replaced)

    def with_rollout(self, kind: ModelKind, rollout: Rollout) -> ControlState:
        if kind == "detector":
            return replace(self, detector=rollout)
        return replace(
            self,
            production=rollout.production,
            shadow=rollout.shadow,
            canary=rollout.canary,
            replaced=rollout.replaced,
        )

    def has_operator_threshold(self, source: str) -> bool:
        """An operator's model-less ``threshold.set`` for ``source`` is in force."""
        return f"*|{source}" in self.source_thresholds

    # -- the fold ----------------------------------------------------------------------------
    def apply(self, event: ControlEventRecord, offset: int) -> ControlState:
        """Fold one event. Pure: depends only on ``self``, ``event`` and ``offset``; never raises.

        An accepted event counts in ``events_applied`` (an unknown type changes nothing else);
        one the guard refuses, or whose handler raises, only in ``events_refused``/``refusals``.
        """
        reason = refusal_reason(self, event)
        if reason is None:
            base = replace(self, offset=offset, events_applied=self.events_applied + 1)
            handler = FOLD.get(event["type"])  # type: ignore[call-overload]
            try:
                return base if handler is None else handler(base, event)
            except Exception as exc:  # a gap in the guard must not stop every processor
                reason = f"the fold raised {type(exc).__name__}: {exc}"
        refusals = (*self.refusals, refusal_of(event, offset, reason))[-REFUSALS_KEPT:]
        return replace(
            self, offset=offset, events_refused=self.events_refused + 1, refusals=refusals
        )

    def fingerprint(self) -> str:
        """A stable digest of the decision-relevant state (equal states, equal digests)."""
        import hashlib
        import json

        def plain(obj: Any) -> Any:
            if isinstance(obj, Mapping):
                return {str(k): plain(v) for k, v in sorted(obj.items())}
            if hasattr(obj, "__dataclass_fields__"):
                return {k: plain(getattr(obj, k)) for k in sorted(obj.__dataclass_fields__)}
            if isinstance(obj, datetime):
                return obj.isoformat()
            return [plain(v) for v in obj] if isinstance(obj, tuple) else obj

        return hashlib.sha256(json.dumps(plain(self), sort_keys=True).encode()).hexdigest()


# -- the fold: one handler per event type ------------------------------------------------------
#: ``handler(base, event)``: ``base`` is the state with the event already counted
Handler = Callable[[ControlState, ControlEventRecord], ControlState]


def _fold_threshold(base: ControlState, event: ControlEventRecord) -> ControlState:
    """``threshold.set`` / ``threshold.decayed``: an override keyed ``"<model or *>|<source>"``."""
    p, subject = ThresholdParams.from_params(event["params"]), event["subject"]
    key = f"{p.model_version or '*'}|{subject}"
    current = dict(base.source_thresholds.get(key, _EMPTY))
    if p.thresholds:
        current.update(p.thresholds)
    if p.detector and p.value is not None:
        current[str(p.detector)] = float(p.value)
    kept = base.source_thresholds
    if key.startswith("*|"):
        # A model-less override is the latest word for the source: it replaces the
        # per-model ones set before it (a decay must not outrank an operator).
        kept = {k: v for k, v in kept.items() if not k.endswith(f"|{subject}")}
    return replace(base, source_thresholds=_frozen({**kept, key: _frozen(current)}))


def _fold_calibration(base: ControlState, event: ControlEventRecord) -> ControlState:
    """``calibration.updated``: the (model, source) calibration, superseding its overrides."""
    p, subject = CalibrationParams.from_params(event["params"]), event["subject"]
    cal = Calibration(
        model_version=p.model_version,
        source=subject,
        artifact_id=p.artifact_id,
        target_fpr=p.target_fpr,
        vote_k=p.vote_k,
        thresholds=_frozen(p.thresholds),
        event_id=event["event_id"],
        profile_id=p.profile_id,
    )
    # A new calibration supersedes this (model, source)'s overrides made against the old
    # reference; other models' overrides (and model-less operator ones) stay.
    stale = f"{p.model_version}|{subject}"
    remaining = {k: v for k, v in base.source_thresholds.items() if k != stale}
    # A calibration caused by an operator's request answers it.
    answered = set(event["caused_by"])
    requests = {k: v for k, v in base.calibration_requests.items() if v not in answered}
    return replace(
        base,
        calibrations=_frozen({**base.calibrations, stale: cal}),
        source_thresholds=_frozen(remaining),
        calibration_requests=_frozen(requests),
    )


def _fold_calibration_request(base: ControlState, event: ControlEventRecord) -> ControlState:
    requests = {**base.calibration_requests, event["subject"]: event["event_id"]}
    return replace(base, calibration_requests=_frozen(requests))


def _fold_revision_request(base: ControlState, event: ControlEventRecord) -> ControlState:
    source = event["subject"]
    ids = tuple(sorted(c.event_id for c in base.calibrations.values() if c.source == source))
    request = RevisionRequest(event["event_id"], event["at"], ids)
    return replace(base, revision_requests=_put(base.revision_requests, source, request))


def _fold_drift(base: ControlState, event: ControlEventRecord) -> ControlState:
    return replace(base, drift_events=base.drift_events + 1)


def _fold_weights(base: ControlState, event: ControlEventRecord) -> ControlState:
    """Subject ``pipeline``: the weights replace all; a source: its own weight changes."""
    weights = dict(WeightsParams.from_params(event["params"]).weights)
    merged = weights if event["subject"] == "pipeline" else {**base.source_weights, **weights}
    return replace(base, source_weights=_frozen(merged))


def _pause(event: ControlEventRecord) -> Pause:
    p = PauseParams.from_params(event["params"])
    return Pause(
        reason=p.reason or "paused",
        until=p.until,
        event_id=event["event_id"],
        issued_by=event["issued_by"],
    )


def _fold_source_paused(base: ControlState, event: ControlEventRecord) -> ControlState:
    paused = {**base.paused_sources, event["subject"]: _pause(event)}
    return replace(base, paused_sources=_frozen(paused))


def _fold_source_resumed(base: ControlState, event: ControlEventRecord) -> ControlState:
    still_paused = {k: v for k, v in base.paused_sources.items() if k != event["subject"]}
    return replace(base, paused_sources=_frozen(still_paused))


def _fold_pipeline_paused(base: ControlState, event: ControlEventRecord) -> ControlState:
    return replace(base, pipeline_paused=_pause(event))


def _fold_pipeline_resumed(base: ControlState, event: ControlEventRecord) -> ControlState:
    return replace(base, pipeline_paused=None)


def _fold_model(base: ControlState, event: ControlEventRecord) -> ControlState:
    """Fold one ``model.*`` event: registration, gate, shadow, canary, promotion, rollback.

    Rules the fold enforces, so that no processor has to re-check them:

    - ``model.shadow_started`` needs no gate: a shadow never serves (a scoring model's gate is
      judged on its shadow records, see :mod:`processors.policies.rollout`). A version whose
      gate failed, or that was rolled back, is not put back in shadow.
    - ``model.canary_started`` and ``model.promoted`` take effect only for a version whose
      latest gate verdict is ``passed``: a model that failed its gate, or was never gated,
      never serves.
    - ``model.gate_failed`` and ``model.rolled_back`` take the version out of shadow and canary
      at once; a rolled-back *production* version hands production back to the version it
      replaced.
    - ``model.promoted`` makes the version production and ends its shadow and canary.

    Example:
        >>> reg = {"model_version": "yolo@1", "extra": {"kind": "detector"}}
        >>> s = ControlState.initial().apply(new_event("model.registered", "yolo@1", "t", reg), 0)
        >>> canary = {"model_version": "yolo@1", "fraction": 0.2}
        >>> s = s.apply(new_event("model.canary_started", "yolo@1", "c", canary), 1)
        >>> s.detector.canary is None  # never gated: never serves
        True
        >>> passed = new_event("model.gate_passed", "yolo@1", "t", {"model_version": "yolo@1"})
        >>> s = s.apply(passed, 2)
        >>> s = s.apply(new_event("model.canary_started", "yolo@1", "c", canary), 3)
        >>> s.detector.canary.version, s.detector.canary.fraction, s.canary
        ('yolo@1', 0.2, None)
    """
    kind, p = event["type"], ModelParams.from_params(event["params"])
    version = p.model_version or event["subject"]
    known = base.registered.get(version)
    model_kind: ModelKind = known.kind if known else _kind_of(p.kind)
    slot = known or ModelSlot(version, p.backbone, p.artifact_id, kind=model_kind)
    rollout = base.rollout(model_kind)
    gate = base.gates.get(version)
    retired = version in base.rolled_back
    if kind == EventType.MODEL_REGISTERED:
        return replace(base, registered=_put(base.registered, version, slot))
    if kind == EventType.MODEL_GATE_PASSED:
        return replace(base, gates=_put(base.gates, version, True))
    if kind == EventType.MODEL_GATE_FAILED:
        base = replace(base, gates=_put(base.gates, version, False))
        return base.with_rollout(model_kind, rollout.without(version))
    if kind == EventType.MODEL_SHADOW_STARTED:
        if gate is False or retired:
            return base
        return base.with_rollout(model_kind, replace(rollout, shadow=slot))
    if kind == EventType.MODEL_CANARY_STARTED:
        if gate is not True or retired:
            return base
        canary = replace(slot, fraction=float(p.fraction or 0.1))
        return base.with_rollout(model_kind, replace(rollout, canary=canary))
    if kind == EventType.MODEL_PROMOTED:
        if gate is not True:
            return base
        promoted = replace(slot, fraction=1.0)
        return base.with_rollout(
            model_kind, Rollout(production=promoted, replaced=rollout.production)
        )
    # EventType.MODEL_ROLLED_BACK
    base = replace(base, rolled_back=_put(base.rolled_back, version, True))
    after = rollout.without(version)
    if rollout.production is not None and rollout.production.version == version:
        after = replace(after, production=rollout.replaced, replaced=None)
    return base.with_rollout(model_kind, after)


def _kind_of(value: str | None) -> ModelKind:
    return "detector" if value == "detector" else "scorer"


def _put(mapping: Mapping[str, V], key: str, value: V) -> Mapping[str, V]:
    return MappingProxyType({**mapping, key: value})


#: event type -> handler; a type absent here (``retrain.requested``, ``budget.deferred``,
#: ``decisions.revised``: it corrects stored decisions, not what anyone decides next; a type
#: from a newer version) is counted and changes nothing else
FOLD: Mapping[EventType, Handler] = MappingProxyType(
    {
        EventType.THRESHOLD_SET: _fold_threshold,
        EventType.THRESHOLD_DECAYED: _fold_threshold,
        EventType.CALIBRATION_UPDATED: _fold_calibration,
        EventType.CALIBRATION_REQUESTED: _fold_calibration_request,
        EventType.REVISION_REQUESTED: _fold_revision_request,
        EventType.DRIFT_DETECTED: _fold_drift,
        EventType.SOURCE_WEIGHTS_SET: _fold_weights,
        EventType.SOURCE_PAUSED: _fold_source_paused,
        EventType.SOURCE_RESUMED: _fold_source_resumed,
        EventType.PIPELINE_PAUSED: _fold_pipeline_paused,
        EventType.PIPELINE_RESUMED: _fold_pipeline_resumed,
        **{t: _fold_model for t in EventType if t.is_model_event},
    }
)


def replay(events: Iterable[tuple[int, ControlEventRecord]]) -> ControlState:
    """Fold ``(offset, event)`` pairs in log order from the initial state."""
    state = ControlState.initial()
    for offset, event in events:
        state = state.apply(event, offset)
    return state
