"""A detector canary is judged on quality, not on sameness; a scorer still on sameness.

Candidate records as the detect processor writes them (served boxes, the unserved outputs of
production or the baseline, a pseudo-label's boxes from its pixels) go through the lifecycle;
its events are folded into a real ``ControlState`` before the next record, so each test also
checks what the fold lets serve.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from processors.controller.lifecycle import Lifecycle, invalid_boxes
from processors.core.control import ControlState, new_event
from processors.core.records import Box, CandidateRecord, ControlEventRecord, DetectorOutput
from processors.core.rollouts import routes_to_canary
from processors.policies.rollout import RolloutPolicy
from tests.controller.test_lifecycle import Pipeline

T0 = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = RolloutPolicy(shadow_outputs=16, health_window=16, canary_outputs=64, min_labels=30)
Localize = Callable[[Box, np.random.Generator], list[Box]]


def _box(x: float, y: float, confidence: float, size: float = 8.0) -> Box:
    return Box(label="source", confidence=confidence, x1=x, y1=y, x2=x + size, y2=y + size)


def exact(confidence: tuple[float, float]) -> Localize:
    """Finds every truth box exactly, with confidences drawn from ``confidence``."""
    return lambda t, rng: [_box(t["x1"], t["y1"], float(rng.uniform(*confidence)))]


def half_missed(t: Box, rng: np.random.Generator) -> list[Box]:
    """Half the sources boxed 6 px off (IoU below 0.5), confidently."""
    shift = 6.0 if rng.uniform() < 0.5 else 0.0
    return [_box(t["x1"] + shift, t["y1"], float(rng.uniform(0.85, 0.95)))]


def extraction(t: Box, rng: np.random.Generator) -> list[Box]:
    """As source extraction: the source, and a brighter normal one elsewhere in the image."""
    other = _box(float((t["x1"] + 30) % 50), float(rng.uniform(0, 50)), 0.9)
    return [_box(t["x1"], t["y1"], float(rng.uniform(0.5, 0.6))), other]


def mostly_missed(t: Box, rng: np.random.Generator) -> list[Box]:
    shift = 6.0 if rng.uniform() < 0.8 else 0.0
    return [_box(t["x1"] + shift, t["y1"], float(rng.uniform(0.85, 0.95)))]


class Detectors:
    """The lifecycle and the fold over candidates of a detector rollout (``yolo@2``)."""

    def __init__(self, production: Localize | None, challenger: Localize) -> None:
        self.lifecycle = Lifecycle(POLICY, resamples=300)
        self.state = ControlState.initial()
        self.events: list[ControlEventRecord] = []
        self.production, self.challenger = production, challenger
        self.rng = np.random.default_rng(5)
        self.image = 0
        if production is not None:
            self._register("yolo@1", "model.gate_passed", "model.promoted")
        self._register("yolo@2", "model.gate_passed")
        self.apply(self.lifecycle.on_control(self.state, T0))

    def _register(self, version: str, *steps: str) -> None:
        reg = {"model_version": version, "artifact_id": "0" * 64, "extra": {"kind": "detector"}}
        self.apply([new_event("model.registered", version, "trainer", reg)])  # type: ignore[arg-type]
        for step in steps:
            self.apply([new_event(step, version, "trainer", {"model_version": version})])

    def apply(self, events: list[ControlEventRecord]) -> None:
        for event in events:
            self.state = self.state.apply(event, len(self.events))
            self.events.append(event)

    def candidate(self) -> None:
        image_id, self.image = f"img-{self.image}", self.image + 1
        x, y = self.rng.uniform(0, 50, 2)
        truth = _box(float(x), float(y), 1.0)
        mine = self.challenger(truth, self.rng)
        theirs = (self.production or extraction)(truth, self.rng)
        reference = DetectorOutput(
            model_version="yolo@1" if self.production else "baseline:source-extraction",
            role="production" if self.production else "baseline",
            boxes=theirs,
            latency_ms=20.0,
        )
        rollout = self.state.detector
        canary = rollout.canary is not None and routes_to_canary(image_id, rollout.canary.fraction)
        outputs = [reference] if canary else []
        if rollout.shadow is not None:
            outputs.append(
                DetectorOutput(model_version="yolo@2", role="shadow", boxes=mine, latency_ms=20.0)
            )
        served = mine if canary else theirs
        record = CandidateRecord(
            image_id=image_id,
            source="sky",
            model_version="prod@1",
            ensemble_score=0.99,
            detector_scores={},
            ra=None,
            dec=None,
            boxes=served,
            crossmatches=[],
            label_status="pseudo_label",
            detector_model_version="yolo@2" if canary else reference["model_version"],
            detected_at=T0 + timedelta(seconds=self.image),
            control_offset=0,
            detector_role="canary" if canary else reference["role"],
            detector_latency_ms=20.0,
            sample_id="s" * 64,
            detector_outputs=outputs,
        )
        self.apply(self.lifecycle.on_candidate(record, [truth] if canary else None))
        self.apply(self.lifecycle.on_control(self.state, T0))

    def run(self, limit: int = 3000) -> str:
        while self.image < limit:
            self.candidate()
            last = self.events[-1]["type"]
            if last in ("model.promoted", "model.rolled_back"):
                return last
        return "undecided"


@pytest.mark.parametrize("production", [half_missed, None], ids=["detector", "baseline"])
def test_a_better_but_different_detector_is_promoted(production: Localize | None) -> None:
    """Its confidences are nothing like production's (KS p far below the scorers' bound), but
    its boxes match the pseudo-labels better on the canary's own traffic: promoted. Against
    the baseline (no production detector yet) the same."""
    p = Detectors(production, exact((0.05, 0.3)))
    assert p.run() == "model.promoted", p.events[-1]["params"]
    evidence = p.events[-1]["evidence"]
    assert evidence["canary_quality_images"] >= 30
    assert evidence["canary_quality_diff"] >= 0
    if production is not None:
        assert evidence["ks_p"] < POLICY.ks_p  # different, by design: evidence only
    assert p.state.detector.production is not None
    assert p.state.detector.production.version == "yolo@2"
    # the production detector it replaced is never rolled out again
    assert p.lifecycle.on_control(p.state, T0) == []


def test_a_worse_detector_is_rolled_back_on_its_quality() -> None:
    p = Detectors(exact((0.85, 0.95)), mostly_missed)
    assert p.run() == "model.rolled_back"
    reason = p.events[-1]["params"]["reason"]
    assert reason.startswith("worse than production in canary"), reason
    evidence = p.events[-1]["evidence"]
    assert evidence["canary_quality_high"] < 0 or evidence["canary_quality_diff"] < 0
    assert p.state.detector.production is not None
    assert p.state.detector.production.version == "yolo@1"
    assert p.state.rolled_back["yolo@2"]


def test_a_detector_with_invalid_boxes_is_rolled_back() -> None:
    def inverted(t: Box, rng: np.random.Generator) -> list[Box]:
        return [Box(**{**t, "x2": t["x1"] - 1.0, "confidence": 0.9})]  # type: ignore[typeddict-item]

    assert invalid_boxes(inverted(_box(1, 1, 1), np.random.default_rng(0))) == 1
    p = Detectors(exact((0.85, 0.95)), inverted)
    assert p.run() == "model.rolled_back"
    assert "invalid boxes" in p.events[-1]["params"]["reason"]


class Scrambled(Pipeline):
    """A scoring model whose outputs are finite, like production's in distribution, but in no
    relation to the images: a permutation of what production would say."""

    def batch(self, production: float, candidate: float, n: int = 16) -> None:
        if self.state.canary is None:
            return super().batch(production, candidate, n)
        from processors.score.routing import plan_roles
        from tests.controller.test_lifecycle import score

        rng = np.random.default_rng(self.image)
        ids = [f"img-{self.image + i}" for i in range(n)]
        values = [(i % 7) / 7 for i in range(n)]
        shuffled = list(rng.permutation(values))
        for a in plan_roles(ids, ["sky"] * n, self.state, "prod@1"):
            for row in a.rows:
                value = values[row] if a.model_version == "prod@1" else float(shuffled[row])
                record = score(self.image + row, a.model_version, a.role, value)
                self.apply(self.lifecycle.on_score(record, self.state))
        self.image += n
        self.apply(self.lifecycle.on_control(self.state, T0))
        return None


def test_a_scrambled_scorer_is_still_rolled_back() -> None:
    p = Scrambled()
    p.register("scrambled@2")
    for _ in range(80):
        p.batch(production=0.0, candidate=0.0)
        if p.types()[-1] in ("model.rolled_back", "model.promoted"):
            break
    assert p.types()[-1] == "model.rolled_back"
    assert "agreement" in p.events[-1]["params"]["reason"]
    assert p.state.production is None
