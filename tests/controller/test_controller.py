"""The controller on whole streams: real scoring decisions (decide + OODEnsemble) in the loop.

Streams are synthetic feature vectors (64-d, gamma-distributed like post-ReLU features) so the
tests run in seconds; the drift and the anomalies are known, and nothing is tuned to them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from processors.controller.controller import ISSUER, Controller, ControllerConfig
from processors.controller.state import MemoryRing, SourceState
from processors.controller.tables import DictTable, TableRing
from processors.core.artifacts import ArtifactStore
from processors.core.control import ControlState, new_event, replay
from processors.core.records import ControlEventRecord, DeadLetter, ScoreRecord
from processors.ood.reference import load_reference
from processors.policies.health import HealthPolicy
from processors.policies.profile import load_profile
from processors.policies.sources import ErrorBackoff
from tools.bench.policy_sim import StreamFeatures
from tools.bench.policy_sim import replay as simulate

D = 64


def stream(n: int, seed: int, shift_at: int | None = None, shift: float = 1.5) -> StreamFeatures:
    rng = np.random.default_rng(seed)
    features = rng.gamma(2.0, 1.0, size=(n, D)).astype(np.float32)
    segments = ["baseline"] * n
    if shift_at is not None:
        features[shift_at:, : D // 4] += shift
        segments[shift_at:] = ["shifted"] * (n - shift_at)
    return StreamFeatures(features, rng.normal(-8.0, 0.5, n), np.zeros(n, bool), segments)


def events_of(result: object) -> list[tuple[object, ...]]:
    return [
        (e["event_id"], e["type"], e["subject"], e["at"], tuple(e["caused_by"]), e["evidence"])
        for e in result.events  # type: ignore[attr-defined]
    ]


def test_the_same_scores_give_the_same_events_ids_included() -> None:
    s = stream(1500, seed=1, shift_at=800)
    first = simulate(s, ControllerConfig())
    second = simulate(s, ControllerConfig())
    assert events_of(first) == events_of(second)
    assert any(e["type"] == "drift.detected" for e in first.events)
    # and the decisions the scorer made under them are the same too
    assert (first.flagged == second.flagged).all()


def test_a_controller_restarted_from_its_persisted_state_continues_identically(
    tmp_path: Path,
) -> None:
    s = stream(1400, seed=2, shift_at=700)
    store = ArtifactStore(tmp_path / "artifacts")
    whole = simulate(s, ControllerConfig(), keep_records=True, store=store)
    records = whole.records
    config = ControllerConfig()
    state = ControlState.initial()

    def run(
        controller: Controller, head: SourceState, part: list[ScoreRecord]
    ) -> list[ControlEventRecord]:
        out = []
        for record in part:
            out += [emit.event for emit in controller.on_score(head, record, state)]
        return out

    table = DictTable()  # what the Faust table holds
    ring = TableRing(table)
    first = Controller(
        config, ring, lambda i: load_profile(store, i), lambda i: load_reference(store, i)
    )
    head = SourceState(records[0]["source"])
    cut = 900
    emitted = run(first, head, records[:cut])
    ring.flush(head.source, partition=0)  # what the service does at the end of a batch
    # a new process: the head from its bytes, the ring from the table, no cache
    restarted = Controller(
        config,
        TableRing(DictTable(dict(table.data))),
        lambda i: load_profile(store, i),
        lambda i: load_reference(store, i),
    )
    emitted += run(restarted, SourceState.from_bytes(head.to_bytes()), records[cut:])
    assert [e["event_id"] for e in emitted] == [e["event_id"] for e in whole.events]


def test_drift_recalibrates_from_post_drift_images_and_says_why() -> None:
    onset = 1000
    s = stream(1800, seed=3, shift_at=onset)
    result = simulate(s, ControllerConfig())
    drifts = [
        (e, at)
        for e, at in zip(result.events, result.event_at, strict=True)
        if e["type"] == "drift.detected"
    ]
    assert len(drifts) == 1
    drift, at = drifts[0]
    assert onset + 64 < at <= onset + 320  # at least two disjoint windows of 64 disagree
    bound = ControllerConfig().drift_tests  # a window test fired at the bound in force
    assert drift["evidence"]["ks_p"] < bound.ks_p or drift["evidence"]["feature_ks_p"] < (
        bound.feature_p
    )
    assert drift["params"]["reason"]
    recalibration = next(
        e
        for e in result.events
        if e["type"] == "calibration.updated" and drift["event_id"] in e["caused_by"]
    )
    assert recalibration["params"]["reason"] == "drift"
    reference_from = int(recalibration["params"]["extra"]["reference_from_seq"])
    assert onset - 8 <= reference_from <= onset + 16  # the change point, not the windows' start
    # after the recalibration the flag rate is back near its target
    served = np.flatnonzero(result.calibrated)
    late = served[served > at + 200]
    assert 0.01 <= result.flagged[late].mean() <= 0.12


def test_a_refinement_keeps_the_drift_tests_going_until_it_reaches_the_scorer(
    tmp_path: Path,
) -> None:
    """Scores served under the calibration a refinement replaced, still in flight (three
    batches of control lag), are judged against that calibration's profile; the first score
    made under the refinement starts the tests over on its own profile."""
    store = ArtifactStore(tmp_path / "artifacts")
    config = ControllerConfig()
    records = simulate(stream(700, seed=5), config, lag=3, keep_records=True, store=store).records
    controller = Controller(
        config, MemoryRing(), lambda i: load_profile(store, i), lambda i: load_reference(store, i)
    )
    head, state = SourceState(records[0]["source"]), ControlState.initial()
    refinement = replaced = None
    judged_in_flight = served = 0
    for record in records:
        emits = controller.on_score(head, record, state)
        lane = head.lane(record["model_version"])
        if refinement is None:
            for e in (emit.event for emit in emits):
                if e["type"] == "calibration.updated" and e["params"]["reason"] == "refine":
                    refinement, replaced = e["event_id"], e["caused_by"][0]
                    assert lane.judging["calibration"] == replaced
                    served = lane.served
            continue
        if record["calibration_id"] == replaced:
            judged_in_flight += 1
            assert lane.served == served + judged_in_flight  # judged, not skipped
        else:  # the refinement (or a later one) reached the scorer
            assert lane.judging == {}  # started over on the calibration in force
            assert lane.served == int(record["calibration_id"] == lane.calibration_id)
            break
    assert refinement is not None
    assert judged_in_flight >= 64  # the refinement took three or four batches to arrive


def test_a_stationary_stream_raises_no_drift(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    result = simulate(stream(5000, seed=4), ControllerConfig(), store=store)
    kinds = [e["type"] for e in result.events]
    assert "drift.detected" not in kinds
    calibrations = [e for e in result.events if e["type"] == "calibration.updated"]
    # 128 → 192 → 288 → 432 → 648 → 972 images, then no more (reference_max_size 1024)
    assert [e["params"]["reason"] for e in calibrations] == ["initial"] + ["refine"] * 5
    # the ring keeps features in float16, so each reference is stored in half the bytes
    artifact = calibrations[-1]["params"]["artifact_id"]
    data, reference = store.get_bytes(artifact), load_reference(store, artifact)
    n, head = len(reference), 8 + 20 + len(reference.backbone)
    assert data.startswith(b"SKYREF\x00\x02") and len(data) == head + n * reference.dim * 2 + n * 8


def test_static_and_astrolens_policies_never_recalibrate() -> None:
    s = stream(1200, seed=5, shift_at=600)
    for policy in ("static", "astrolens"):
        result = simulate(s, ControllerConfig(policy=policy))
        calibrations = [e for e in result.events if e["type"] == "calibration.updated"]
        assert len(calibrations) == 1 and "drift.detected" not in [e["type"] for e in result.events]
    astrolens = simulate(s, ControllerConfig(policy="astrolens"))
    assert any(e["type"] == "threshold.set" for e in astrolens.events)


def _letter(source: str, at: datetime) -> DeadLetter:
    return DeadLetter(
        original_topic="images.raw",
        partition=0,
        offset=0,
        key=None,
        raw=b"",
        at=at,
        error_class="BadImageError",
        message="bad",
        processor="score",
        source=source,
    )


def test_error_backoff_pauses_a_source_and_lifts_only_its_own_pause() -> None:
    config = ControllerConfig(backoff=ErrorBackoff(base_s=30.0), backoff_window=20)
    controller = Controller(config, MemoryRing(), lambda i: pytest.fail("no profile needed"))
    head, state = SourceState("sky"), ControlState.initial()
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    emits = []
    for i in range(20):
        emits += controller.on_dead_letter(head, _letter("sky", t0 + timedelta(seconds=i)), state)
    pauses = [e.event for e in emits if e.event["type"] == "source.paused"]
    assert len(pauses) == 1 and pauses[0]["evidence"]["error_rate"] == 1.0
    assert pauses[0]["params"]["until"] == t0 + timedelta(seconds=19 + 30)
    state = replay(enumerate([pauses[0]]))
    assert controller.on_tick(t0 + timedelta(seconds=30), state) == []  # still backing off
    resumed = controller.on_tick(t0 + timedelta(seconds=50), state)
    assert [e.event["type"] for e in resumed] == ["source.resumed"]
    assert resumed[0].event["caused_by"] == [pauses[0]["event_id"]]
    # an operator's pause is never lifted by the controller
    operator = new_event("source.paused", "sky", "operator:ann", {"reason": "maintenance"})
    assert controller.on_tick(t0 + timedelta(days=1), replay(enumerate([operator]))) == []
    assert head.pauses == 1  # the next pause would back off twice as long


def test_health_pauses_the_pipeline_on_sustained_latency_and_resumes_on_probation() -> None:
    config = ControllerConfig(health=HealthPolicy(window=10, consecutive=2, max_latency_p99_ms=50))
    records = simulate(stream(300, seed=6), ControllerConfig(), keep_records=True).records
    controller = Controller(config, MemoryRing(), lambda i: pytest.fail("no profile needed"))
    head, state = SourceState("sim"), ControlState.initial()
    emits = []
    for record in records[:20]:
        emits += controller.on_score(head, {**record, "latency_ms": 400.0}, state)
    paused = [e.event for e in emits if e.event["type"] == "pipeline.paused"]
    assert len(paused) == 1 and paused[0]["evidence"]["latency_p99_ms"] == 400.0
    assert paused[0]["issued_by"] == ISSUER
    state = replay(enumerate([paused[0]]))
    until = paused[0]["params"]["until"]
    assert [e.event["type"] for e in controller.on_tick(until, state)] == ["pipeline.resumed"]


def test_an_operator_request_recalibrates_the_source_from_its_latest_images() -> None:
    s = stream(700, seed=7)
    whole = simulate(s, ControllerConfig(), keep_records=True)
    request = new_event("calibration.requested", "sim", "operator:ann", {"reason": "new optics"})
    controller = Controller(ControllerConfig(), MemoryRing(), lambda i: pytest.fail("unused"))
    head, state = SourceState("sim"), ControlState.initial()
    emitted: list[ControlEventRecord] = []
    for i, record in enumerate(whole.records):
        if i == 500:
            state = state.apply(request, 0)
        for emit in controller.on_score(head, record, state):
            emitted.append(emit.event)
            state = state.apply(emit.event, state.offset + 1)
    answer = [e for e in emitted if request["event_id"] in e["caused_by"]]
    assert len(answer) == 1 and answer[0]["params"]["reason"] == "operator"
    assert state.calibration_requests == {}  # the fold saw the request answered


def test_a_drift_revises_the_decisions_served_since_its_change_point() -> None:
    """A flood after the onset: the live decisions flag far above the target until the
    recalibration is in force; the revision decides those images again under it (the
    recalibration's own reference images cross-fitted), withdraws most of the flood, and the
    stored decisions after the onset are back under the band's top."""
    onset, target = 1000, ControllerConfig().target_fpr
    s = stream(1800, seed=3, shift_at=onset, shift=4.0)
    result = simulate(s, ControllerConfig())
    revised_events = [e for e in result.events if e["type"] == "decisions.revised"]
    assert len(revised_events) == 2  # the second: the epoch's first refinement (test below)
    event = revised_events[0]
    drift = next(e for e in result.events if e["type"] == "drift.detected")
    recalibration = next(
        e
        for e in result.events
        if e["type"] == "calibration.updated" and drift["event_id"] in e["caused_by"]
    )
    assert event["caused_by"] == [recalibration["event_id"], drift["event_id"]]
    assert event["params"]["extra"]["calibration"] == recalibration["event_id"]
    records = [r for r in result.revisions if r["revision"] == 1]
    assert len(records) == event["evidence"]["images"] > 0
    assert {r["calibration_id"] for r in records} == {recalibration["event_id"]}
    assert all(r["revision_event_id"] == event["event_id"] for r in records)
    seqs = sorted(int(r["image_id"].removeprefix("img")) for r in records)
    # from about the change point to the last image served under the old calibration
    assert onset - 64 <= seqs[0] <= onset + 64
    first_new = int(np.flatnonzero(result.calibrated & (np.arange(len(s.energy)) > seqs[-1]))[0])
    assert seqs[-1] < first_new
    window = slice(seqs[0], seqs[-1] + 1)
    live = float(result.flagged[window].mean())
    stored = float(result.revised[window].mean())  # type: ignore[index]  # the last revision
    assert live > 2.5 * target  # the flood, as served
    assert stored <= 2.5 * target  # the catalogue, corrected
    assert event["evidence"]["withdrawn"] >= 0.8 * event["evidence"]["flags_before"]
    assert event["evidence"]["flag_rate_before"] == pytest.approx(live)
    # the revision is a decision like any other: the same scores give the same one
    again = simulate(s, ControllerConfig())
    assert [r["image_id"] for r in again.revisions] == [r["image_id"] for r in result.revisions]
    assert [r["is_candidate"] for r in again.revisions] == [
        r["is_candidate"] for r in result.revisions
    ]


def test_the_drift_epoch_s_first_refinement_decides_the_same_images_again() -> None:
    """The drift's recalibration has 64 images; its epoch's first refinement, 96 or more from
    the change point on: every image from the change point to the refinement's last reference
    image served under an earlier calibration is decided again under it (revision 2, replacing
    revision 1 in the warehouse). Later refinements, and refinements of an epoch that began
    without a drift, revise nothing."""
    onset = 1000
    result = simulate(stream(2600, seed=3, shift_at=onset, shift=4.0), ControllerConfig())
    events = result.events
    first, second = [e for e in events if e["type"] == "decisions.revised"]
    drift_at = next(i for i, e in enumerate(events) if e["type"] == "drift.detected")
    refines = [
        e
        for e in events[drift_at:]
        if e["type"] == "calibration.updated" and e["params"]["reason"] == "refine"
    ]
    assert len(refines) >= 2  # more refinements followed; only the first revised
    before_drift = [
        e
        for e in events[:drift_at]
        if e["type"] == "calibration.updated" and e["params"]["reason"] == "refine"
    ]
    assert before_drift  # the first epoch refined too, and no revision came of it
    assert second["params"]["extra"]["calibration"] == refines[0]["event_id"]
    assert (first["params"]["reason"], second["params"]["reason"]) == ("drift", "refine")
    assert second["caused_by"][0] == refines[0]["event_id"]
    by_revision: dict[int, set[str]] = {1: set(), 2: set()}
    for record in result.revisions:
        by_revision[record["revision"]].add(record["image_id"])
        if record["revision"] == 2:
            assert record["calibration_id"] == refines[0]["event_id"]
            assert record["revision_event_id"] == second["event_id"]
    assert len(by_revision[2]) == second["evidence"]["images"]
    assert min(by_revision[2]) == min(by_revision[1])  # from the change point, as the first
    # to the refinement's last reference image: the newest the drift tests cleared
    last = int(refines[0]["params"]["extra"]["reference_to_seq"])
    assert max(int(i.removeprefix("img")) for i in by_revision[2]) == last
    stored = {r["image_id"]: r["is_candidate"] for r in result.revisions}  # the last revision
    assert all(
        bool(result.revised[int(image.removeprefix("img"))]) == candidate  # type: ignore[index]
        for image, candidate in stored.items()
    )
    assert first["event_id"] != second["event_id"]


def test_revision_can_be_turned_off() -> None:
    s = stream(1800, seed=3, shift_at=1000)
    result = simulate(s, ControllerConfig(revise=False))
    assert not result.revisions
    assert not [e for e in result.events if e["type"] == "decisions.revised"]


def test_a_revision_requested_after_the_stream_ended_is_made_without_a_later_score(
    tmp_path: Path,
) -> None:
    """A finite stream that ends right after a drift's recalibration: no score under it will
    come, so its revision would wait for ever. ``revision.requested`` (an operator, or a local
    run whose stages are done) makes it now, over the images served so far, with the same
    decisions the due revision gives them; a request older than the recalibration does not."""
    s = stream(1800, seed=3, shift_at=1000, shift=4.0)
    store = ArtifactStore(tmp_path / "artifacts")
    whole = simulate(s, ControllerConfig(), keep_records=True, store=store)
    due = {r["image_id"]: r for r in whole.revisions if r["revision"] == 1}
    controller = Controller(
        ControllerConfig(),
        MemoryRing(),
        lambda i: load_profile(store, i),
        lambda i: load_reference(store, i),
    )
    head, state = SourceState("sim"), ControlState.initial()
    stale = new_event("revision.requested", "sim", "operator:ann", {"reason": "too early"})
    state = state.apply(stale, 0)
    for record in whole.records:  # until the drift's recalibration: the stream ends there
        emits = controller.on_score(head, record, state)
        for emit in emits:
            state = state.apply(emit.event, state.offset + 1)
        if any(e.event["params"].get("reason") == "drift" for e in emits):
            break
    lane = head.lane(whole.records[0]["model_version"])
    assert lane.revision  # waiting for a score under the recalibration
    assert controller.on_revision_requests({"sim": head}, state) == []  # the stale request
    assert lane.revision
    ended = new_event("revision.requested", "sim", "local", {"reason": "the stream ended"})
    state = state.apply(ended, state.offset + 1)
    [(src, emits)] = controller.on_revision_requests({"sim": head}, state)
    assert src is head and not lane.revision and Controller.revisions_waiting({"sim": head}) == []
    [emit] = emits
    assert emit.event["type"] == "decisions.revised"
    assert emit.event["caused_by"][-1] == ended["event_id"]
    assert len(emit.records) == emit.event["evidence"]["images"] > 0
    # the images served so far: a prefix of the due revision's, decided alike
    for record in emit.records:
        assert record["is_candidate"] == due[record["image_id"]]["is_candidate"]
    assert len(emit.records) < len(due)  # the due one also had the scores still in flight
    assert controller.on_revision_requests({"sim": head}, state) == []  # made once
