"""Property tests of the control fold over generated event streams (hypothesis).

Streams mix valid events with hostile ones (NaN, infinities, negative and huge numbers, versions
never registered, wrong types in ``params`` and ``extra``, malformed names), in any order. For
every stream: the fold raises nothing, folding it twice gives the same state and fingerprint,
the guard has no gap (no refusal comes from a handler that raised), and the state's invariants
(:func:`invariant_problems`) hold. The invariant checker is itself shown to catch a state the
guard would have prevented (an event folded past the guard).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.core.codec import default_codec
from processors.core.control import FOLD, ControlState, new_event, replay
from processors.core.event_params import THRESHOLD_RANGE
from processors.core.events import EventType
from processors.core.fold_guard import MAX_WEIGHT, REFUSALS_KEPT
from processors.core.records import ControlEventRecord

SOURCES = ["sky", "hubble", "ztf"]
VERSIONS = ["v1", "v2", "yolo@1", "ghost@9"]
T0 = datetime(2026, 12, 1, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_numbers = st.sampled_from(
    [math.nan, math.inf, -math.inf, -1.0, -1e-9, 1e300, 1e7, 2.0, 0.0, 1.0, 0.5, 7, True]
)
numbers = st.one_of(st.floats(0.0, 1.0), hostile_numbers)
wrong = st.one_of(st.text(max_size=3), st.lists(st.integers(), max_size=2), st.none(), numbers)
names = st.one_of(st.sampled_from(SOURCES), st.sampled_from(["", "a|b", " sky", "x" * 300]))
versions = st.one_of(st.sampled_from(VERSIONS), st.none(), st.sampled_from(["", "v|1"]))
artifact = st.sampled_from(["a" * 64, "b" * 64, "../../etc/passwd", "sha256:abc"])


@st.composite
def params(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """Params a type reads, each field valid, hostile, of a wrong type, or absent."""
    p: dict[str, Any] = {}

    def maybe(key: str, valid: st.SearchStrategy[Any]) -> None:
        choice = draw(st.integers(0, 5))
        if choice <= 2:
            p[key] = draw(valid)
        elif choice == 3:
            p[key] = draw(wrong)

    maybe("model_version", versions)
    maybe("reason", st.text(max_size=5))
    if kind.startswith("threshold") or kind == "calibration.updated":
        maybe("thresholds", st.dictionaries(st.sampled_from(["knn", "energy", 3]), numbers))
        maybe("detector", st.sampled_from(["knn", "energy"]))
        maybe("value", numbers)
        maybe("artifact_id", artifact)
        maybe("target_fpr", numbers)
        maybe("vote_k", st.one_of(st.integers(-2, 4), st.just(2.5)))
    if kind == "source.weights_set":
        maybe("weights", st.dictionaries(names, numbers, max_size=3))
    if kind.endswith("paused"):
        maybe("until", st.sampled_from([T0, T0 + timedelta(hours=1), T0.replace(tzinfo=None)]))
    if kind.startswith("model.") or kind == "retrain.requested":
        maybe("backbone", st.sampled_from(["efficientnet_lite0", "other"]))
        maybe("artifact_id", artifact)
        maybe("fraction", numbers)
        extra = st.dictionaries(
            st.sampled_from(["kind", "manifest", "card"]),
            st.one_of(st.sampled_from(["scorer", "detector", "tree", "a" * 64]), wrong),
            max_size=2,
        )
        maybe("extra", st.one_of(extra, wrong))
    return p


@st.composite
def events(draw: st.DrawFn) -> ControlEventRecord:
    kind = draw(st.sampled_from([t.value for t in EventType] + ["source.exploded"]))
    is_model = kind.startswith("model.")
    subject = draw(st.sampled_from(VERSIONS) if is_model else names)
    known = kind if kind != "source.exploded" else "drift.detected"
    event = new_event(known, subject, "test", draw(params(kind)), at=T0)  # type: ignore[arg-type]
    event["type"] = kind
    if draw(st.integers(0, 9)) == 0:  # a wrong type in the envelope
        field = draw(st.sampled_from(["subject", "caused_by", "evidence", "event_id"]))
        event[field] = draw(wrong)  # type: ignore[literal-required]
    return event


@st.composite
def valid_events(draw: st.DrawFn) -> ControlEventRecord:
    """A well-formed event of a type that is not a model's (the lifecycles below are valid)."""
    kind = draw(st.sampled_from([t.value for t in EventType if not t.is_model_event]))
    subject, unit = draw(st.sampled_from(SOURCES)), st.floats(0.0, 1.0)
    p: dict[str, Any] = {"reason": "r"}
    if kind.startswith("threshold"):
        p["thresholds"] = draw(
            st.dictionaries(st.sampled_from(["knn", "energy"]), unit, min_size=1)
        )
        p["model_version"] = draw(st.sampled_from([None, "v1", "v2"]))
    elif kind == "calibration.updated":
        p.update(model_version=draw(st.sampled_from(VERSIONS)), artifact_id="a" * 64)
        p.update(target_fpr=draw(st.floats(0.001, 1.0)), vote_k=draw(st.integers(1, 2)))
        p["thresholds"] = {"knn": draw(unit), "energy": draw(unit)}
    elif kind == "source.weights_set":
        subject = draw(st.sampled_from([*SOURCES, "pipeline"]))
        named = [subject] if subject != "pipeline" else SOURCES
        p["weights"] = {name: draw(st.floats(0.1, 10.0)) for name in named}
    elif kind.endswith("paused"):
        p["until"] = draw(st.sampled_from([None, T0 + timedelta(hours=1)]))
    elif kind == "retrain.requested":
        p["extra"] = {"manifest": "b" * 64}
    subject = "pipeline" if kind.startswith("pipeline") else subject
    return new_event(kind, subject, "test", p, at=T0)  # type: ignore[arg-type]


def lifecycle(version: str, kind: str) -> list[ControlEventRecord]:
    """A valid registration, gate, canary and promotion of ``version``."""
    p = {"model_version": version, "extra": {"kind": kind}}
    steps = ["model.registered", "model.gate_passed", "model.canary_started", "model.promoted"]
    return [new_event(t, version, "test", p, at=T0) for t in steps]  # type: ignore[arg-type]


streams = st.lists(st.one_of(valid_events(), events()), max_size=30).flatmap(
    lambda hostile: st.permutations(
        hostile + lifecycle("v1", "scorer") + lifecycle("yolo@1", "detector")
    )
)


def invariant_problems(state: ControlState, folded: int) -> list[str]:
    """What is wrong with ``state``, folded from ``folded`` events; empty when nothing is."""
    found = []

    def unit(what: str, value: object) -> None:
        low, high = THRESHOLD_RANGE
        if not isinstance(value, float | int) or not low <= value <= high:
            found.append(f"{what} {value!r} is not in {THRESHOLD_RANGE}")

    for key, thresholds in state.source_thresholds.items():
        for detector, value in thresholds.items():
            unit(f"threshold {key}/{detector}", value)
    for key, cal in state.calibrations.items():
        for detector, value in cal.thresholds.items():
            unit(f"calibration {key}/{detector}", value)
        # Older logs' calibrations state no model or target rate (target_fpr 0); a calibration
        # always calibrates some detector with a usable vote.
        if not 0.0 <= cal.target_fpr <= 1.0 or cal.vote_k < 1 or not cal.thresholds:
            found.append(f"calibration {key} is malformed: {cal}")
    for source, weight in state.source_weights.items():
        if not isinstance(weight, float | int) or not 0.0 <= weight <= MAX_WEIGHT:
            found.append(f"weight {source} {weight!r}")
    for kind in ("scorer", "detector"):
        rollout = state.rollout(kind)
        for role in ("production", "shadow", "canary", "replaced"):
            slot = getattr(rollout, role)
            if slot is None:
                continue
            if slot.version not in state.registered or slot.kind != kind:
                found.append(f"{kind} {role} {slot.version} is not a registered {kind}")
        canary = rollout.canary
        if canary is not None:
            if not 0.0 < canary.fraction <= 1.0:
                found.append(f"canary fraction {canary.fraction}")
            if state.gates.get(canary.version) is not True or canary.version in state.rolled_back:
                found.append(f"canary {canary.version} is not gated or was rolled back")
    for version, slot in state.registered.items():
        if slot.version != version or not isinstance(version, str) or "|" in version:
            found.append(f"registered {version!r} -> {slot}")
    for pause in [*state.paused_sources.values(), state.pipeline_paused]:
        if pause is not None and pause.until is not None and pause.until.tzinfo is None:
            found.append(f"pause until {pause.until} has no zone")
    if state.events_applied + state.events_refused != folded:
        found.append("an event was neither applied nor refused")
    if len(state.refusals) > REFUSALS_KEPT:
        found.append("too many refusals kept")
    found += [f"guard gap: {r.reason}" for r in state.refusals if r.reason.startswith("the fold")]
    return found


@FAST
@given(streams)
def test_any_stream_folds_deterministically_and_keeps_the_invariants(
    stream: list[ControlEventRecord],
) -> None:
    state = replay(enumerate(stream))
    assert replay(enumerate(stream)) == state
    assert replay(enumerate(stream)).fingerprint() == state.fingerprint()
    assert invariant_problems(state, len(stream)) == []
    assert state.offset == len(stream) - 1


@settings(max_examples=100, deadline=None)
@given(streams)
def test_every_prefix_keeps_the_invariants(stream: list[ControlEventRecord]) -> None:
    state = ControlState.initial()
    for offset, event in enumerate(stream):
        state = state.apply(event, offset)
        assert invariant_problems(state, offset + 1) == []


def canonical(event: ControlEventRecord) -> str:
    """``event`` as the wire would carry it, typed: absent params at their Avro defaults."""
    empty = {k: ({} if k in ("thresholds", "weights", "extra") else None) for k in DEFAULTS}
    return json.dumps(
        {**event, "params": {**empty, **event["params"]}}, sort_keys=True, default=repr
    )


DEFAULTS = ("detector", "value", "model_version", "backbone", "artifact_id", "target_fpr")
DEFAULTS += ("vote_k", "thresholds", "weights", "fraction", "until", "reason", "extra")


@settings(max_examples=80, deadline=None)
@given(streams)
def test_replay_through_avro_refuses_the_same_events(stream: list[ControlEventRecord]) -> None:
    """Events the wire carries unchanged get the same verdicts from the fold of the decoded log
    (a processor's follower) as from the in-memory fold; what Avro coerces (an int, a bool, a
    string for a list) or cannot carry is left out."""
    codec = default_codec()
    carried = []
    for event in stream:
        try:
            decoded = codec.decode(
                codec.encode(event, "skyloop.ControlEvent"), "skyloop.ControlEvent"
            )
        except Exception:  # not representable in Avro: no producer could have written it
            continue
        if canonical(decoded) == canonical(event):  # type: ignore[arg-type]
            carried.append((event, decoded))
    in_memory = replay(enumerate(e for e, _ in carried))
    wire = replay(enumerate(d for _, d in carried))  # type: ignore[misc]
    assert [r.reason for r in wire.refusals] == [r.reason for r in in_memory.refusals]
    assert (wire.events_refused, wire.fingerprint()) == (
        in_memory.events_refused,
        in_memory.fingerprint(),
    )
    assert invariant_problems(wire, len(carried)) == []


def test_the_invariant_checker_catches_what_the_guard_prevents() -> None:
    """Injected fault: hostile events folded past the guard break the invariants."""
    nan = new_event("threshold.set", "sky", "x", {"thresholds": {"knn": math.nan}})
    huge = new_event("source.weights_set", "pipeline", "x", {"weights": {"sky": 1e300}})
    ghost = new_event("model.promoted", "ghost@9", "x", {"model_version": "ghost@9"})
    gate = new_event("model.gate_passed", "ghost@9", "x", {"model_version": "ghost@9"})
    state = ControlState.initial()
    for event in (nan, huge, gate, ghost):
        state = FOLD[EventType(event["type"])](state, event)  # the handler alone, no guard
    found = invariant_problems(state, 0)
    assert any("threshold *|sky/knn nan" in f for f in found)
    assert any("weight sky 1e+300" in f for f in found)
    assert any("ghost@9 is not a registered scorer" in f for f in found)
    guarded = replay(enumerate([nan, huge, gate, ghost]))
    assert invariant_problems(guarded, 4) == [] and guarded.events_refused == 4
