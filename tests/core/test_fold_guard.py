"""The fold refuses hostile events (processors.core.fold_guard): each rule of the table, what a
refusal changes (only the count and the bounded list), the follower that skips refused events
for its ``on_event`` and tells the sink why, ``skyloop control`` and ``skyloop models``."""

from __future__ import annotations

import doctest
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.core import control, fold_guard
from processors.core.config import Settings
from processors.core.control import ControlState, new_event, replay
from processors.core.exceptions import ConfigError
from processors.core.fold_guard import REFUSALS_KEPT, refusal_reason
from processors.core.kafka import (
    ControlFollower,
    ensure_topics,
    make_producer,
    produce_control_event,
)
from processors.core.records import ControlEventRecord
from processors.core.registry import registry_view
from processors.operator import OperatorRequest, operator_event

A = "a" * 64
UNTIL = datetime(2026, 12, 1, 12, tzinfo=UTC)


def ev(kind: str, subject: str = "sky", **params: Any) -> ControlEventRecord:
    return new_event(kind, subject, "test", params)  # type: ignore[arg-type]


def registered(*versions: str) -> ControlState:
    """A state with ``versions`` registered (scorers), the first one gated and promoted."""
    events = [ev("model.registered", v, model_version=v) for v in versions]
    events += [ev("model.gate_passed", versions[0], model_version=versions[0])]
    events += [ev("model.promoted", versions[0], model_version=versions[0])]
    state = replay(enumerate(events))
    assert state.events_refused == 0 and state.production is not None
    return state


CALIBRATION = {"model_version": "m@1", "artifact_id": A, "target_fpr": 0.05, "vote_k": 2}
HOSTILE: list[tuple[ControlEventRecord, str]] = [
    (ev("threshold.set", thresholds={"knn": float("nan")}), "thresholds[knn] nan"),
    (ev("threshold.set", thresholds={"knn": -0.1}), "thresholds[knn] -0.1"),
    (ev("threshold.decayed", detector="knn", value=float("inf")), "value inf"),
    (ev("threshold.set", detector="knn"), "detector and value go together"),
    (ev("threshold.set", reason="empty"), "sets no threshold"),
    (ev("threshold.set", "a|b", thresholds={"knn": 0.9}), "is not a name"),
    (ev("threshold.set", thresholds={"knn": "0.9"}), "is not a number"),
    (ev("calibration.updated", **CALIBRATION, thresholds={"knn": 0.9}), "vote_k 2 is above"),
    (ev("calibration.updated", **{**CALIBRATION, "vote_k": 1}), "calibrates no detector"),
    (ev("calibration.updated", **{**CALIBRATION, "artifact_id": "../x"}), "not an artifact id"),
    (ev("calibration.updated", **{**CALIBRATION, "vote_k": 1.5}), "not an integer"),
    (ev("source.weights_set", "pipeline", weights={"sky": 1e300}), "is above 1e+06"),
    (ev("source.weights_set", "pipeline", weights={"sky": -1.0}), "weights[sky] -1"),
    (ev("source.weights_set", "pipeline", weights={"sky": 0.0}), "every weight is 0"),
    (ev("source.weights_set", "sky", weights={"ztf": 1.0}), "only that source's weight"),
    (ev("source.weights_set", "pipeline"), "no weights"),
    (ev("source.paused", until=UTC), "not a time"),
    (ev("source.paused", until=datetime(2026, 12, 1)), "not a time with a zone"),
    (ev("pipeline.paused", "pipeline", until="tomorrow"), "not a time"),
    (ev("retrain.requested", "detector"), "extra.manifest missing"),
    (ev("retrain.requested", "detector", extra={"manifest": "/etc/x"}), "not an artifact id"),
    (ev("model.registered", "v9", extra={"kind": "tree"}), "not scorer or detector"),
    (ev("model.registered", "v9", extra={"kind": 3}), "extra is not a map of strings"),
    (ev("model.registered", "v9", extra=["kind"]), "extra is not a map of strings"),
    (ev("model.registered", "v1", model_version="v1", backbone="other"), "immutable"),
    (ev("model.gate_passed", "ghost@9"), "not a registered version"),
    (ev("model.shadow_started", "ghost@9"), "not a registered version"),
    (ev("model.canary_started", "v2", model_version="v2", fraction=0.0), "fraction 0.0"),
    (ev("model.canary_started", "ghost@9", fraction=0.5), "not a registered version"),
    (ev("model.promoted", "ghost@9", model_version="ghost@9"), "not a registered version"),
    (ev("model.rolled_back", "ghost@9"), "not a registered version"),
    (ev("model.promoted", "v2", model_version=7), "model_version 7 is not a string"),
    ({**ev("drift.detected"), "caused_by": [["x"]]}, "caused_by"),  # type: ignore[list-item]
    ({**ev("drift.detected"), "evidence": {"p": "low"}}, "evidence"),  # type: ignore[list-item]
    ({**ev("drift.detected"), "subject": None}, "subject None"),  # type: ignore[list-item]
    ({**ev("drift.detected"), "params": None}, "params is not a record"),  # type: ignore[list-item]
    ({"type": "drift.detected"}, "malformed event: KeyError"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("event", "why"), HOSTILE, ids=[w for _, w in HOSTILE])
def test_each_rule_refuses_and_the_refusal_changes_nothing_else(
    event: ControlEventRecord, why: str
) -> None:
    state = registered("v1", "v2")
    after = state.apply(event, 99)
    assert after.events_refused == 1 and after.events_applied == state.events_applied
    assert why in after.refusals[-1].reason, after.refusals[-1].reason
    assert after.offset == 99  # the fold has read it
    assert replace(after, offset=state.offset, events_refused=0, refusals=()) == state


ACCEPTED = [
    ev("source.resumed"),  # never paused: a no-op
    ev("pipeline.resumed", "pipeline"),
    ev("model.gate_failed", "c7f6d8e0-request"),  # the trainer's answer to a failed training
    ev("model.registered", "v1", model_version="v1"),  # the same registration again
    ev("model.canary_started", "v2", model_version="v2", fraction=0.2),  # no gate: ignored
    ev("threshold.set", thresholds={"knn": 0.9}, model_version="never-registered@1"),
    ev("calibration.updated", **CALIBRATION, thresholds={"knn": 0.9, "energy": 0.8}),
    ev("source.weights_set", "sky", weights={"sky": 0.0}),
    ev("source.paused", until=UNTIL, reason="maintenance"),
    ev("retrain.requested", "detector", extra={"manifest": A}),
    {**ev("drift.detected"), "type": "source.exploded"},  # a newer type: counted, no effect
]


@pytest.mark.parametrize("event", ACCEPTED, ids=[e["type"] for e in ACCEPTED])
def test_harmless_and_valid_events_are_accepted(event: ControlEventRecord) -> None:
    state = registered("v1", "v2")
    assert refusal_reason(state, event) is None
    after = state.apply(event, 99)
    assert after.events_refused == 0 and after.events_applied == state.events_applied + 1


def test_refusals_are_counted_exactly_and_kept_bounded() -> None:
    hostile = [ev("threshold.set", detector="knn", value=float(-i)) for i in range(1, 41)]
    log = [ev("source.paused"), *hostile]
    state = replay(enumerate(log))
    assert state.events_refused == 40 and state.events_applied == 1
    assert len(state.refusals) == REFUSALS_KEPT
    assert [r.offset for r in state.refusals] == list(range(41 - REFUSALS_KEPT, 41))
    assert state.is_source_paused("sky") and state.source_thresholds == {}
    assert replay(enumerate(log)).fingerprint() == state.fingerprint()


def test_a_handler_that_raises_is_a_refusal_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injected into the fold table: the safety net behind the guard holds."""

    def broken(base: ControlState, event: ControlEventRecord) -> ControlState:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(control, "FOLD", {**control.FOLD, "drift.detected": broken})
    state = ControlState.initial().apply(ev("drift.detected"), 0)
    assert state.events_refused == 1 and state.drift_events == 0
    assert state.refusals[0].reason == "the fold raised ZeroDivisionError: injected"


def test_operators_cannot_append_what_the_fold_refuses() -> None:
    state = ControlState.initial()
    with pytest.raises(ConfigError, match=r"fold would refuse.*above 1e"):
        operator_event(OperatorRequest("weights", weights=("sky=1e7",), force=True), state)
    event = operator_event(OperatorRequest("weights", weights=("sky=2",), force=True), state)
    assert refusal_reason(state, event) is None


def test_skyloop_models_leaves_refused_events_out() -> None:
    events = [
        ev("model.registered", "v1", model_version="v1"),
        ev("model.promoted", "ghost@9", model_version="ghost@9"),
        ev("model.registered", "v1", model_version="v1", backbone="other"),
        ev("model.gate_passed", "v1", model_version="v1"),
    ]
    rows = registry_view(events)
    assert [(r.version, r.history) for r in rows] == [("v1", ["registered", "gate_passed"])]


def test_the_follower_skips_refused_events_and_tells_why(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    seen: list[str] = []
    follower = ControlFollower(
        settings, kafka_bootstrap, on_event=lambda _s, e: seen.append(e["type"])
    ).start()
    try:
        produce_control_event(producer, settings, ev("source.paused", reason="ok"))
        hostile = ev("retrain.requested", "detector")
        produce_control_event(producer, settings, hostile)
        produce_control_event(producer, settings, ev("source.resumed"))
        assert follower.refusal_at(0, timeout_s=20) is None
        assert follower.refusal_at(1, timeout_s=20) == "extra.manifest missing"
        assert follower.refusal_at(2, timeout_s=20) is None
        assert seen == ["source.paused", "source.resumed"]
        assert follower.state.events_refused == 1 and follower.state.offset == 2
        assert not follower.has_event(hostile["event_id"])
        with pytest.raises(TimeoutError):
            follower.refusal_at(10, timeout_s=0.2)
    finally:
        follower.close()


def test_doctests() -> None:
    result = doctest.testmod(fold_guard)
    assert result.attempted > 0 and result.failed == 0


def test_a_calibration_of_an_older_log_is_accepted() -> None:
    """Logs written before calibrations were per model hold calibrations without a model
    version, artifact or target rate; the fold has always read them, so replay must too."""
    old = new_event("calibration.updated", "sky", "controller", {"thresholds": {"knn": 0.9}})
    assert refusal_reason(ControlState.initial(), old) is None
