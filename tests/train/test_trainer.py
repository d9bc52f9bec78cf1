"""The trainer worker on the embedded broker: it answers the newest request, and the older ones
with it; an answered request is never answered again after a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from processors.core.artifacts import ArtifactStore
from processors.core.config import Settings
from processors.core.control import ControlState, new_event
from processors.core.datasets import DatasetManifest
from processors.core.kafka import ControlFollower, ensure_topics, make_producer
from processors.core.kafka import produce_control_event as produce
from processors.core.progress import ProgressFile, read_progress
from processors.core.records import Box, ControlEventRecord
from processors.train.trainer import Trainer, answer_request
from processors.yolo.samples import TrainingSample


def _request(store: ArtifactStore, n: int) -> ControlEventRecord:
    """A request whose dataset (``n`` samples) is too small to train: the trainer answers it
    at once, with ``budget.deferred``, without training."""
    plane = np.zeros((16, 16), np.float32)
    box = Box(label="source", confidence=0.9, x1=2.0, y1=2.0, x2=6.0, y2=6.0)
    samples = [
        (f"img-{i}", store.put_bytes(TrainingSample(f"img-{i}", "sky", plane, [box]).to_bytes()))
        for i in range(n)
    ]
    manifest = DatasetManifest.build(samples, 0.2)
    manifest_id = store.put_bytes(manifest.to_bytes())
    params = {"reason": f"{n} samples", "extra": {"manifest": manifest_id}}
    return new_event("retrain.requested", "detector", "controller", params)  # type: ignore[arg-type]


def _run_trainer(settings: Settings, bootstrap: str, progress: Path) -> threading.Event:
    stop = threading.Event()
    trainer = Trainer(settings, bootstrap, ProgressFile(progress, "train"))
    threading.Thread(target=trainer.run, args=(stop,), daemon=True).start()
    return stop


def _answers(settings: Settings, bootstrap: str) -> list[ControlEventRecord]:
    seen: list[ControlEventRecord] = []
    follower = ControlFollower(settings, bootstrap, on_event=lambda _s, e: seen.append(e))
    follower.start()
    try:
        assert follower.wait_caught_up(timeout_s=30)
        return [e for e in seen if e["issued_by"] == "trainer"]
    finally:
        follower.close()


def test_the_newest_request_is_answered_with_the_older_ones(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    store = ArtifactStore(settings.artifacts_dir)
    producer = make_producer(settings, kafka_bootstrap)
    requests = [_request(store, n) for n in (3, 4, 5)]
    for request in requests:
        produce(producer, settings, request)
    progress = tmp_path / "progress"
    stop = _run_trainer(settings, kafka_bootstrap, progress)
    try:
        deadline = time.monotonic() + 60
        while not read_progress(progress, "train").get("trainings"):
            assert time.monotonic() < deadline, "no answer"
            time.sleep(0.2)
        time.sleep(1.0)  # a second answer, if there were one, would come now
    finally:
        stop.set()
    (answer,) = _answers(settings, kafka_bootstrap)
    assert answer["type"] == "budget.deferred"
    assert "dataset too small" in answer["params"]["reason"]
    assert answer["caused_by"][0] == requests[-1]["event_id"]  # the newest, then the others
    assert set(answer["caused_by"]) == {r["event_id"] for r in requests}
    assert read_progress(progress, "train")["trainings"] == 1

    # a restarted trainer finds every request answered and answers nothing
    stop = _run_trainer(settings, kafka_bootstrap, tmp_path / "progress-2")
    try:
        deadline = time.monotonic() + 30
        while not read_progress(tmp_path / "progress-2", "train").get("ready"):
            assert time.monotonic() < deadline, "trainer not ready"
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        stop.set()
    assert len(_answers(settings, kafka_bootstrap)) == 1
    assert not read_progress(tmp_path / "progress-2", "train").get("trainings")


def _lifecycle(version: str, *kinds: str) -> list[ControlEventRecord]:
    registered = {"model_version": version, "artifact_id": "0" * 64, "extra": {"kind": "detector"}}
    events = [new_event("model.registered", version, "operator", registered)]  # type: ignore[arg-type]
    for kind in kinds:
        params = {"model_version": version, "fraction": 0.5}
        events.append(new_event(kind, version, "controller", params))  # type: ignore[arg-type]
    return events


def test_requests_wait_while_a_detector_is_rolled_out(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A detector past its gate may become production, the parent the next one fine-tunes
    from: the trainer answers nothing from the gate (before the controller starts its shadow)
    through the canary until the rollout ends (here: by promotion)."""
    ensure_topics(settings, kafka_bootstrap)
    store = ArtifactStore(settings.artifacts_dir)
    producer = make_producer(settings, kafka_bootstrap)
    for event in _lifecycle("yolo@a", "model.gate_passed"):
        produce(producer, settings, event)
    request = _request(store, 3)
    produce(producer, settings, request)
    producer.flush(10)
    progress = tmp_path / "progress"
    stop = _run_trainer(settings, kafka_bootstrap, progress)
    try:
        deadline = time.monotonic() + 30
        while read_progress(progress, "train").get("waiting_for_rollout") != "yolo@a":
            assert time.monotonic() < deadline, "the trainer never saw the gated detector"
            time.sleep(0.2)
        time.sleep(2.0)  # an answer, if one came before the shadow starts, would come now
        assert _answers(settings, kafka_bootstrap) == []
        canary = _lifecycle("yolo@a", "model.shadow_started", "model.canary_started")[1:]
        for event in canary:
            produce(producer, settings, event)
        producer.flush(10)
        time.sleep(2.0)
        assert _answers(settings, kafka_bootstrap) == []

        promoted = {"model_version": "yolo@a", "reason": "healthy in canary"}
        produce(producer, settings, new_event("model.promoted", "yolo@a", "controller", promoted))  # type: ignore[arg-type]
        producer.flush(10)
        deadline = time.monotonic() + 60
        while not read_progress(progress, "train").get("trainings"):
            assert time.monotonic() < deadline, "no answer after the promotion"
            time.sleep(0.2)
    finally:
        stop.set()
    (answer,) = _answers(settings, kafka_bootstrap)
    assert answer["caused_by"] == [request["event_id"]]
    assert read_progress(progress, "train")["waiting_for_rollout"] == ""


def test_a_training_that_fails_is_answered_with_the_reason(
    settings: Settings, tmp_path: Path
) -> None:
    """A training past its timeout: the request (and the older ones it answers) gets
    ``model.gate_failed`` saying why, naming the dataset; nothing is registered."""
    store = ArtifactStore(settings.artifacts_dir)
    request = _request(store, 40)
    bounded = settings.model_copy(update={"train_timeout_s": 0.5, "gate_min_held_out": 2})
    events = answer_request(
        request, ControlState(), store, bounded, tmp_path / "work", superseded=["older"]
    )
    (failed,) = events
    assert failed["type"] == "model.gate_failed"
    assert failed["subject"] == request["event_id"]
    assert failed["params"]["reason"].startswith("training failed: training ran past 0.5 s")
    assert failed["params"]["extra"] == {"manifest": request["params"]["extra"]["manifest"]}
    assert failed["caused_by"] == [request["event_id"], "older"]


def test_the_gate_is_offered_the_manifests_of_requests_that_arrived_later(
    settings: Settings, tmp_path: Path
) -> None:
    """While a request trains, newer requests queue; their manifests (newest last) are what
    the gate joins to the request's held-out samples."""
    store = ArtifactStore(settings.artifacts_dir)
    trainer = Trainer(settings, "unused:9092", ProgressFile(tmp_path / "progress", "train"))
    requests = [_request(store, n) for n in (10, 11, 12)]
    for request in requests:
        trainer._on_event(ControlState(), request)
    manifests = [r["params"]["extra"]["manifest"] for r in requests]
    assert trainer._manifests_after(requests[0]["event_id"]) == manifests[1:]
    assert trainer._manifests_after(requests[-1]["event_id"]) == []
    assert trainer._manifests_after("answered meanwhile") == []
