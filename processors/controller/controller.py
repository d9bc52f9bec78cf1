"""The controller: turns scores and dead letters into control events, one policy at a time.

Pure decision logic over explicit state, no Kafka and no Faust: the controller's Faust app
(:mod:`processors.controller.app`) loads a :class:`~processors.controller.state.SourceState`
from its table, calls :meth:`Controller.on_score` / :meth:`Controller.on_dead_letter` /
:meth:`Controller.on_tick`, stores the artifacts and emits the events the call returned, then
writes the state back. The controller orders the decisions; :mod:`processors.controller.lanes`
(ring, calibrations, drift, decay, the lane policy) and :mod:`processors.controller.guards`
(rebalancing, back-off, health, resumes) make them. What each input drives:

- every score with an embedding → its lane's ring (dedupe by image id);
- a lane without a calibration, once its ring holds ``reference_size`` images → the first
  ``calibration.updated`` (reference from those images, trimmed, with a drift profile);
- a served score of the lane's current calibration (or, after a refinement, of the one it
  replaced until the first score made under it arrives: the tests are not blind while a
  refinement reaches the scorer; ``LaneState.judging``) → the sequential test (two CUSUMs on its
  vote statistic's and feature projections' conformal p-values,
  :mod:`~processors.policies.sequential`: an alarm → ``drift.detected`` from the CUSUM's
  onset) and the drift window; every ``drift_step``
  scores the last ``drift_window`` are judged against the profile
  (:func:`~processors.policies.drift.judge_window`) and ``consecutive`` disjoint disagreeing
  windows → ``drift.detected`` → ``calibration.updated`` caused by it, from the images since
  the change began (:func:`~processors.policies.drift.change_point` over the epoch's feature
  projections and scores: the windows that raised the alarm, without the pre-drift images
  before them, which would otherwise stay in every reference of the new epoch), as soon as
  ``drift_min_reference`` of them exist (recovery does not wait for a full window);
- a drift's recalibration → the lane's revision waits; the first served score made under a
  calibration the drift did not supersede makes it (:mod:`processors.controller.revisions`):
  the decisions served since the change point, decided again, and ``decisions.revised``; a
  ``revision.requested`` for its source that came after the recalibration makes it at once
  (the stream has ended: no such score will come), :meth:`Controller.on_revision_requests`;
- a lane whose calibration window can grow by half (up to ``reference_max_size``) while
  nothing leans → a refining ``calibration.updated`` on the larger window: 128, 192, 288, ...
  images (a young or post-drift calibration is noisy; each refinement narrows it), ending at
  the images the drift tests cleared (:mod:`~processors.policies.refine`), never the newest;
- production scores: threshold decay (``threshold.decayed`` every ``decay.every`` images),
  source rebalancing (``source.weights_set``) and error back-off (``source.paused``); dead
  letters count as errors for back-off and health;
- the lane policy named by ``control_policy``
  (:func:`~processors.policies.plugins.lane_policy`): the production one is the
  self-correction above; a benchmark baseline (``static``, ``astrolens``) replaces drift, decay
  and operator recalibrations by its own ``threshold.set`` rule;
- every item: the pipeline health window → ``pipeline.paused``;
- :meth:`on_tick` (a timer): ``source.resumed`` / ``pipeline.resumed`` when the controller's
  own back-off ends; an operator's pause is never lifted here;
- an operator's ``calibration.requested`` (in the folded ``ControlState``) → a recalibration
  from the lane's most recent images at its next production score.

Determinism: the score-driven decisions depend only on each source's score stream (one
partition, in order) and, for operator requests, on the control state. Event ids are
:func:`~processors.core.events.decision_id` of what a decision is about, and event times are
the triggering record's, so a fresh controller fed the same scores emits the same events with
the same ids; a restarted one recognises the events it already emitted. Health and the
timers read event times too, but windows that mix partitions depend on their interleaving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

from processors.controller.config import ControllerConfig
from processors.controller.emit import ISSUER, Emit
from processors.controller.guards import Guards
from processors.controller.lanes import Lanes, Ring
from processors.controller.revisions import Revisions
from processors.controller.state import SourceState
from processors.core.control import ControlState
from processors.core.records import DeadLetter, ScoreRecord
from processors.ood.reference import ReferenceSet
from processors.policies.health import HealthState
from processors.policies.plugins import lane_policy
from processors.policies.profile import DriftProfile

__all__ = ["ISSUER", "Controller", "ControllerConfig", "Emit", "Ring"]


class Controller:
    """See the module docstring. ``load_profile`` reads a stored profile by artifact id.

    The lane policy is the one registered under ``config.policy``; an unknown name raises
    ValueError here, before any input.
    """

    def __init__(
        self,
        config: ControllerConfig,
        ring: Ring,
        load_profile: Callable[[str], DriftProfile],
        load_reference: Callable[[str], ReferenceSet] | None = None,
    ) -> None:
        if load_reference is None:  # revisions refit the recalibration's stored reference
            config = replace(config, revise=False)
        self.config = config
        self.ring = ring
        self.policy = lane_policy(config.policy)
        self.lanes = Lanes(config, ring, load_profile, self.policy)
        self.revisions = (
            Revisions(self.lanes.entries, load_reference) if load_reference is not None else None
        )
        self.guards = Guards(config)

    @property
    def health(self) -> HealthState:
        """The pipeline health window (memory only)."""
        return self.guards.health

    def profile(self, profile_id: str) -> DriftProfile:
        return self.lanes.profile(profile_id)

    # -- inputs ------------------------------------------------------------------------------
    def on_score(self, src: SourceState, score: ScoreRecord, control: ControlState) -> list[Emit]:
        """Fold one score of ``src.source`` (any role); returns the events it triggers."""
        cfg, lanes, model, at = self.config, self.lanes, score["model_version"], score["scored_at"]
        lane = src.lane(model)
        production = score["role"] == "production"
        served = production or (score["role"] == "canary" and score["calibrated"])
        emits: list[Emit] = []
        if production:
            emits += self.guards.source(
                src, at, flagged=score["is_candidate"], error=False, control=control
            )
            emits += self.guards.pipeline(at, score["latency_ms"], error=False, control=control)
        if not lanes.add(lane, score, served):
            return emits  # a re-scored image teaches nothing new
        if lane.calibration_id is None and lane.seq == 1:
            # A lane with no history, yet the log has its calibration: its table was lost.
            # A lane with history replays its own decisions instead (after a crash between an
            # event and its head, the same decision comes again, with the same id, and is
            # recognised); adopting would give it another epoch than the one it had.
            lanes.adopt(lane, control)
        if lane.calibration_id is None:
            if lane.seq - lane.epoch_start >= cfg.reference_size:
                emits.append(
                    lanes.calibrate(lane, lane.seq - cfg.reference_size, "initial", [], at)
                )
            return emits
        correcting = self.policy.self_correcting
        request = control.calibration_requests.get(src.source)
        if production and request is not None and correcting:
            start = max(lane.seq - cfg.reference_size, 0)
            emits.append(lanes.calibrate(lane, start, "operator", [request], at))
            return emits
        if lane.pending_from is not None:  # a drift waits for enough post-change images
            if lane.seq - lane.pending_from >= cfg.drift_min_reference:
                cause = [lane.pending_cause] if lane.pending_cause else []
                emits.append(lanes.calibrate(lane, lane.pending_from, "drift", cause, at))
            return emits
        if not (served and score["calibrated"]):
            return emits
        calibration_id = score.get("calibration_id")
        if self.revisions is not None:
            emits += self.revisions.on_served(lane, calibration_id, at)
        if lane.judging and calibration_id not in (None, lane.judged_calibration):
            lanes.restart_tests(lane)  # a refinement reached the scorer (the newest: judged)
        if calibration_id not in (None, lane.judged_calibration):
            return emits  # scored under an older calibration, still in flight
        lane.served += 1
        lane.thresholds = {
            d["detector"]: float(d["threshold"])
            for d in score["detectors"]
            if d["threshold"] is not None
        }
        lane.stats.add(score["ensemble_score"], score["is_candidate"], score["latency_ms"])
        if correcting:
            if production and not lane.judging and not control.has_operator_threshold(src.source):
                emits += lanes.decay(lane, at)
            emits += lanes.drift(lane, [d["score"] for d in score["detectors"]], at)
        elif production:
            emits += lanes.baseline(lane, score["is_candidate"], at)
        return emits

    def on_dead_letter(
        self, src: SourceState | None, letter: DeadLetter, control: ControlState
    ) -> list[Emit]:
        """A dead letter: an error of its source (when known) and of the pipeline."""
        emits: list[Emit] = []
        if src is not None:
            emits += self.guards.source(
                src, letter["at"], flagged=False, error=True, control=control
            )
        return emits + self.guards.pipeline(letter["at"], None, error=True, control=control)

    def on_revision_requests(
        self, heads: Mapping[str, SourceState], control: ControlState
    ) -> list[tuple[SourceState, list[Emit]]]:
        """Each ``revision.requested`` of a source in ``heads`` (those this controller holds):
        its lanes' waiting revisions, made now (see :meth:`Revisions.on_request`); the
        sources whose state changed, with what they emit."""
        changed: list[tuple[SourceState, list[Emit]]] = []
        if self.revisions is None:  # revision turned off
            return changed
        for source, request in control.revision_requests.items():
            src = heads.get(source)
            if src is None:
                continue
            emits: list[Emit] = []
            touched = False
            for lane in src.lanes.values():
                waiting = bool(lane.revision)
                emits += self.revisions.on_request(lane, request)
                touched = touched or (waiting and not lane.revision)
            if touched:
                changed.append((src, emits))
        return changed

    @staticmethod
    def revisions_waiting(heads: Mapping[str, SourceState]) -> list[str]:
        """The sources in ``heads`` with a revision waiting, sorted."""
        return sorted(s for s, h in heads.items() if any(n.revision for n in h.lanes.values()))

    def on_tick(self, now: datetime, control: ControlState) -> list[Emit]:
        """Lift the controller's own pauses whose back-off has ended (never an operator's)."""
        return self.guards.tick(now, control)
