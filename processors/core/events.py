"""The control vocabulary: every ``control.events`` type, and how an event is built.

:class:`EventType` is a :class:`~enum.StrEnum`: a member *is* its string
(``EventType.DRIFT_DETECTED == "drift.detected"``), so the Avro records, the stored log and every
query keep the strings they always had, and code that reads a record's ``type`` may compare it
with a member directly.

Invariants:

- the set of types is closed here: :func:`new_event` refuses any other type, and a record built
  by :func:`new_event` carries the plain string value (never the enum member);
- an event id from :func:`decision_id` is a uuid5 of what a decision is about, so a restarted
  processor that makes the same decision produces the same id.

Nothing here folds events; :mod:`processors.core.control` does (ARCHITECTURE.md, "Event model").

Example:
    >>> EventType.THRESHOLD_SET == "threshold.set", EventType("model.promoted").name
    (True, 'MODEL_PROMOTED')
    >>> ev = new_event(EventType.SOURCE_PAUSED, "sky", "operator", {"reason": "maintenance"})
    >>> ev["type"], type(ev["type"]) is str
    ('source.paused', True)
    >>> new_event("source.exploded", "sky", "operator")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown control event type 'source.exploded'; known: [...]
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum

from processors.core.records import ControlEventRecord, ControlParams

__all__ = ["EVENT_TYPES", "MODEL_EVENTS", "EventType", "decision_id", "new_event"]


class EventType(StrEnum):
    """The types of ``control.events``; each value is the string stored in the log."""

    THRESHOLD_SET = "threshold.set"
    THRESHOLD_DECAYED = "threshold.decayed"
    CALIBRATION_UPDATED = "calibration.updated"
    CALIBRATION_REQUESTED = "calibration.requested"
    REVISION_REQUESTED = "revision.requested"
    DRIFT_DETECTED = "drift.detected"
    DECISIONS_REVISED = "decisions.revised"
    SOURCE_WEIGHTS_SET = "source.weights_set"
    SOURCE_PAUSED = "source.paused"
    SOURCE_RESUMED = "source.resumed"
    RETRAIN_REQUESTED = "retrain.requested"
    MODEL_REGISTERED = "model.registered"
    MODEL_GATE_PASSED = "model.gate_passed"
    MODEL_GATE_FAILED = "model.gate_failed"
    MODEL_SHADOW_STARTED = "model.shadow_started"
    MODEL_CANARY_STARTED = "model.canary_started"
    MODEL_PROMOTED = "model.promoted"
    MODEL_ROLLED_BACK = "model.rolled_back"
    PIPELINE_PAUSED = "pipeline.paused"
    PIPELINE_RESUMED = "pipeline.resumed"
    BUDGET_DEFERRED = "budget.deferred"

    @property
    def is_model_event(self) -> bool:
        """A model lifecycle event (``model.*``)."""
        return self.value.startswith("model.")


#: every known type, as plain strings (set arithmetic with user input stays plain ``str``)
EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)
#: the ``model.*`` types, the model lifecycle
MODEL_EVENTS: frozenset[EventType] = frozenset(t for t in EventType if t.is_model_event)

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
    event_type: EventType | str,
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

    Types outside :class:`EventType` are refused. The record's ``type`` is the plain string.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown control event type {event_type!r}; known: {sorted(EVENT_TYPES)}")
    return ControlEventRecord(
        event_id=event_id or str(uuid.uuid4()),
        type=EventType(event_type).value,
        subject=subject,
        at=at or datetime.now(UTC),
        issued_by=issued_by,
        params=ControlParams(**(params or {})),
        evidence=dict(evidence or {}),
        caused_by=list(caused_by),
    )
