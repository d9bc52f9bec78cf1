"""A lane's corrections: its ring, calibrations, drift, refinement, decay and lane policy.

A lane is a (model, source) pair (:class:`~processors.controller.state.LaneState`). What each
of its scores drives (the controller decides *when*, see :mod:`processors.controller.controller`):

- every score with an embedding → the lane's ring (dedupe by image id), :meth:`Lanes.add`;
- :meth:`Lanes.calibrate`: a ``calibration.updated`` from ring entries (reference trimmed, with
  a drift profile), resetting the lane's epoch;
- :meth:`Lanes.drift`: every served score steps the two CUSUMs
  (:mod:`~processors.policies.sequential`); every ``drift_step`` the last ``drift_window`` are
  judged against the profile (:class:`~processors.policies.drift.DriftPolicy`). A CUSUM alarm
  (change start: its onset) or ``consecutive`` disjoint disagreeing windows (change start:
  :func:`~processors.policies.drift.change_point` over the epoch) → ``drift.detected`` →
  ``calibration.updated`` caused by it, from the change start, as soon as
  ``drift_min_reference`` images follow it; while nothing leans, a refining
  ``calibration.updated`` on a window half as large again (up to ``reference_max_size``),
  ending at the images the tests cleared (:mod:`~processors.policies.refine`), never newer;
- :meth:`Lanes.decay`: ``threshold.decayed`` (:class:`~processors.policies.decay.ThresholdDecay`);
- :meth:`Lanes.baseline`: the configured lane policy's ``threshold.set`` (benchmark plug-ins).

Invariant: decisions depend only on the lane's state, its ring and the scores in order; event
ids are :func:`~processors.core.events.decision_id` of what a decision is about.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import numpy as np

from processors.controller.config import ControllerConfig
from processors.controller.emit import DETECTORS, Emit, decision_event
from processors.controller.revisions import begin
from processors.controller.state import LaneState, RingEntry
from processors.core.artifacts import artifact_id_of
from processors.core.control import ControlState
from processors.core.events import EventType
from processors.core.records import ScoreRecord
from processors.policies.calibration import plan_calibration, score_row
from processors.policies.decay import DecayObservation
from processors.policies.drift import DriftPolicy, DriftWindow, Hysteresis, change_point
from processors.policies.plugins import LaneObservation, LanePolicy
from processors.policies.profile import DriftProfile
from processors.policies.refine import Clearance, refine_span
from processors.policies.sequential import observe_lane, reference_votes, vote_statistic

__all__ = ["Lanes", "Ring"]


class Ring(Protocol):
    """Where lanes keep their last ``capacity`` entries (slot = ``seq % capacity``)."""

    def put(self, source: str, model: str, entry: RingEntry, capacity: int) -> None: ...

    def get(self, source: str, model: str, seq: int, capacity: int) -> RingEntry | None: ...

    def seq_of(self, source: str, model: str, image_id: str, capacity: int) -> int | None:
        """The seq of ``image_id``'s entry in the lane's ring, or None."""
        ...


class Lanes:
    """See the module docstring. ``load_profile`` reads a stored profile by artifact id."""

    REFINE_GROWTH = 1.5  # each refinement's window over the last one's

    def __init__(
        self,
        config: ControllerConfig,
        ring: Ring,
        load_profile: Callable[[str], DriftProfile],
        policy: LanePolicy,
    ) -> None:
        self.config = config
        self.ring = ring
        self.load_profile = load_profile
        self.policy = policy
        self.drift_policy = DriftPolicy(config.drift_tests)
        self._profiles: OrderedDict[str, DriftProfile] = OrderedDict()
        self._sorted: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # -- the ring and calibrations -----------------------------------------------------------
    def add(self, lane: LaneState, score: ScoreRecord, served: bool) -> bool:
        """Put the score in the lane's ring; False for a score without embedding or a re-score."""
        row = score_row(score)
        if row is None:
            return False
        capacity = self.config.ring_capacity
        known = self.ring.seq_of(lane.source, lane.model, score["image_id"], capacity)
        # An entry at or past the head's seq was written by a run that crashed before it saved
        # the head: this record is being replayed, not re-scored. Below it: a duplicate image.
        if known is not None and known < lane.seq:
            return False
        features, energy = row
        entry = RingEntry(
            seq=lane.seq,
            image_id=score["image_id"],
            features=features.astype("<f2").tobytes(),
            energy=energy,
            score=float(score["ensemble_score"]),
            flagged=bool(score["is_candidate"]),
            calibration_id=(score.get("calibration_id") if score["calibrated"] else None),
            served=served,
        )
        self.ring.put(lane.source, lane.model, entry, capacity)
        lane.seq += 1
        return True

    def entries(self, lane: LaneState, start: int, end: int | None = None) -> list[RingEntry]:
        """The lane's ring entries with seq in ``[start, end)`` (``end``: the newest) it still
        holds, oldest first."""
        cap, stop = self.config.ring_capacity, lane.seq if end is None else end
        entries = [self.ring.get(lane.source, lane.model, s, cap) for s in range(start, stop)]
        return [e for e in entries if e is not None and e.seq >= start]

    def adopt(self, lane: LaneState, control: ControlState) -> None:
        """A calibration in the log that this lane's state lacks (its table was lost)."""
        cal = control.calibration_for(lane.model, lane.source)
        if cal is None or cal.profile_id is None:
            return
        lane.calibration_id, lane.profile_id = cal.event_id, cal.profile_id
        lane.base_thresholds = dict(cal.thresholds)
        lane.thresholds = dict(cal.thresholds)
        lane.epoch_start, lane.reference_rows = lane.seq, self.config.reference_size
        lane.clearance = Clearance(lane.seq, lane.seq).to_dict()

    def profile(self, profile_id: str) -> DriftProfile:
        if profile_id not in self._profiles:
            self._profiles[profile_id] = self.load_profile(profile_id)
            while len(self._profiles) > 64:  # bounded: a few per lane are ever in use
                self._profiles.popitem(last=False)
        return self._profiles[profile_id]

    def sorted_reference(self, profile_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The profile's held-out vote statistics and projections (per column), sorted: what
        the sequential test ranks each image in."""
        if profile_id not in self._sorted:
            profile = self.profile(profile_id)
            votes = reference_votes(profile.calibrated, profile.vote_k)
            self._sorted[profile_id] = (votes, np.sort(profile.projections, axis=0))
            while len(self._sorted) > 64:
                self._sorted.popitem(last=False)
        return self._sorted[profile_id]

    def calibrate(
        self,
        lane: LaneState,
        start: int,
        reason: str,
        caused_by: list[str],
        at: datetime,
        end: int | None = None,
    ) -> Emit:
        """A ``calibration.updated`` from the lane's ring entries in ``[start, end)``.

        ``end`` defaults to the newest entry; a refine ends at the cleared images.
        """
        cfg = self.config
        entries = self.entries(lane, start, end)
        plan = plan_calibration(
            np.stack([e.feature_array() for e in entries]),
            np.array([e.energy for e in entries]),
            lane.model,
            cfg.target_fpr,
            cfg.vote_k,
            max_trim=cfg.max_trim,
            threshold_rule=cfg.threshold_rule if reason == "drift" else "nearest",
        )
        reference, profile = plan.reference.to_bytes(), plan.profile.to_bytes()
        profile_id, reference_id = artifact_id_of(profile), artifact_id_of(reference)
        event = decision_event(
            EventType.CALIBRATION_UPDATED,
            lane.source,
            {
                "model_version": lane.model,
                "artifact_id": reference_id,
                "target_fpr": cfg.target_fpr,
                "vote_k": cfg.vote_k,
                "thresholds": plan.thresholds,
                "reason": reason,
                "extra": {
                    "drift_profile": profile_id,
                    "reference_from_seq": str(entries[0].seq),
                    "reference_to_seq": str(entries[-1].seq),
                },
            },
            at=at,
            parts=(lane.model, lane.source, reason, lane.calibration_id, start, lane.seq),
            evidence=plan.evidence,
            caused_by=caused_by or ([lane.calibration_id] if lane.calibration_id else []),
        )
        self._profiles[profile_id] = plan.profile
        # the images since the change point, decided again: under the drift's recalibration,
        # then under its epoch's first refinement (more images, a smaller error)
        if cfg.revise and (
            reason == "drift" or (reason == "refine" and lane.revise_from is not None)
        ):
            since = lane.revise_from if reason == "refine" else None
            begin(lane, entries, lane.calibration_id, event, plan, cfg.target_fpr, since)
            lane.revise_from = start if reason == "drift" else None
        elif reason != "refine":
            lane.revise_from = None
        if reason != "refine":
            lane.judging = {}
        elif not lane.judging and lane.calibration_id and lane.profile_id:
            lane.judging = {"calibration": lane.calibration_id, "profile": lane.profile_id}
        lane.calibration_id, lane.profile_id = event["event_id"], profile_id
        lane.reference_rows = len(entries)
        lane.base_thresholds, lane.thresholds = dict(plan.thresholds), dict(plan.thresholds)
        lane.epoch_start = start if reason != "refine" else lane.epoch_start
        if reason != "refine":  # the reference itself is the new epoch's cleared baseline
            lane.clearance = Clearance(entries[-1].seq + 1, entries[-1].seq + 1).to_dict()
        lane.pending_from = lane.pending_cause = None
        if not lane.judging:  # else when the first score under the refinement arrives
            self.restart_tests(lane)
        lane.policy = self.policy.start(max(plan.thresholds.values()))
        return Emit(event, (reference, profile))

    @staticmethod
    def restart_tests(lane: LaneState) -> None:
        """The drift tests start over on the calibration in force (see ``LaneState.judging``)."""
        lane.judging = {}
        lane.served = lane.window = 0
        lane.hysteresis, lane.sequential = {}, {}

    # -- skyloop's own corrections -----------------------------------------------------------
    def drift(self, lane: LaneState, calibrated: list[float], at: datetime) -> list[Emit]:
        """One served score (the newest ring entry; ``calibrated``: its detectors' calibrated
        scores): the sequential test, a window when due, else a refinement from cleared images
        when nothing leans."""
        cfg = self.config
        lane.window += 1
        hysteresis = Hysteresis.from_dict(
            lane.hysteresis
            or {
                "consecutive": cfg.drift_consecutive,
                "spacing": max(cfg.drift_window // cfg.drift_step, 1),
            }
        )
        leaning, test = False, self.config.sequential
        entry = self.ring.get(lane.source, lane.model, lane.seq - 1, cfg.ring_capacity)
        judged = lane.judged_profile
        if test is not None and judged is not None and entry is not None:
            profile = self.profile(judged)
            votes, projections = self.sorted_reference(judged)
            alarm, leaning = observe_lane(
                test,
                lane.sequential,
                float(vote_statistic(np.array(calibrated), profile.vote_k)[0]),
                votes,
                profile.project(entry.feature_array()[None, :])[0],
                projections,
                lane.seq - 1,
            )
            if alarm is not None:  # (reason, evidence, onset): the onset is the change start
                return self._raise(lane, alarm[0], alarm[1], alarm[2], lane.seq - 1, alarm[2], at)
        if lane.window >= cfg.drift_step and lane.served >= cfg.drift_window:
            return self._judge(lane, hysteresis, leaning, at)
        # Refine: the cleared images fill a reference half as large again, and nothing leans.
        cleared = Clearance.from_dict(lane.clearance or {}).cleared_to
        rows = (lane.reference_rows, self.REFINE_GROWTH, cfg.reference_max_size)
        span = refine_span(cleared, lane.epoch_start, *rows)
        if span and hysteresis.streak == 0 and not leaning:
            return [self.calibrate(lane, span[0], "refine", [], at, end=span[1])]
        return []

    def _judge(
        self, lane: LaneState, hysteresis: Hysteresis, leaning: bool, at: datetime
    ) -> list[Emit]:
        cfg = self.config
        lane.window = 0
        window = [
            e
            for e in self.entries(lane, lane.seq - cfg.drift_window)
            if e.calibration_id == lane.judged_calibration
        ]
        if len(window) < cfg.drift_window // 2 or lane.judged_profile is None:
            return []
        profile = self.profile(lane.judged_profile)
        features = np.stack([e.feature_array() for e in window])
        drifts = self.drift_policy.update(
            DriftWindow(
                np.array([e.score for e in window]),
                np.array([e.flagged for e in window]),
                profile.scores,
                profile.flag_rate(lane.thresholds or lane.base_thresholds),
                profile.project(features),
                profile.projections,
                hysteresis,
            )
        )
        lane.hysteresis = hysteresis.to_dict()
        if not drifts:
            disagreed = bool(hysteresis.trail and hysteresis.trail[-1])
            clearance = Clearance.from_dict(lane.clearance or {})
            lag = cfg.drift_consecutive * cfg.drift_window
            clearance.judged(window[-1].seq + 1, not (disagreed or leaning), lag)
            lane.clearance = clearance.to_dict()
            return []
        verdict = drifts[0]
        evidence = {**verdict.evidence(), "windows": float(cfg.drift_consecutive)}
        start = self._change_start(lane, profile)
        return self._raise(lane, verdict.reason, evidence, window[0].seq, window[-1].seq, start, at)

    def _raise(
        self,
        lane: LaneState,
        reason: str,
        evidence: dict[str, float],
        from_seq: int,
        to_seq: int,
        start: int,
        at: datetime,
    ) -> list[Emit]:
        """``drift.detected`` (the evidence over seqs ``from_seq..to_seq``), then the
        recalibration from ``start`` (the change point) once enough images follow it."""
        cfg = self.config
        lane.drifts += 1
        drift_event = decision_event(
            EventType.DRIFT_DETECTED,
            lane.source,
            {
                "model_version": lane.model,
                "reason": reason,
                "extra": {"window_from_seq": str(from_seq), "window_to_seq": str(to_seq)},
            },
            at=at,
            parts=(lane.model, lane.source, lane.calibration_id, lane.seq),
            evidence={**evidence, "served_under_calibration": float(lane.served)},
            caused_by=[lane.calibration_id] if lane.calibration_id else [],
        )
        lane.pending_from = start
        lane.pending_cause = drift_event["event_id"]
        emits = [Emit(drift_event)]
        if lane.seq - lane.pending_from >= cfg.drift_min_reference:
            emits.append(self.calibrate(lane, lane.pending_from, "drift", [lane.pending_cause], at))
        return emits

    def _change_start(self, lane: LaneState, profile: DriftProfile) -> int:
        """The seq where the drift most likely began, over the whole calibration epoch.

        The epoch (from the calibration's reference on, at most the ring) gives the search the
        pre-drift context; a subtle drift may be confirmed long after it began.
        """
        cfg = self.config
        recent = self.entries(lane, max(lane.seq - cfg.ring_capacity, lane.epoch_start, 0))
        # Scores count only under the judged calibration (the reference images were scored
        # uncalibrated, at 0): elsewhere they take the profile's mean, adding no step.
        typical = float(profile.scores.mean())
        judged = lane.judged_calibration
        scores = [e.score if e.calibration_id == judged else typical for e in recent]
        values = np.column_stack(
            [profile.project(np.stack([e.feature_array() for e in recent])), np.array(scores)]
        )
        scale = np.append(profile.projections.std(axis=0), profile.scores.std())
        return recent[change_point(values, scale, min_size=cfg.drift_window // 4)].seq

    def decay(self, lane: LaneState, at: datetime) -> list[Emit]:
        """A ``threshold.decayed`` for the lane when its decay is due."""
        if not lane.base_thresholds or lane.profile_id is None:
            return []
        profile_id = lane.profile_id
        base = max(lane.base_thresholds.values())
        current = float(lane.policy.get("decayed", base))

        def rate(t: float) -> float:
            return self.profile(profile_id).flag_rate(dict.fromkeys(DETECTORS, t))

        emits = []
        for value in self.config.decay.update(DecayObservation(lane.served, base, current, rate)):
            lane.policy["decayed"] = value
            emits.append(
                Emit(
                    decision_event(
                        EventType.THRESHOLD_DECAYED,
                        lane.source,
                        {
                            "model_version": lane.model,
                            "thresholds": dict.fromkeys(DETECTORS, value),
                        },
                        at=at,
                        parts=(lane.model, lane.source, lane.calibration_id, lane.served),
                        evidence={
                            "served_since_calibration": float(lane.served),
                            "base": base,
                            "previous": current,
                            "expected_flag_rate": rate(value),
                        },
                        caused_by=[lane.calibration_id] if lane.calibration_id else [],
                    )
                )
            )
        return emits

    # -- the configured lane policy (benchmark baselines) --------------------------------------
    def baseline(self, lane: LaneState, flagged: bool, at: datetime) -> list[Emit]:
        """The lane policy's threshold changes for one served production score."""
        changes = self.policy.update(LaneObservation(lane.policy, flagged))
        return [
            Emit(
                decision_event(
                    EventType.THRESHOLD_SET,
                    lane.source,
                    {
                        "model_version": lane.model,
                        "thresholds": dict.fromkeys(DETECTORS, change.value),
                        "reason": change.reason,
                    },
                    at=at,
                    parts=(
                        self.policy.name,
                        lane.model,
                        lane.source,
                        lane.calibration_id,
                        lane.served,
                    ),
                    evidence=change.evidence,
                )
            )
            for change in changes
        ]
