"""A lane's revisions: served decisions made again after a drift's recalibration.

:func:`begin` is called by a drift's recalibration (:meth:`~processors.controller.lanes.Lanes.
calibrate`): the lane's revision waits (:class:`~processors.policies.revision.PendingRevision`).
:meth:`Revisions.on_served`, for every served score of the lane, makes it when it is due (the
first score made under a calibration the drift did not supersede), and :meth:`Revisions.on_request`
when an operator (or a finished local run) says the source's stream has ended, so no such
score will come (``revision.requested``): every ring entry since the
change point served under a superseded calibration is decided again under the recalibration
(:func:`~processors.policies.revision.revise`), and one :class:`Emit` carries the
``decisions.revised`` event (its evidence: images, flags before and after, withdrawn, added),
the artifact listing the decisions, and one ``scores.revised`` record per image.

Invariants: a revision depends only on the lane's ring and state and the recalibration's
reference (a content-addressed artifact), so a replayed controller makes the same one with the
same event id; its records carry the event's id and time, never a clock; revision numbers grow
by one per lane, so a later revision of an image replaces an earlier one in the warehouse.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from processors.controller.emit import Emit, decision_event
from processors.controller.state import LaneState, RingEntry
from processors.core.artifacts import artifact_id_of
from processors.core.control import RevisionRequest
from processors.core.events import EventType
from processors.core.records import ControlEventRecord, ScoreRevision
from processors.ood.ensemble import OODEnsemble
from processors.ood.reference import ReferenceSet
from processors.policies.calibration import CalibrationPlan
from processors.policies.revision import (
    Judge,
    PendingRevision,
    Revised,
    Served,
    cross_fitted,
    revise,
    revision_artifact,
    revision_evidence,
)

__all__ = ["Revisions", "begin"]


def begin(
    lane: LaneState,
    entries: Sequence[RingEntry],
    superseded: str | None,
    event: ControlEventRecord,
    plan: CalibrationPlan,
    target_fpr: float,
    from_seq: int | None = None,
) -> None:
    """Set the lane's revision waiting for a drift's recalibration ``event``, planned as
    ``plan`` from ``entries`` (the change point on); ``superseded``: the calibration it
    replaces. ``from_seq``: where the revised images begin when not at ``entries[0]`` (the
    epoch's first refinement: at the drift's change point, before its own window); such a
    revision also ends at its window's last image, the newest the drift tests cleared."""
    calibration_id = event["event_id"]
    old = {e.calibration_id for e in entries if e.calibration_id is not None}
    if superseded is not None:
        old.add(superseded)
    old.discard(calibration_id)
    params = event["params"]
    lane.revision = PendingRevision(
        number=lane.revisions + 1,
        calibration=calibration_id,
        reference=params.get("artifact_id") or "",
        thresholds=dict(plan.thresholds),
        vote_k=int(params.get("vote_k") or 1),
        target_fpr=target_fpr,
        from_seq=entries[0].seq if from_seq is None else min(from_seq, entries[0].seq),
        reference_to=entries[-1].seq,
        reference_from=entries[0].seq,
        # a refinement's images end where its window does: those after it are not cleared
        to_seq=None if from_seq is None else entries[-1].seq,
        reason=str(params.get("reason") or "drift"),
        trimmed=sorted(entries[i].seq for i in plan.trimmed),
        superseded=sorted(old),
        causes=[calibration_id, *event["caused_by"][:1]],
    ).to_dict()


class Revisions:
    """See the module docstring. ``entries(lane, start, end)`` reads the lane's ring;
    ``load_reference`` a stored reference set by artifact id."""

    CACHED = 4  # fitted ensembles kept (one per recent drift recalibration)

    def __init__(
        self,
        entries: Callable[[LaneState, int, int], list[RingEntry]],
        load_reference: Callable[[str], ReferenceSet],
    ) -> None:
        self.entries = entries
        self.load_reference = load_reference
        self._ensembles: OrderedDict[str, tuple[OODEnsemble, list[Judge] | None]] = OrderedDict()

    def on_served(self, lane: LaneState, calibration_id: str | None, at: datetime) -> list[Emit]:
        """The newest ring entry was served under ``calibration_id``: the lane's revision,
        when one waits and this score makes it due; else nothing."""
        if not lane.revision:
            return []
        pending = PendingRevision.from_dict(lane.revision)
        if not pending.due(calibration_id):
            return []
        return self._make(lane, pending, at)

    def on_request(self, lane: LaneState, request: RevisionRequest) -> list[Emit]:
        """``revision.requested`` for the lane's source: its waiting revision, made now over the
        images served so far, when the request came after the calibration it waits for (so a
        request never makes a later drift's revision early); else nothing."""
        if not lane.revision:
            return []
        pending = PendingRevision.from_dict(lane.revision)
        if pending.calibration not in request.calibrations:
            return []
        pending.causes = [*pending.causes, request.event_id]
        return self._make(lane, pending, request.at)

    def _make(self, lane: LaneState, pending: PendingRevision, at: datetime) -> list[Emit]:
        lane.revision = {}
        lane.revisions = pending.number
        superseded = set(pending.superseded)
        served = [
            Served(e.seq, e.image_id, e.feature_array(), e.energy, e.flagged, e.calibration_id)
            for e in self.entries(lane, pending.from_seq, pending.until(lane.seq - 1))
            if e.served and e.calibration_id in superseded
        ]
        if not served:
            return []
        ensemble, folds = self._judges(pending)
        revised = revise(
            (ensemble, pending.thresholds),
            pending.vote_k,
            served,
            pending.reference_rows(),
            folds,
        )
        return [self._emit(lane, pending, revised, at)]

    def _judges(self, pending: PendingRevision) -> tuple[OODEnsemble, list[Judge] | None]:
        """The recalibration's ensemble and its reference's cross-fitted folds (cached)."""
        judges = self._ensembles.get(pending.reference)
        if judges is None:
            reference = self.load_reference(pending.reference)
            folds = cross_fitted(reference, pending.target_fpr, pending.vote_k)
            judges = (OODEnsemble.fit(reference), folds)
            self._ensembles[pending.reference] = judges
            while len(self._ensembles) > self.CACHED:
                self._ensembles.popitem(last=False)
        return judges

    def _emit(
        self, lane: LaneState, pending: PendingRevision, revised: list[Revised], at: datetime
    ) -> Emit:
        artifact = revision_artifact(revised)
        event = decision_event(
            EventType.DECISIONS_REVISED,
            lane.source,
            {
                "model_version": lane.model,
                "artifact_id": artifact_id_of(artifact),
                "reason": pending.reason,
                "extra": {
                    "revision": str(pending.number),
                    "calibration": pending.calibration,
                    "from_seq": str(revised[0].seq),
                    "to_seq": str(revised[-1].seq),
                },
            },
            at=at,
            parts=(lane.model, lane.source, pending.calibration, pending.number),
            evidence={
                **revision_evidence(revised),
                "revision": float(pending.number),
                "change_point_seq": float(pending.from_seq),
            },
            caused_by=pending.causes,
        )
        records = tuple(
            ScoreRevision(
                image_id=r.image_id,
                source=lane.source,
                model_version=lane.model,
                revision=pending.number,
                detectors=r.detectors,
                ensemble_score=r.ensemble_score,
                votes_for=r.votes_for,
                votes_needed=r.votes_needed,
                is_candidate=r.is_candidate,
                was_candidate=r.was_candidate,
                calibration_id=pending.calibration,
                revised_calibration_id=r.revised_calibration_id,
                revision_event_id=event["event_id"],
                revised_at=at,
            )
            for r in revised
        )
        return Emit(event, (artifact,), records)
