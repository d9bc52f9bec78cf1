"""The model lifecycle on streams of score records: gate, shadow, canary, promote, rollback.

The lifecycle's events are folded into a real ``ControlState`` as the processors would, so each
test also checks what the fold lets serve (a failed or rolled-back model never does).
"""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from processors.controller import lifecycle
from processors.controller.lifecycle import Lifecycle
from processors.core import registry, rollouts
from processors.core.control import ControlState, new_event
from processors.core.records import ControlEventRecord, ScoreRecord
from processors.policies import gate, retrain, rollout
from processors.policies.rollout import RolloutPolicy
from processors.score.routing import plan_roles

T0 = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = RolloutPolicy(trial_outputs=16, shadow_outputs=16, health_window=16, canary_outputs=48)


@pytest.mark.parametrize("module", [gate, retrain, rollout, rollouts, registry])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def score(
    image: int, version: str, role: str, value: float, *, latency: float = 10.0
) -> ScoreRecord:
    raw = value if np.isfinite(value) else float("nan")
    return ScoreRecord(
        image_id=f"img-{image}",
        source="sky",
        model_version=version,
        backbone="efficientnet_lite0",
        role=role,  # type: ignore[typeddict-item]
        detectors=[
            {"detector": d, "raw": raw, "score": value, "threshold": 0.9, "vote": False}
            for d in ("mahalanobis", "energy", "knn")
        ],
        ensemble_score=value,
        votes_for=0,
        votes_needed=2,
        is_candidate=False,
        calibrated=True,
        batch_size=16,
        latency_ms=latency,
        control_offset=0,
        scored_at=T0 + timedelta(seconds=image),
    )


class Pipeline:
    """The lifecycle plus the fold: events it emits are applied before the next record."""

    def __init__(self) -> None:
        self.lifecycle = Lifecycle(POLICY)
        self.state = ControlState.initial()
        self.events: list[ControlEventRecord] = []
        self.image = 0

    def apply(self, events: list[ControlEventRecord]) -> None:
        for event in events:
            self.state = self.state.apply(event, len(self.events))
            self.events.append(event)

    def register(self, version: str) -> None:
        """Register ``version``; its lane is calibrated at once (in a run: during its trial)."""
        params = {
            "model_version": version,
            "artifact_id": "a" * 64,
            "target_fpr": 0.05,  # as the controller's
            "thresholds": {"knn": 0.9},  # the fold refuses a calibration of no detector
        }
        self.apply([new_event("calibration.updated", "sky", "controller", params)])  # type: ignore[arg-type]
        self.apply(
            [new_event("model.registered", version, "operator:test", {"model_version": version})]
        )
        self.apply(self.lifecycle.on_control(self.state, T0))

    def batch(self, production: float, candidate: float, n: int = 16) -> None:
        """``n`` images scored as the scorer's plan routes them, with the given outputs."""
        rng = np.random.default_rng(self.image)
        ids = [f"img-{self.image + i}" for i in range(n)]
        plan = plan_roles(ids, ["sky"] * n, self.state, "prod@1")
        for a in plan:
            for row in a.rows:
                noise = float(rng.uniform(0, 0.5))
                base = (row % 7) / 7  # a ranking both healthy models agree on
                value = production if a.model_version == "prod@1" else candidate
                output = value + base + noise * 0.01 if np.isfinite(value) else value
                record = score(self.image + row, a.model_version, a.role, output)
                calibrated = self.state.calibration_for(a.model_version, "sky") is not None
                record["calibrated"] = calibrated or a.model_version == "prod@1"
                self.apply(self.lifecycle.on_score(record, self.state))
        self.image += n
        self.apply(self.lifecycle.on_control(self.state, T0))

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


def test_a_broken_scoring_model_fails_its_gate_and_never_serves() -> None:
    p = Pipeline()
    p.register("nan@2")
    assert p.state.shadow is not None and p.state.shadow.version == "nan@2"
    for _ in range(4):
        p.batch(production=0.1, candidate=float("nan"))
    assert p.types()[1:] == ["model.registered", "model.shadow_started", "model.gate_failed"]
    assert p.events[-1]["evidence"]["candidate_nan_outputs"] >= 16
    assert p.state.shadow is None and p.state.canary is None and p.state.gates["nan@2"] is False
    # an operator's (or anyone's) canary or promotion of it is not folded: it never serves
    p.apply([new_event("model.canary_started", "nan@2", "op", {"fraction": 1.0})])
    p.apply([new_event("model.promoted", "nan@2", "op", {})])
    assert p.state.canary is None and p.state.production is None
    assert all(a.model_version == "prod@1" for a in plan_roles(["x"], ["sky"], p.state, "prod@1"))


def test_a_healthy_model_goes_through_shadow_and_canary_to_production() -> None:
    p = Pipeline()
    p.register("good@2")
    for _ in range(60):
        p.batch(production=0.0, candidate=0.0)
        if p.state.production is not None:
            break
    assert p.types()[1:] == [
        "model.registered",
        "model.shadow_started",
        "model.gate_passed",
        "model.canary_started",
        "model.promoted",
    ]
    assert p.state.production is not None and p.state.production.version == "good@2"
    assert p.state.replaced is None  # the configured backbone served before: no slot
    promoted = p.events[-1]["evidence"]
    assert promoted["agreement"] > 0.9 and promoted["nan_outputs"] == 0


def test_a_model_that_degrades_in_canary_is_rolled_back_after_one_window() -> None:
    p = Pipeline()
    p.register("drifty@2")
    while p.state.canary is None:
        p.batch(production=0.0, candidate=0.0)
        assert p.image < 200
    canary_start = p.image
    for _ in range(20):
        p.batch(production=0.0, candidate=-1.0)  # constant offset: ranks agree, KS does not
        if "model.rolled_back" in p.types():
            break
    assert p.types()[-1] == "model.rolled_back"
    assert "KS" in (p.events[-1]["params"].get("reason") or "")
    assert p.state.canary is None and p.state.rolled_back["drifty@2"]
    # one health window of canary outputs (half of the images route to it at fraction 0.2..1)
    assert p.image - canary_start <= 16 * 6
    p.apply([new_event("model.canary_started", "drifty@2", "op", {"fraction": 0.5})])
    assert p.state.canary is None  # rolled back stays out


def test_rolling_back_production_restores_the_version_it_replaced() -> None:
    state = ControlState.initial()
    for i, (kind, version) in enumerate(
        [
            ("model.registered", "a@1"),
            ("model.gate_passed", "a@1"),
            ("model.promoted", "a@1"),
            ("model.registered", "b@2"),
            ("model.gate_passed", "b@2"),
            ("model.promoted", "b@2"),
            ("model.rolled_back", "b@2"),
        ]
    ):
        state = state.apply(new_event(kind, version, "op", {"model_version": version}), i)
    assert state.production is not None and state.production.version == "a@1"


def test_detector_rollouts_are_separate_from_the_scorers() -> None:
    state = ControlState.initial()
    reg = {"model_version": "yolo@1", "extra": {"kind": "detector"}}
    for i, (kind, params) in enumerate(
        [
            ("model.registered", reg),
            ("model.gate_passed", {"model_version": "yolo@1"}),
            ("model.promoted", {"model_version": "yolo@1"}),
        ]
    ):
        state = state.apply(new_event(kind, "yolo@1", "trainer", params), i)  # type: ignore[arg-type]
    assert state.detector.production is not None and state.production is None


def test_the_registry_view_shows_roles_gates_and_lineage() -> None:
    events = [
        new_event("model.registered", "a@1", "op", {"model_version": "a@1"}, evidence={"x": 1.0}),
        new_event("model.gate_passed", "a@1", "c", {"model_version": "a@1"}, evidence={"y": 2.0}),
        new_event("model.promoted", "a@1", "c", {"model_version": "a@1"}),
        new_event(
            "model.registered",
            "b@2",
            "trainer",
            {"model_version": "b@2", "extra": {"kind": "detector", "parent": "a@1"}},
        ),
        new_event("model.gate_failed", "b@2", "trainer", {"model_version": "b@2"}),
    ]
    rows = {r.version: r for r in registry.registry_view(events)}
    assert (rows["a@1"].role, rows["a@1"].gate, rows["a@1"].metrics) == (
        "production",
        "passed",
        {"x": 1.0, "y": 2.0},
    )
    assert (rows["b@2"].role, rows["b@2"].kind, rows["b@2"].parent) == (
        "rejected",
        "detector",
        "a@1",
    )


def test_lifecycle_tracks_survive_serialisation() -> None:
    p = Pipeline()
    p.register("good@2")
    p.batch(production=0.0, candidate=0.0)
    again = Lifecycle(POLICY)
    again.load(p.lifecycle.to_bytes())
    assert again.tracks == p.lifecycle.tracks
    assert lifecycle.score_output(score(1, "v", "shadow", float("nan"))) != 0.0


@pytest.mark.parametrize(("kind", "step"), [("scorer", "rollback"), ("detector", None)])
def test_rank_disagreement_rolls_back_a_scorer_but_not_a_detector(kind: str, step: str) -> None:
    """Outputs that rank images in the opposite order to production's, otherwise healthy (same
    distribution, same latency): meaningless for a scoring model; for a detector, whose gate
    compared it with production on held-out data, a different ranking is what better means."""
    policy = RolloutPolicy(health_window=16, canary_outputs=64)
    track = rollout.RolloutTrack(version="v2", kind=kind, phase="canary")  # type: ignore[arg-type]
    values = np.random.default_rng(3).uniform(size=16)
    for value in values:
        policy.observe(track, float(value), 10.0, paired=1.0 - float(value))
        policy.observe_production(track, 1.0 - float(value), 10.0)
    decision = policy.decide(track)
    assert (decision.step if decision else None) == step
    assert policy._evidence(track)["agreement"] < -0.9  # recorded either way
