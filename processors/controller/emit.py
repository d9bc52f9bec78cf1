"""What the controller's decisions produce: events to emit, with the artifacts they name.

Invariants: every controller event is issued by :data:`ISSUER`, carries the triggering record's
time (never the wall clock) and has the id :func:`~processors.core.events.decision_id` of its
type and what it is about, so a restarted controller that makes the same decision again emits
the same event and can see it is already in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from processors.core.events import EventType, decision_id, new_event
from processors.core.records import ControlEventRecord, ControlParams, ScoreRevision
from processors.ood.ensemble import OODEnsemble

__all__ = ["DETECTORS", "ISSUER", "Emit", "decision_event"]

ISSUER = "controller"
DETECTORS = OODEnsemble.DETECTORS


@dataclass(frozen=True)
class Emit:
    """An event to emit, after storing ``artifacts`` (content-addressed bytes it names) and
    producing ``records`` (the decisions a ``decisions.revised`` event revised, to
    ``scores.revised``; produced again when the event is already in the log: they are keyed,
    and the warehouse keeps one row per image and revision)."""

    event: ControlEventRecord
    artifacts: tuple[bytes, ...] = ()
    records: tuple[ScoreRevision, ...] = ()


def decision_event(
    kind: EventType,
    subject: str,
    params: ControlParams,
    *,
    at: datetime,
    parts: tuple[object, ...],
    evidence: dict[str, float] | None = None,
    caused_by: list[str] | None = None,
) -> ControlEventRecord:
    """The controller's event of type ``kind`` at ``at``, its id from ``(kind, *parts)``."""
    return new_event(
        kind,
        subject,
        ISSUER,
        params,
        evidence=evidence,
        caused_by=caused_by or [],
        at=at,
        event_id=decision_id(kind, *parts),
    )
