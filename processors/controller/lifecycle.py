"""Model lifecycle driven by outputs: a registered model's trial, shadow, canary and promotion.

Pure decision logic over explicit state (no Kafka, no clock: event times are the records'),
like :mod:`processors.controller.controller`, which it sits beside in the stats app. It turns
``model.*`` state in the folded ``ControlState`` plus the models' own outputs into the next
lifecycle events (:class:`~processors.policies.rollout.RolloutPolicy` decides):

- a scoring model registered and never gated → ``model.shadow_started`` (its gate trial: a
  shadow never serves); its first ``trial_outputs`` shadow records → ``model.gate_passed`` or
  ``model.gate_failed`` (the fold then drops the shadow);
- a gated detector (the trainer judged it on the held-out set) → ``model.shadow_started``;
- healthy shadow outputs → ``model.canary_started``; the canary's served outputs are judged
  window by window against production's outputs *on the same images* (the scorer also scores
  canary-routed images with production, unserved, role ``shadow``; the detect processor does the
  same for candidates) → ``model.promoted`` or ``model.rolled_back``.

Outputs: a scorer's record gives its ensemble score (NaN when any detector's raw score is
NaN) and latency; a detector's candidate record gives its top box confidence (0 without box),
whether any box is invalid, and latency. A detector canary is judged on quality: each
canary-served candidate that became a pseudo-label (its label boxes, from its pixels, passed
in by the caller) is kept with the canary's boxes and production's on the same image
(production's detector, or source extraction before any: ``detector_outputs`` role
``production`` / ``baseline``); when a window is judged, the two are compared on those images
(:func:`canary_quality`, the gate's paired bootstrap of the mAP50 difference) and the policy
decides on that. Event ids are :func:`~processors.core.events.decision_id` of (step, version,
phase start), so a restarted controller recognises what it already emitted. Tracks are kept in
the stats table after each batch; a restart replays the records after the last saved head, so
a few outputs may be counted twice in a track (the policy's decisions are bounded by windows,
not exact counts).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from processors.controller.emit import ISSUER
from processors.core.config import RolloutSettings
from processors.core.control import ControlState
from processors.core.events import EventType, decision_id, new_event
from processors.core.exceptions import EvaluationError
from processors.core.records import Box, CandidateRecord, ControlEventRecord, ScoreRecord
from processors.policies.gate import ModelGate
from processors.policies.rollout import RolloutDecision, RolloutPolicy, RolloutTrack
from processors.yolo.comparison import compare_map50

__all__ = [
    "Lifecycle",
    "canary_quality",
    "candidate_output",
    "gate_from_settings",
    "invalid_boxes",
    "policy_from_settings",
    "score_output",
]

PAIR_WAIT = 512  # canary outputs waiting for production's record of the same image


def score_output(score: ScoreRecord) -> float:
    """A scoring record's output: its ensemble score, NaN when any raw detector score is."""
    if any(not math.isfinite(float(d["raw"])) for d in score["detectors"]):
        return float("nan")
    return float(score["ensemble_score"])


def candidate_output(boxes: Sequence[Box]) -> float:
    """A detector's output on a candidate: its top box confidence (0 without a box)."""
    confidences = [float(b["confidence"]) for b in boxes]
    if any(not math.isfinite(c) for c in confidences):
        return float("nan")
    return max(confidences, default=0.0)


def _valid(row: Sequence[float]) -> bool:
    x1, y1, x2, y2, confidence = row
    finite = all(math.isfinite(v) for v in row)
    return finite and 0.0 <= confidence <= 1.0 and x2 > x1 and y2 > y1


def invalid_boxes(boxes: Sequence[Box]) -> int:
    """Boxes no localizer may output: a non-finite coordinate, no area, a confidence outside
    [0, 1]."""
    return sum(not _valid(row) for row in _rows(boxes))


def _rows(boxes: Sequence[Box]) -> list[list[float]]:
    keys = ("x1", "y1", "x2", "y2", "confidence")
    return [[float(b[k]) for k in keys] for b in boxes]  # type: ignore[literal-required]


def _boxes(rows: Sequence[Sequence[float]]) -> list[Box]:
    return [Box(label="source", confidence=r[4], x1=r[0], y1=r[1], x2=r[2], y2=r[3]) for r in rows]


def canary_quality(
    labelled: Sequence[Sequence[Sequence[Sequence[float]]]],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The canary's boxes against production's on its labelled images: ``images``, both
    mAP50s, ``diff`` and its paired bootstrap interval ``low``/``high``; {} without a label."""
    canary = [_boxes(c) for c, _, _ in labelled]
    production = [_boxes(p) for _, p, _ in labelled]
    labels = [_boxes(t) for _, _, t in labelled]
    try:
        c = compare_map50(canary, production, labels, resamples=resamples, level=level, seed=seed)
    except EvaluationError:
        return {}
    return {
        "images": float(c.images),
        "canary_map50": c.challenger,
        "production_map50": c.incumbent,
        "diff": c.difference,
        "low": c.low,
        "high": c.high,
    }


def gate_from_settings(rollout: RolloutSettings) -> ModelGate:
    """The gate the ``rollout`` settings section describes."""
    return ModelGate(
        min_map50=rollout.gate_min_map50,
        min_held_out=rollout.gate_min_held_out,
        level=rollout.gate_interval_level,
        max_latency_p99_ms=rollout.gate_max_latency_p99_ms,
    )


def policy_from_settings(rollout: RolloutSettings) -> RolloutPolicy:
    """The rollout policy and gate the ``rollout`` settings section describes."""
    return RolloutPolicy(
        trial_outputs=rollout.trial_outputs,
        shadow_outputs=rollout.shadow_outputs,
        canary_fraction=rollout.canary_fraction,
        canary_outputs=rollout.canary_outputs,
        health_window=rollout.canary_health_window,
        max_latency_ratio=rollout.canary_max_latency_ratio,
        ks_p=rollout.canary_ks_p,
        min_agreement=rollout.canary_min_agreement,
        min_labels=rollout.canary_min_labels,
        gate=gate_from_settings(rollout),
    )


def _newer_than_production(control: ControlState, version: str, kind: str) -> bool:
    """Whether ``version`` was registered after the production model of its kind (or none
    serves): a production model that a newer one replaced is not rolled out again."""
    production = control.rollout(kind).production  # type: ignore[arg-type]
    order = list(control.registered)
    if production is None or production.version not in order:
        return True
    return order.index(version) > order.index(production.version)


@dataclass
class Lifecycle:
    """See the module docstring. ``tracks`` is the durable state (one per version in rollout)."""

    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    tracks: dict[str, RolloutTrack] = field(default_factory=dict)
    production_version: str | None = None
    resamples: int = 1000  # the canary quality's bootstrap, as the gate's
    level: float = 0.95
    seed: int = 0
    _pending: OrderedDict[tuple[str, str], tuple[float, float]] = field(default_factory=OrderedDict)

    @classmethod
    def from_settings(cls, rollout: RolloutSettings) -> Lifecycle:
        """The lifecycle the ``rollout`` settings section describes."""
        return cls(
            policy_from_settings(rollout),
            resamples=rollout.gate_bootstrap_resamples,
            level=rollout.gate_interval_level,
            seed=rollout.gate_bootstrap_seed,
        )

    def to_bytes(self) -> bytes:
        """The tracks, for the stats table (canonical JSON)."""
        return json.dumps(
            {v: json.loads(t.to_bytes()) for v, t in sorted(self.tracks.items())}, sort_keys=True
        ).encode()

    def load(self, data: bytes) -> None:
        self.tracks = {v: RolloutTrack(**t) for v, t in json.loads(data).items()}

    # -- inputs ------------------------------------------------------------------------------
    def on_control(self, control: ControlState, at: datetime) -> list[ControlEventRecord]:
        """Start what the log says is due: trials of new scorers, shadows of gated detectors."""
        events = []
        for version, slot in sorted(control.registered.items()):
            rollout = control.rollout(slot.kind)
            if version in control.rolled_back or rollout.role_of(version) is not None:
                continue
            gate = control.gates.get(version)
            if slot.kind == "scorer" and gate is None and version not in self.tracks:
                self.tracks[version] = RolloutTrack(version, "scorer", "trial")
                events.append(
                    self._event(EventType.MODEL_SHADOW_STARTED, version, "gate trial", at)
                )
            elif (
                gate is True
                and version not in self.tracks
                and rollout.canary is None
                and _newer_than_production(control, version, slot.kind)
            ):
                self.tracks[version] = RolloutTrack(version, slot.kind, "shadow")
                events.append(
                    self._event(EventType.MODEL_SHADOW_STARTED, version, "gate passed", at)
                )
        # forget tracks once the log has folded their outcome (promoted, rolled back, failed)
        for version in list(self.tracks):
            known = control.registered.get(version)
            role = control.rollout(known.kind).role_of(version) if known else None
            if (
                version in control.rolled_back
                or control.gates.get(version) is False
                or role == "production"
            ):
                del self.tracks[version]
        return events

    def on_score(self, score: ScoreRecord, control: ControlState) -> list[ControlEventRecord]:
        """Feed one score record; returns the lifecycle events it completes."""
        version, role = score["model_version"], score["role"]
        if role == "production":  # the configured backbone serves without a slot in the log
            self.production_version = version
        production = self.production_version
        track = self.tracks.get(version)
        value, latency = score_output(score), float(score["latency_ms"])
        if track is None:
            is_production = role == "production" or (role == "shadow" and version == production)
            if is_production:
                self._production_output(score["image_id"], value, latency, score["calibrated"])
            return []
        if track.phase in ("trial", "shadow") and role == "shadow":
            self.policy.observe(track, value, latency)
        elif track.phase == "canary" and role == "canary" and score["calibrated"]:
            self._pending[(version, score["image_id"])] = (value, latency)
            while len(self._pending) > PAIR_WAIT:
                (old_version, _), (old_value, old_latency) = self._pending.popitem(last=False)
                if old_version in self.tracks:
                    self.policy.observe(self.tracks[old_version], old_value, old_latency)
        return self._step(track, score["scored_at"])

    def on_candidate(
        self, candidate: CandidateRecord, label: Sequence[Box] | None = None
    ) -> list[ControlEventRecord]:
        """Feed one candidate: the served localizer's output and the unserved ones it carries;
        ``label``: its pseudo-label boxes when it became one (a detector canary's quality).

        Served boxes of a production detector are the reference every detector under rollout
        is compared with (distributions, pairs, latency ratio); before any detector serves, the
        baseline (source extraction) is no such reference (another method, far faster and with
        other confidences), so a first detector's canary is judged on its own outputs only (NaN,
        failures). A shadow's output counts for its shadow phase; a canary's served output is
        paired with production's on the same image (``detector_outputs`` role ``production``).
        """
        role = candidate.get("detector_role")
        version = candidate.get("detector_model_version") or ""
        value = candidate_output(candidate["boxes"])
        latency = float(candidate.get("detector_latency_ms") or 0.0)
        outputs = candidate.get("detector_outputs") or []
        touched: list[str] = []
        if role == "production":
            for track in self._tracks_of("detector"):
                self.policy.observe_production(track, value, latency)
        for output in outputs:
            shadow = self.tracks.get(output["model_version"])
            if output["role"] == "shadow" and shadow is not None and shadow.phase == "shadow":
                boxes = output["boxes"]
                self.policy.observe(
                    shadow,
                    candidate_output(boxes),
                    output["latency_ms"],
                    invalid=invalid_boxes(boxes) > 0,
                )
                touched.append(shadow.version)
        canary = self.tracks.get(version)
        if role == "canary" and canary is not None and canary.phase == "canary":
            pair = next((o for o in outputs if o["role"] == "production"), None)
            paired = candidate_output(pair["boxes"]) if pair else None
            if pair is not None and paired is not None:
                self.policy.observe_production(canary, paired, pair["latency_ms"])
            served = candidate["boxes"]
            invalid = invalid_boxes(served) > 0
            self.policy.observe(canary, value, latency, paired=paired, invalid=invalid)
            reference = pair or next((o for o in outputs if o["role"] == "baseline"), None)
            if label is not None and reference is not None and not invalid:
                self.policy.observe_labelled(
                    canary, _rows(served), _rows(reference["boxes"]), _rows(label)
                )
            touched.append(canary.version)
        events: list[ControlEventRecord] = []
        for name in dict.fromkeys(touched):
            events += self._step(self.tracks[name], candidate["detected_at"])
        return events

    # -- internals ---------------------------------------------------------------------------
    def _tracks_of(self, kind: str) -> Iterator[RolloutTrack]:
        return (t for t in self.tracks.values() if t.kind == kind and t.phase != "done")

    def _production_output(
        self, image_id: str, value: float, latency: float, calibrated: bool
    ) -> None:
        """Production's record: the pair of a waiting canary output, and the baseline."""
        for track in self._tracks_of("scorer"):
            if calibrated:
                self.policy.observe_production(track, value, latency)
            waiting = self._pending.pop((track.version, image_id), None)
            if waiting is not None:
                self.policy.observe(track, waiting[0], waiting[1], paired=value)

    def _step(self, track: RolloutTrack, at: datetime) -> list[ControlEventRecord]:
        due = track.outputs - track.healthy >= self.policy.health_window
        if track.kind == "detector" and track.phase == "canary" and due and track.labelled:
            track.quality = canary_quality(track.labelled, self.resamples, self.level, self.seed)
        return [self._apply(track, decision, at) for decision in self.policy.update(track)]

    def _apply(
        self, track: RolloutTrack, decision: RolloutDecision, at: datetime
    ) -> ControlEventRecord:
        kinds = {
            "gate_passed": EventType.MODEL_GATE_PASSED,
            "gate_failed": EventType.MODEL_GATE_FAILED,
            "canary": EventType.MODEL_CANARY_STARTED,
            "promote": EventType.MODEL_PROMOTED,
            "rollback": EventType.MODEL_ROLLED_BACK,
        }
        event = self._event(
            kinds[decision.step],
            track.version,
            decision.reason,
            at,
            evidence=decision.evidence,
            fraction=self.policy.canary_fraction if decision.step == "canary" else None,
            phase=track.phase,
        )
        if decision.step == "gate_passed":
            track.reset("shadow")
        elif decision.step == "canary":
            track.reset("canary")
        else:
            track.phase = "done"
        return event

    def _event(
        self,
        kind: EventType,
        version: str,
        reason: str,
        at: datetime,
        *,
        evidence: dict[str, float] | None = None,
        fraction: float | None = None,
        phase: str = "",
    ) -> ControlEventRecord:
        params = {"model_version": version, "reason": reason}
        if fraction is not None:
            params["fraction"] = fraction  # type: ignore[assignment]
        return new_event(
            kind,
            version,
            ISSUER,
            params,  # type: ignore[arg-type]
            evidence=evidence,
            at=at,
            event_id=decision_id("lifecycle", kind, version, phase),
        )
