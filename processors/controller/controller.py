"""The controller: turns scores and dead letters into control events, one policy at a time.

Pure decision logic over explicit state, no Kafka and no Faust: the controller's Faust app
(:mod:`processors.controller.app`) loads a :class:`~processors.controller.state.SourceState`
from its table, calls :meth:`Controller.on_score` / :meth:`Controller.on_dead_letter` /
:meth:`Controller.on_tick`, stores the artifacts and emits the events the call returned, then
writes the state back. What each input drives (DESIGN §5):

- every score with an embedding → its lane's ring (dedupe by image id);
- a lane without a calibration, once its ring holds ``reference_size`` images → the first
  ``calibration.updated`` (reference from those images, trimmed, with a drift profile);
- a served score of the lane's current calibration → the drift window; every ``drift_step``
  scores the last ``drift_window`` are judged against the profile
  (:func:`~processors.policies.drift.judge_window`) and ``consecutive`` disjoint disagreeing
  windows → ``drift.detected`` → ``calibration.updated`` caused by it, from the images since
  the change began (:func:`~processors.policies.drift.change_point` over the epoch's feature
  projections and scores: the windows that raised the alarm, without the pre-drift images
  before them, which would otherwise stay in every reference of the new epoch), as soon as
  ``drift_min_reference`` of them exist (recovery does not wait for a full window);
- a lane whose calibration window can grow by half (up to ``reference_max_size``) while its
  windows agree → a refining ``calibration.updated`` on the larger window: 128, 192, 288, ...
  images (a young or post-drift calibration is noisy; each refinement narrows it);
- production scores: threshold decay (``threshold.decayed`` every ``decay.every`` images),
  source rebalancing (``source.weights_set``) and error back-off (``source.paused``); dead
  letters count as errors for back-off and health;
- every item: the pipeline health window → ``pipeline.paused``;
- :meth:`on_tick` (a timer): ``source.resumed`` / ``pipeline.resumed`` when the controller's
  own back-off ends; an operator's pause is never lifted here;
- an operator's ``calibration.requested`` (in the folded ``ControlState``) → a recalibration
  from the lane's most recent images at its next production score.

Determinism: the score-driven decisions depend only on each source's score stream (one
partition, in order) and, for operator requests, on the control state. Event ids are
:func:`~processors.core.control.decision_id` of what a decision is about, and event times are
the triggering record's, so a fresh controller fed the same scores emits the same events with
the same ids; a restarted one recognises the events it already emitted. Health and the
timers read event times too, but windows that mix partitions depend on their interleaving.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

from processors.controller.state import LaneState, RingEntry, SourceState
from processors.core.artifacts import artifact_id_of
from processors.core.control import ControlState, decision_id, new_event
from processors.core.events import EventType
from processors.core.records import ControlEventRecord, ControlParams, DeadLetter, ScoreRecord
from processors.ood.ensemble import OODEnsemble
from processors.policies.baselines import AstroLensV11
from processors.policies.calibration import plan_calibration, score_row
from processors.policies.decay import ThresholdDecay
from processors.policies.drift import DriftTests, Hysteresis, change_point, judge_window
from processors.policies.health import HealthPolicy, HealthState
from processors.policies.profile import DriftProfile
from processors.policies.sources import ErrorBackoff, Rebalance

__all__ = ["Controller", "ControllerConfig", "Emit", "Ring"]

ISSUER = "controller"
DETECTORS = OODEnsemble.DETECTORS


class Ring(Protocol):
    """Where lanes keep their last ``capacity`` entries (slot = ``seq % capacity``)."""

    def put(self, source: str, model: str, entry: RingEntry, capacity: int) -> None: ...

    def get(self, source: str, model: str, seq: int, capacity: int) -> RingEntry | None: ...

    def seq_of(self, source: str, model: str, image_id: str, capacity: int) -> int | None:
        """The seq of ``image_id``'s entry in the lane's ring, or None."""
        ...


@dataclass(frozen=True)
class ControllerConfig:
    """Policy parameters; :meth:`from_settings` maps the typed settings onto them."""

    policy: str = "skyloop"
    reference_size: int = 128
    reference_max_size: int = 1024
    target_fpr: float = 0.05
    vote_k: int = 2
    max_trim: float = 0.1
    drift_window: int = 64
    drift_min_reference: int = 64
    drift_step: int = 16
    drift_consecutive: int = 2
    drift_tests: DriftTests = field(default_factory=DriftTests)
    decay: ThresholdDecay = field(default_factory=ThresholdDecay)
    rebalance: Rebalance = field(default_factory=Rebalance)
    backoff: ErrorBackoff = field(default_factory=ErrorBackoff)
    backoff_window: int = 64
    health: HealthPolicy = field(default_factory=HealthPolicy)
    astrolens: AstroLensV11 = field(default_factory=AstroLensV11)

    @property
    def ring_capacity(self) -> int:
        return max(self.reference_size, self.reference_max_size)

    @classmethod
    def from_settings(cls, s: Any) -> ControllerConfig:
        return cls(
            policy=s.control_policy,
            reference_size=s.reference_size,
            reference_max_size=max(s.reference_max_size, s.reference_size),
            target_fpr=s.target_fpr,
            vote_k=s.vote_k,
            max_trim=s.calibration_max_trim,
            drift_window=s.drift_window,
            drift_min_reference=s.drift_min_reference,
            drift_step=s.drift_step,
            drift_consecutive=s.drift_consecutive,
            drift_tests=DriftTests(
                ks_p=s.drift_ks_p,
                psi_min=s.drift_psi_min,
                feature_p=s.drift_feature_p,
                flag_p=s.drift_flag_p,
            ),
            decay=ThresholdDecay(
                decay=s.threshold_decay,
                floor=s.threshold_floor,
                ceiling=s.threshold_ceiling,
                every=s.threshold_decay_every,
            ),
            rebalance=Rebalance(every=s.rebalance_every),
            backoff=ErrorBackoff(
                max_error_rate=s.backoff_max_error_rate,
                base_s=s.backoff_base_s,
                max_s=s.backoff_max_s,
            ),
            backoff_window=s.backoff_window,
            health=HealthPolicy(
                window=s.health_window,
                max_error_rate=s.health_max_error_rate,
                max_latency_p99_ms=s.health_max_latency_p99_ms,
                consecutive=s.health_consecutive,
                pause_s=s.health_pause_s,
                max_pause_s=s.health_max_pause_s,
            ),
        )


@dataclass(frozen=True)
class Emit:
    """An event to emit, after storing ``artifacts`` (content-addressed bytes it names)."""

    event: ControlEventRecord
    artifacts: tuple[bytes, ...] = ()


def _event(
    kind: str,
    subject: str,
    params: ControlParams,
    *,
    at: datetime,
    parts: tuple[object, ...],
    evidence: dict[str, float] | None = None,
    caused_by: list[str] | None = None,
) -> ControlEventRecord:
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


class Controller:
    """See the module docstring. ``load_profile`` reads a stored profile by artifact id."""

    REFINE_GROWTH = 1.5  # each refinement's window over the last one's

    def __init__(
        self, config: ControllerConfig, ring: Ring, load_profile: Callable[[str], DriftProfile]
    ) -> None:
        self.config = config
        self.ring = ring
        self.load_profile = load_profile
        self.health = HealthState()
        self._profiles: OrderedDict[str, DriftProfile] = OrderedDict()

    # -- inputs ------------------------------------------------------------------------------
    def on_score(self, src: SourceState, score: ScoreRecord, control: ControlState) -> list[Emit]:
        """Fold one score of ``src.source`` (any role); returns the events it triggers."""
        cfg, model, at = self.config, score["model_version"], score["scored_at"]
        lane = src.lane(model)
        production = score["role"] == "production"
        served = production or (score["role"] == "canary" and score["calibrated"])
        emits: list[Emit] = []
        if production:
            emits += self._source_policies(
                src, at, flagged=score["is_candidate"], error=False, control=control
            )
            emits += self._health(at, score["latency_ms"], error=False, control=control)
        if not self._add_to_ring(lane, score, served):
            return emits  # a re-scored image teaches nothing new
        if lane.calibration_id is None and lane.seq == 1:
            # A lane with no history, yet the log has its calibration: its table was lost.
            # A lane with history replays its own decisions instead (after a crash between an
            # event and its head, the same decision comes again, with the same id, and is
            # recognised); adopting would give it another epoch than the one it had.
            self._adopt(lane, control)
        if lane.calibration_id is None:
            if lane.seq - lane.epoch_start >= cfg.reference_size:
                emits.append(
                    self._calibrate(lane, lane.seq - cfg.reference_size, "initial", [], at)
                )
            return emits
        request = control.calibration_requests.get(src.source)
        if production and request is not None and cfg.policy == "skyloop":
            start = max(lane.seq - cfg.reference_size, 0)
            emits.append(self._calibrate(lane, start, "operator", [request], at))
            return emits
        if lane.pending_from is not None:  # a drift waits for enough post-change images
            if lane.seq - lane.pending_from >= cfg.drift_min_reference:
                cause = [lane.pending_cause] if lane.pending_cause else []
                emits.append(self._calibrate(lane, lane.pending_from, "drift", cause, at))
            return emits
        calibration_id = score.get("calibration_id")
        if not (served and score["calibrated"]) or calibration_id not in (
            None,
            lane.calibration_id,
        ):
            return emits  # scored under an older calibration, still in flight
        lane.served += 1
        lane.thresholds = {
            d["detector"]: float(d["threshold"])
            for d in score["detectors"]
            if d["threshold"] is not None
        }
        lane.stats.add(score["ensemble_score"], score["is_candidate"], score["latency_ms"])
        if cfg.policy == "skyloop":
            if production and not control.has_operator_threshold(src.source):
                emits += self._decay(lane, at)
            emits += self._drift(lane, at)
        elif cfg.policy == "astrolens" and production:
            emits += self._astrolens(lane, score["is_candidate"], at)
        return emits

    def on_dead_letter(
        self, src: SourceState | None, letter: DeadLetter, control: ControlState
    ) -> list[Emit]:
        """A dead letter: an error of its source (when known) and of the pipeline."""
        emits: list[Emit] = []
        if src is not None:
            emits += self._source_policies(
                src, letter["at"], flagged=False, error=True, control=control
            )
        return emits + self._health(letter["at"], None, error=True, control=control)

    def on_tick(self, now: datetime, control: ControlState) -> list[Emit]:
        """Lift the controller's own pauses whose back-off has ended (never an operator's)."""
        emits = []
        for source, pause in sorted(control.paused_sources.items()):
            if pause.issued_by == ISSUER and pause.until is not None and now >= pause.until:
                emits.append(
                    Emit(
                        _event(
                            EventType.SOURCE_RESUMED,
                            source,
                            {"reason": "back-off ended"},
                            at=now,
                            parts=(pause.event_id,),
                            caused_by=[pause.event_id],
                        )
                    )
                )
        held = control.pipeline_paused
        if held is not None and held.issued_by == ISSUER and held.until and now >= held.until:
            self.config.health.resumed(self.health)
            emits.append(
                Emit(
                    _event(
                        EventType.PIPELINE_RESUMED,
                        "pipeline",
                        {"reason": "probation after health pause"},
                        at=now,
                        parts=(held.event_id,),
                        caused_by=[held.event_id],
                    )
                )
            )
        return emits

    # -- the ring and calibrations -----------------------------------------------------------
    def _add_to_ring(self, lane: LaneState, score: ScoreRecord, served: bool) -> bool:
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

    def _entries(self, lane: LaneState, start: int) -> list[RingEntry]:
        cap = self.config.ring_capacity
        entries = [self.ring.get(lane.source, lane.model, s, cap) for s in range(start, lane.seq)]
        return [e for e in entries if e is not None and e.seq >= start]

    def _adopt(self, lane: LaneState, control: ControlState) -> None:
        """A calibration in the log that this lane's state lacks (its table was lost)."""
        cal = control.calibration_for(lane.model, lane.source)
        if cal is None or cal.profile_id is None:
            return
        lane.calibration_id, lane.profile_id = cal.event_id, cal.profile_id
        lane.base_thresholds = dict(cal.thresholds)
        lane.thresholds = dict(cal.thresholds)
        lane.epoch_start, lane.reference_rows = lane.seq, self.config.reference_size

    def profile(self, profile_id: str) -> DriftProfile:
        if profile_id not in self._profiles:
            self._profiles[profile_id] = self.load_profile(profile_id)
            while len(self._profiles) > 64:  # bounded: a few per lane are ever in use
                self._profiles.popitem(last=False)
        return self._profiles[profile_id]

    def _calibrate(
        self, lane: LaneState, start: int, reason: str, caused_by: list[str], at: datetime
    ) -> Emit:
        cfg = self.config
        entries = self._entries(lane, start)
        plan = plan_calibration(
            np.stack([e.feature_array() for e in entries]),
            np.array([e.energy for e in entries]),
            lane.model,
            cfg.target_fpr,
            cfg.vote_k,
            max_trim=cfg.max_trim,
        )
        reference, profile = plan.reference.to_bytes(), plan.profile.to_bytes()
        profile_id = artifact_id_of(profile)
        event = _event(
            EventType.CALIBRATION_UPDATED,
            lane.source,
            {
                "model_version": lane.model,
                "artifact_id": artifact_id_of(reference),
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
        lane.calibration_id, lane.profile_id = event["event_id"], profile_id
        lane.reference_rows = len(entries)
        lane.base_thresholds, lane.thresholds = dict(plan.thresholds), dict(plan.thresholds)
        lane.epoch_start = start if reason != "refine" else lane.epoch_start
        lane.pending_from = lane.pending_cause = None
        lane.served = lane.window = 0
        lane.hysteresis = {}
        lane.policy = AstroLensV11.start(max(plan.thresholds.values()))
        return Emit(event, (reference, profile))

    # -- skyloop's policies ------------------------------------------------------------------
    def _drift(self, lane: LaneState, at: datetime) -> list[Emit]:
        cfg = self.config
        lane.window += 1
        hysteresis = Hysteresis.from_dict(
            lane.hysteresis
            or {
                "consecutive": cfg.drift_consecutive,
                "spacing": max(cfg.drift_window // cfg.drift_step, 1),
            }
        )
        if lane.window >= cfg.drift_step and lane.served >= cfg.drift_window:
            return self._judge(lane, hysteresis, at)
        # Refine: the epoch's data can fill a reference twice as large, and nothing disagrees.
        rows = int(lane.reference_rows * self.REFINE_GROWTH)
        grown = rows <= cfg.reference_max_size and lane.seq - lane.epoch_start >= rows
        if grown and hysteresis.streak == 0:
            return [self._calibrate(lane, lane.seq - rows, "refine", [], at)]
        return []

    def _judge(self, lane: LaneState, hysteresis: Hysteresis, at: datetime) -> list[Emit]:
        cfg = self.config
        lane.window = 0
        window = [
            e
            for e in self._entries(lane, lane.seq - cfg.drift_window)
            if e.calibration_id == lane.calibration_id
        ]
        if len(window) < cfg.drift_window // 2 or lane.profile_id is None:
            return []
        profile = self.profile(lane.profile_id)
        features = np.stack([e.feature_array() for e in window])
        verdict = judge_window(
            np.array([e.score for e in window]),
            np.array([e.flagged for e in window]),
            profile.scores,
            profile.flag_rate(lane.thresholds or lane.base_thresholds),
            cfg.drift_tests,
            profile.project(features),
            profile.projections,
        )
        drift = hysteresis.step(verdict.disagrees)
        lane.hysteresis = hysteresis.to_dict()
        if not drift:
            return []
        lane.drifts += 1
        drift_event = _event(
            EventType.DRIFT_DETECTED,
            lane.source,
            {
                "model_version": lane.model,
                "reason": verdict.reason,
                "extra": {
                    "window_from_seq": str(window[0].seq),
                    "window_to_seq": str(window[-1].seq),
                },
            },
            at=at,
            parts=(lane.model, lane.source, lane.calibration_id, lane.seq),
            evidence={
                **verdict.evidence(),
                "windows": float(cfg.drift_consecutive),
                "served_under_calibration": float(lane.served),
            },
            caused_by=[lane.calibration_id] if lane.calibration_id else [],
        )
        lane.pending_from = self._change_start(lane, profile)
        lane.pending_cause = drift_event["event_id"]
        emits = [Emit(drift_event)]
        if lane.seq - lane.pending_from >= cfg.drift_min_reference:
            emits.append(
                self._calibrate(lane, lane.pending_from, "drift", [lane.pending_cause], at)
            )
        return emits

    def _change_start(self, lane: LaneState, profile: DriftProfile) -> int:
        """The seq where the drift most likely began, over the whole calibration epoch.

        The epoch (from the calibration's reference on, at most the ring) gives the search the
        pre-drift context; a subtle drift may be confirmed long after it began.
        """
        cfg = self.config
        recent = self._entries(lane, max(lane.seq - cfg.ring_capacity, lane.epoch_start, 0))
        # Scores count only under the current calibration (the reference images were scored
        # uncalibrated, at 0): elsewhere they take the profile's mean, adding no step.
        typical = float(profile.scores.mean())
        scores = [e.score if e.calibration_id == lane.calibration_id else typical for e in recent]
        values = np.column_stack(
            [profile.project(np.stack([e.feature_array() for e in recent])), np.array(scores)]
        )
        scale = np.append(profile.projections.std(axis=0), profile.scores.std())
        return recent[change_point(values, scale, min_size=cfg.drift_window // 4)].seq

    def _decay(self, lane: LaneState, at: datetime) -> list[Emit]:
        if not lane.base_thresholds or lane.profile_id is None:
            return []
        policy = self.config.decay
        base = max(lane.base_thresholds.values())
        current = float(lane.policy.get("decayed", base))
        value = policy.due(lane.served, base, current)
        if value is None:
            return []
        profile = self.profile(lane.profile_id)

        def rate(t: float) -> float:
            return profile.flag_rate(dict.fromkeys(DETECTORS, t))

        value = round(policy.bounded(value, base, rate), 4)
        if abs(value - current) < policy.min_step:
            return []
        lane.policy["decayed"] = value
        return [
            Emit(
                _event(
                    EventType.THRESHOLD_DECAYED,
                    lane.source,
                    {"model_version": lane.model, "thresholds": dict.fromkeys(DETECTORS, value)},
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
        ]

    def _astrolens(self, lane: LaneState, flagged: bool, at: datetime) -> list[Emit]:
        if not lane.policy:
            return []
        value = self.config.astrolens.step(lane.policy, flagged)
        if value is None:
            return []
        return [
            Emit(
                _event(
                    EventType.THRESHOLD_SET,
                    lane.source,
                    {
                        "model_version": lane.model,
                        "thresholds": dict.fromkeys(DETECTORS, value),
                        "reason": "astrolens v1.1",
                    },
                    at=at,
                    parts=("astrolens", lane.model, lane.source, lane.calibration_id, lane.served),
                    evidence={"z": float(lane.policy["z"])},
                )
            )
        ]

    # -- sources and the pipeline ------------------------------------------------------------
    def _source_policies(
        self, src: SourceState, at: datetime, *, flagged: bool, error: bool, control: ControlState
    ) -> list[Emit]:
        cfg, emits = self.config, []
        src.items += 1
        src.flagged += int(flagged)
        src.errors += int(error)
        if src.items >= cfg.rebalance.every:
            weight = cfg.rebalance.weight(src.flagged, src.errors, src.items)
            if cfg.rebalance.due(weight, src.weight, src.items):
                emits.append(
                    Emit(
                        _event(
                            EventType.SOURCE_WEIGHTS_SET,
                            src.source,
                            {"weights": {src.source: weight}},
                            at=at,
                            parts=(src.source, src.rebalances),
                            evidence={
                                "items": float(src.items),
                                "flagged": float(src.flagged),
                                "errors": float(src.errors),
                                "previous": -1.0 if src.weight is None else src.weight,
                            },
                        )
                    )
                )
                src.weight = weight
            src.rebalances += 1
            src.items = src.flagged = src.errors = 0
        src.backoff_items += 1
        src.backoff_errors += int(error)
        if src.backoff_items >= cfg.backoff_window:
            items, errors = src.backoff_items, src.backoff_errors
            src.backoff_items = src.backoff_errors = 0
            pause_s = cfg.backoff.pause_for(errors, items, src.pauses)
            if pause_s is not None and not control.is_source_paused(src.source):
                emits.append(
                    Emit(
                        _event(
                            EventType.SOURCE_PAUSED,
                            src.source,
                            {
                                "reason": f"dead-letter rate {errors / items:.2f}",
                                "until": at + timedelta(seconds=pause_s),
                            },
                            at=at,
                            parts=("backoff", src.source, src.pauses, src.rebalances, items),
                            evidence={
                                "error_rate": errors / items,
                                "items": float(items),
                                "pause_s": pause_s,
                                "consecutive_pauses": float(src.pauses + 1),
                            },
                        )
                    )
                )
                src.pauses += 1
            elif pause_s is None and not control.is_source_paused(src.source):
                src.pauses = 0
        return emits

    def _health(
        self, at: datetime, latency_ms: float | None, *, error: bool, control: ControlState
    ) -> list[Emit]:
        verdict = self.config.health.observe(self.health, latency_ms, error)
        if verdict is None or control.pipeline_paused is not None:
            return []
        return [
            Emit(
                _event(
                    EventType.PIPELINE_PAUSED,
                    "pipeline",
                    {"reason": verdict.reason, "until": at + timedelta(seconds=verdict.pause_s)},
                    at=at,
                    parts=("health", self.health.pauses, at.isoformat()),
                    evidence=verdict.evidence(),
                )
            )
        ]
