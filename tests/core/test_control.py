from __future__ import annotations

import random
import time

import pytest

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState, new_event, replay
from processors.core.exceptions import ConfigError
from processors.core.kafka import (
    ControlFollower,
    ensure_topics,
    make_producer,
    produce_control_event,
)
from processors.core.records import ControlEventRecord


def history(seed: int) -> list[ControlEventRecord]:
    rng = random.Random(seed)
    events = [
        new_event(
            "calibration.updated",
            "sky",
            "controller",
            {
                "model_version": "effnet@1",
                "artifact_id": "a" * 64,
                "target_fpr": 0.05,
                "vote_k": 2,
                "thresholds": {"knn": 0.95, "energy": 0.95},
            },
        ),
        new_event("model.registered", "effnet@2", "retrainer", {"model_version": "effnet@2"}),
        new_event("model.gate_passed", "effnet@2", "controller", {"model_version": "effnet@2"}),
        new_event(
            "model.canary_started",
            "effnet@2",
            "controller",
            {"model_version": "effnet@2", "fraction": 0.2},
        ),
    ]
    for i in range(40):
        source = rng.choice(["sky", "hubble", "ztf"])
        kind = rng.choice(["threshold.set", "threshold.decayed", "source.paused", "source.resumed"])
        params = (
            {"detector": rng.choice(["knn", "energy"]), "value": rng.random()}
            if "threshold" in kind
            else {"reason": f"r{i}"}
        )
        events.append(new_event(kind, source, "controller", params))  # type: ignore[arg-type]
    return events


def test_replay_of_the_same_log_gives_the_same_state() -> None:
    events = list(enumerate(history(1)))
    assert replay(events) == replay(events)
    assert replay(events).fingerprint() == replay(events).fingerprint()
    assert replay(events).fingerprint() != replay(list(enumerate(history(2)))).fingerprint()


def test_replay_through_avro_is_identical_to_the_in_memory_fold() -> None:
    codec = default_codec()
    events = history(3)
    decoded = [
        codec.decode(codec.encode(e, "skyloop.ControlEvent"), "skyloop.ControlEvent")
        for e in events
    ]
    assert replay(enumerate(events)).fingerprint() == replay(enumerate(decoded)).fingerprint()  # type: ignore[arg-type]


def test_the_fold_applies_each_event_type() -> None:
    state = replay(enumerate(history(4)[:4]))
    cal = state.calibration_for("effnet@1", "sky")
    assert state.calibration_for("effnet@1", "hubble") is None
    assert cal is not None and cal.thresholds["knn"] == 0.95 and cal.vote_k == 2
    assert state.canary is not None and state.canary.fraction == 0.2
    state = state.apply(new_event("threshold.set", "sky", "op", {"thresholds": {"knn": 0.9}}), 3)
    assert state.threshold_for("effnet@1", "sky", "knn", default=0.5) == 0.9
    assert state.threshold_for("effnet@1", "hubble", "knn", default=0.5) == 0.5
    state = state.apply(new_event("source.paused", "sky", "op", {"reason": "errors"}), 4)
    assert state.is_source_paused("sky")
    state = state.apply(new_event("source.resumed", "sky", "op"), 5)
    assert not state.is_source_paused("sky")
    state = state.apply(new_event("pipeline.paused", "pipeline", "op", {"reason": "latency"}), 6)
    assert state.pipeline_paused is not None and state.pipeline_paused.reason == "latency"
    assert state.offset == 6 and state.events_applied == 8
    state = state.apply(new_event("threshold.set", "hubble", "op", {"thresholds": {"knn": 0.8}}), 7)
    own = {"thresholds": {"knn": 0.7}, "model_version": "effnet@1"}
    state = state.apply(new_event("threshold.set", "sky", "controller", own), 8)
    other = {"thresholds": {"knn": 0.6}, "model_version": "other@2"}
    state = state.apply(new_event("threshold.set", "sky", "controller", other), 9)
    assert state.threshold_for("effnet@1", "sky", "knn", default=0.5) == 0.7
    assert state.threshold_for("other@2", "sky", "knn", default=0.5) == 0.6
    # A new calibration of (effnet@1, sky) supersedes that pair's overrides only: not another
    # model's, not another source's, not a model-less operator override.
    state = state.apply(history(4)[0], 10)
    assert state.threshold_for("effnet@1", "sky", "knn", default=0.5) == 0.9  # operator's
    assert state.threshold_for("other@2", "sky", "knn", default=0.5) == 0.6
    assert state.threshold_for("effnet@1", "hubble", "knn", default=0.5) == 0.8


def test_a_revision_request_names_the_calibrations_it_comes_after() -> None:
    from processors.operator import OperatorRequest, operator_event

    state = replay(enumerate(history(4)[:4]))
    sky = {c.event_id for c in state.calibrations.values() if c.source == "sky"}
    request = operator_event(OperatorRequest("revise", source="sky"), state)
    assert request["type"] == "revision.requested" and request["subject"] == "sky"
    state = state.apply(request, 4)
    folded = state.revision_requests["sky"]
    assert folded.event_id == request["event_id"] and set(folded.calibrations) == sky
    later = state.apply(history(4)[0], 5)  # a calibration after the request: not named by it
    assert later.revision_requests["sky"] == folded and set(folded.calibrations) == sky
    with pytest.raises(ConfigError, match="revise SOURCE"):
        operator_event(OperatorRequest("revise", source="nowhere"), state)


def test_unknown_event_types_are_counted_but_change_nothing() -> None:
    event = new_event("drift.detected", "sky", "controller")
    event["type"] = "something.new"
    state = ControlState.initial().apply(event, 0)
    assert state.events_applied == 1
    assert state.fingerprint() != ControlState.initial().fingerprint()
    assert state.calibrations == ControlState.initial().calibrations


def test_followers_started_at_different_times_reach_the_same_state(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    events = history(5)
    early = ControlFollower(settings, kafka_bootstrap).start()
    for event in events[:20]:
        produce_control_event(producer, settings, event)
    late = ControlFollower(settings, kafka_bootstrap).start()
    for event in events[20:]:
        produce_control_event(producer, settings, event)
    try:
        assert early.log_end() == len(events)
        for follower in (early, late):
            assert follower.wait_caught_up(timeout_s=20)
        expected = replay(enumerate(events))
        assert early.state.fingerprint() == late.state.fingerprint() == expected.fingerprint()
        assert late.state.offset == len(events) - 1
    finally:
        early.close()
        late.close()


def test_an_event_is_applied_before_anything_produced_after_it(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    follower = ControlFollower(settings, kafka_bootstrap).start()
    try:
        event = new_event("pipeline.paused", "pipeline", "op", {"reason": "test"})
        started = time.monotonic()
        produce_control_event(producer, settings, event)
        assert follower.wait_for_offset(follower.log_end(), timeout_s=10)
        assert follower.state.pipeline_paused is not None
        assert follower.state.pipeline_paused.reason == "test"
        assert time.monotonic() - started < 10
    finally:
        follower.close()


def test_every_event_type_has_a_params_model_and_its_strings_are_unchanged() -> None:
    from processors.core.event_params import PARAMS_MODELS, params_of
    from processors.core.events import EVENT_TYPES, EventType

    assert set(PARAMS_MODELS) == set(EventType)
    assert {t.value for t in EventType} == EVENT_TYPES
    assert EventType.MODEL_ROLLED_BACK == "model.rolled_back"
    for event in history(3):
        assert params_of(event) is not None


def test_params_validity_finite_and_in_range() -> None:
    from processors.core.event_params import params_problems, params_valid

    def ev(kind: str, params: dict[str, object]) -> ControlEventRecord:
        return new_event(kind, "sky", "operator", params)  # type: ignore[arg-type]

    assert all(params_valid(e) for e in history(4))
    assert params_valid(ev("threshold.set", {"detector": "knn", "value": 0.9}))
    assert not params_valid(ev("threshold.set", {"detector": "knn", "value": float("inf")}))
    assert not params_valid(ev("threshold.decayed", {"thresholds": {"knn": 1.6}}))
    assert not params_valid(ev("threshold.set", {"thresholds": {"knn": 1.05}}))
    # a calibration on a small reference may flag nothing: its grid ends at 1 + 0.5 / m
    assert params_valid(ev("threshold.decayed", {"thresholds": {"knn": 1.05}}))
    assert not params_valid(ev("source.weights_set", {"weights": {"sky": -0.1}}))
    assert not params_valid(ev("source.weights_set", {"weights": {"sky": float("nan")}}))
    assert params_valid(ev("model.canary_started", {"fraction": 0.2}))
    assert not params_valid(ev("model.canary_started", {"fraction": 0.0}))
    assert not params_valid(ev("model.registered", {"extra": {"kind": "tree"}}))
    assert not params_valid(ev("retrain.requested", {"reason": "x"}))
    bad_cal = {"artifact_id": "a", "target_fpr": 1.5, "vote_k": -1, "thresholds": {"knn": 0.9}}
    assert params_problems(ev("calibration.updated", bad_cal)) == [
        "target_fpr 1.5 is not in [0, 1]",
        "vote_k -1 < 1",
    ]
    from processors.core.event_params import ModelParams, ThresholdParams

    promoted = ev("model.promoted", {"model_version": "v2"})
    assert ModelParams.of(promoted).model_version == "v2"
    with pytest.raises(ValueError, match="not ThresholdParams"):
        ThresholdParams.of(promoted)
    unknown = dict(ev("drift.detected", {}), type="source.exploded")
    assert params_problems(unknown) == ["unknown event type 'source.exploded'"]  # type: ignore[arg-type]


def test_the_fold_is_a_table_over_the_event_types() -> None:
    from processors.core.control import FOLD
    from processors.core.events import EventType

    folded = {t for t in EventType if t in FOLD}
    audit_only = {
        EventType.RETRAIN_REQUESTED,
        EventType.BUDGET_DEFERRED,
        EventType.DECISIONS_REVISED,
    }
    assert folded == set(EventType) - audit_only


def test_the_fold_is_not_imported_back_by_what_it_imports() -> None:
    """No import cycle through core/control.py (imports under TYPE_CHECKING count too)."""
    import ast
    from pathlib import Path

    import processors

    root = Path(processors.__file__).parent

    def imports_of(module: str) -> set[str]:
        path = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
        if not path.exists():
            path = path.with_suffix("") / "__init__.py"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return {m for m in found if m.startswith("processors.")}

    seen: set[str] = set()
    todo = list(imports_of("processors.core.control"))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += imports_of(module)
    assert "processors.core.control" not in seen
    assert {"processors.core.events", "processors.core.rollouts"} <= seen


@pytest.mark.parametrize("name", ["control", "events", "event_params"])
def test_doctests(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"processors.core.{name}"))
    assert result.attempted > 0 and result.failed == 0
