"""ControlState: the pure fold of ``control.events`` that every processor keeps.

``state = reduce(apply, events, ControlState.initial())``. ``apply`` has no I/O and no clock:
the same log always yields the same state (the replay-determinism invariant), so a processor
that restarts rebuilds exactly the decisions it had. Unknown event types are kept in the count
but change nothing, so old processors survive new event types.

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

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from processors.core.records import ControlEventRecord, ControlParams
from processors.core.rollouts import ModelKind, ModelSlot, Rollout, apply_model_event

__all__ = [
    "EVENT_TYPES",
    "Calibration",
    "ControlState",
    "ModelSlot",
    "Pause",
    "Rollout",
    "decision_id",
    "new_event",
    "replay",
]

EVENT_TYPES = frozenset(
    {
        "threshold.set",
        "threshold.decayed",
        "calibration.updated",
        "calibration.requested",
        "drift.detected",
        "source.weights_set",
        "source.paused",
        "source.resumed",
        "retrain.requested",
        "model.registered",
        "model.gate_passed",
        "model.gate_failed",
        "model.shadow_started",
        "model.canary_started",
        "model.promoted",
        "model.rolled_back",
        "pipeline.paused",
        "pipeline.resumed",
        "budget.deferred",
    }
)

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
class ControlState:
    """Immutable; ``apply`` returns a new state. ``offset`` is the last applied log offset."""

    offset: int = -1
    events_applied: int = 0
    calibrations: Mapping[str, Calibration] = field(default_factory=lambda: _EMPTY)
    source_thresholds: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: _EMPTY)
    source_weights: Mapping[str, float] = field(default_factory=lambda: _EMPTY)
    paused_sources: Mapping[str, Pause] = field(default_factory=lambda: _EMPTY)
    calibration_requests: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
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
        """Fold one event. Pure: depends only on ``self``, ``event`` and ``offset``."""
        p: ControlParams = event["params"]
        kind, subject = event["type"], event["subject"]
        base = replace(self, offset=offset, events_applied=self.events_applied + 1)
        if kind in ("threshold.set", "threshold.decayed"):
            key = f"{p.get('model_version') or '*'}|{subject}"
            current = dict(self.source_thresholds.get(key, _EMPTY))
            if p.get("thresholds"):
                current.update(p["thresholds"] or {})
            if p.get("detector") and p.get("value") is not None:
                current[str(p["detector"])] = float(p["value"])  # type: ignore[arg-type]
            kept = self.source_thresholds
            if key.startswith("*|"):
                # A model-less override is the latest word for the source: it replaces the
                # per-model ones set before it (a decay must not outrank an operator).
                kept = {k: v for k, v in kept.items() if not k.endswith(f"|{subject}")}
            return replace(base, source_thresholds=_frozen({**kept, key: _frozen(current)}))
        if kind == "calibration.updated":
            version = p.get("model_version") or ""
            cal = Calibration(
                model_version=version,
                source=subject,
                artifact_id=p.get("artifact_id") or "",
                target_fpr=float(p.get("target_fpr") or 0.0),
                vote_k=int(p.get("vote_k") or 1),
                thresholds=_frozen(p.get("thresholds") or {}),
                event_id=event["event_id"],
                profile_id=(p.get("extra") or {}).get("drift_profile"),
            )
            # A new calibration supersedes this (model, source)'s overrides made against the old
            # reference; other models' overrides (and model-less operator ones) stay.
            stale = f"{version}|{subject}"
            remaining = {k: v for k, v in self.source_thresholds.items() if k != stale}
            # A calibration caused by an operator's request answers it.
            answered = set(event["caused_by"])
            requests = {k: v for k, v in self.calibration_requests.items() if v not in answered}
            return replace(
                base,
                calibrations=_frozen({**self.calibrations, f"{version}|{subject}": cal}),
                source_thresholds=_frozen(remaining),
                calibration_requests=_frozen(requests),
            )
        if kind == "calibration.requested":
            requests = {**self.calibration_requests, subject: event["event_id"]}
            return replace(base, calibration_requests=_frozen(requests))
        if kind == "drift.detected":
            return replace(base, drift_events=self.drift_events + 1)
        if kind == "source.weights_set":
            # subject "pipeline": the weights replace all; a source: its own weight changes.
            weights = dict(p.get("weights") or {})
            merged = weights if subject == "pipeline" else {**self.source_weights, **weights}
            return replace(base, source_weights=_frozen(merged))
        if kind == "source.paused":
            pause = _pause(event, "paused")
            return replace(base, paused_sources=_frozen({**self.paused_sources, subject: pause}))
        if kind == "source.resumed":
            still_paused = {k: v for k, v in self.paused_sources.items() if k != subject}
            return replace(base, paused_sources=_frozen(still_paused))
        if kind == "pipeline.paused":
            return replace(base, pipeline_paused=_pause(event, "paused"))
        if kind == "pipeline.resumed":
            return replace(base, pipeline_paused=None)
        if kind.startswith("model."):
            return apply_model_event(base, kind, subject, p)
        return base

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
            return obj

        return hashlib.sha256(json.dumps(plain(self), sort_keys=True).encode()).hexdigest()


def _pause(event: ControlEventRecord, default_reason: str) -> Pause:
    p = event["params"]
    return Pause(
        reason=p.get("reason") or default_reason,
        until=p.get("until"),
        event_id=event["event_id"],
        issued_by=event["issued_by"],
    )


def replay(events: Iterable[tuple[int, ControlEventRecord]]) -> ControlState:
    """Fold ``(offset, event)`` pairs in log order from the initial state."""
    state = ControlState.initial()
    for offset, event in events:
        state = state.apply(event, offset)
    return state


_DECISIONS = uuid.UUID("5b1c7e0e-3f0a-4a8e-9d2b-6f4c2d9a7e11")


def decision_id(*parts: object) -> str:
    """A deterministic event id (uuid5) for a decision identified by ``parts``.

    The controller names each decision by what it is about (policy, model, source, the
    calibration it judged, the stream position), so a restarted controller that makes the same
    decision again produces the same id and can see it is already in the log.

    >>> decision_id("drift", "m", "sky", 7) == decision_id("drift", "m", "sky", 7)
    True
    """
    return str(uuid.uuid5(_DECISIONS, "|".join(str(p) for p in parts)))


def new_event(
    event_type: str,
    subject: str,
    issued_by: str,
    params: ControlParams | None = None,
    *,
    evidence: Mapping[str, float] | None = None,
    caused_by: Iterable[str] = (),
    at: datetime | None = None,
    event_id: str | None = None,
) -> ControlEventRecord:
    """Build a well-formed event (``event_id`` or a uuid4; ``at`` or now, UTC).

    Types outside EVENT_TYPES are refused.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown control event type {event_type!r}; known: {sorted(EVENT_TYPES)}")
    return ControlEventRecord(
        event_id=event_id or str(uuid.uuid4()),
        type=event_type,
        subject=subject,
        at=at or datetime.now(UTC),
        issued_by=issued_by,
        params=ControlParams(**(params or {})),
        evidence=dict(evidence or {}),
        caused_by=list(caused_by),
    )
