"""The gate with power and the regression check, on real YOLO models and source extraction.

An untrained YOLOv8n (real weights from ``yolov8n.yaml``) finds nothing useful; source
extraction finds the blobs. So on the same held-out images source extraction is the better
localizer, by far, and each rule must say so with its interval; on too few images the gate
waits instead of judging.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from processors.core.artifacts import ArtifactStore
from processors.core.config import Settings
from processors.core.control import ControlState, new_event
from processors.core.datasets import DatasetManifest
from processors.train.judging import (
    SourceExtraction,
    held_out_at_gate,
    judge_challenger,
    regression,
)
from processors.train.trainer import answer_request
from processors.yolo.samples import TrainingSample
from processors.yolo.ultralytics_env import offline_ultralytics
from processors.yolo.yolo import YoloLocalizer
from tests.detect.blobs import blob_set

SIZE = 64


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tmp_path_factory.mktemp("ultralytics")
    offline_ultralytics(config)
    from ultralytics import YOLO

    path = config / "untrained.pt"
    YOLO("yolov8n.yaml").save(path)
    return path


def _samples(n: int, first: int = 0) -> list[TrainingSample]:
    return [
        TrainingSample(f"img-{first + k}", "sky", image, boxes)
        for k, (image, boxes) in enumerate(blob_set(first, n, SIZE))
    ]


def _yolo(path: Path, settings: Settings) -> YoloLocalizer:
    return YoloLocalizer(path, conf=0.01, config_dir=settings.data_dir / "ultralytics")


def test_the_gate_passes_only_a_challenger_better_beyond_the_noise(
    settings: Settings, untrained: Path
) -> None:
    held = _samples(40)
    worse = judge_challenger(settings, _yolo(untrained, settings), None, held)
    assert not worse.verdict.passed and not worse.verdict.waiting
    assert worse.comparison is not None and worse.comparison.high < 0
    evidence = worse.verdict.evidence
    assert evidence["incumbent_is_baseline"] == 1.0 and evidence["held_out_images"] == 40
    assert evidence["map50_diff_low"] <= evidence["map50_diff_high"] < 0
    assert evidence["incumbent_map50"] > 0.5  # source extraction on blobs
    assert "interval of the difference" in worse.verdict.reason

    better = judge_challenger(settings, SourceExtraction(), _yolo(untrained, settings), held)
    assert better.verdict.passed, better.verdict.reason
    assert better.verdict.evidence["map50_diff_low"] > 0
    assert better.verdict.evidence["incumbent_is_baseline"] == 0.0


def test_on_too_few_held_out_images_the_gate_waits(settings: Settings) -> None:
    """Five held-out images: even a clearly better localizer neither passes nor fails."""
    few = judge_challenger(settings, SourceExtraction(), None, _samples(5))
    assert few.verdict.waiting and not few.verdict.passed
    assert "the gate waits" in few.verdict.reason


def _request(store: ArtifactStore, samples: list[TrainingSample]) -> dict:  # type: ignore[type-arg]
    ids = [(s.image_id, store.put_bytes(s.to_bytes())) for s in samples]
    manifest = store.put_bytes(DatasetManifest.build(ids, 0.2).to_bytes())
    params = {"reason": "test", "extra": {"manifest": manifest}}
    return new_event("retrain.requested", "detector", "controller", params)  # type: ignore[arg-type,return-value]


def test_the_trainer_says_it_waits_for_held_out_images(settings: Settings, tmp_path: Path) -> None:
    store = ArtifactStore(settings.artifacts_dir)
    request = _request(store, _samples(60))
    (deferred,) = answer_request(request, ControlState(), store, settings, tmp_path / "w")  # type: ignore[arg-type]
    assert deferred["type"] == "budget.deferred"
    assert deferred["params"]["reason"].startswith("the gate waits for held-out images:")
    assert deferred["evidence"]["min_held_out"] == 30
    assert 0 < deferred["evidence"]["held_out_images"] < 30


def test_a_production_detector_worse_than_what_it_replaced_is_rolled_back(
    settings: Settings, untrained: Path, tmp_path: Path
) -> None:
    """Production is an untrained detector promoted over source extraction: on the next
    dataset's held-out images the trainer rolls it back (source extraction serves again) and
    trains from there (here the training is cut short by its time bound)."""
    assert regression(settings, _yolo(untrained, settings), None, _samples(5)) is None  # too few
    store = ArtifactStore(settings.artifacts_dir)
    weights = store.put_bytes(untrained.read_bytes())
    state = ControlState.initial()
    reg = {"model_version": "yolo@bad", "artifact_id": weights, "extra": {"kind": "detector"}}
    for i, kind in enumerate(("model.registered", "model.gate_passed", "model.promoted")):
        params = reg if kind == "model.registered" else {"model_version": "yolo@bad"}
        state = state.apply(new_event(kind, "yolo@bad", "test", params), i)  # type: ignore[arg-type]
    assert state.detector.production is not None
    request = _request(store, _samples(200))
    bounded = settings.model_copy(update={"train_timeout_s": 0.5})
    (tmp_path / "w").mkdir()
    events = answer_request(request, state, store, bounded, tmp_path / "w")  # type: ignore[arg-type]
    rollback, failed = events
    assert rollback["type"] == "model.rolled_back" and rollback["subject"] == "yolo@bad"
    assert "worse than source extraction" in rollback["params"]["reason"]
    evidence = rollback["evidence"]
    assert evidence["map50_diff_low"] > 0 and evidence["previous_is_baseline"] == 1.0
    assert evidence["previous_map50"] > evidence["production_map50"]
    assert evidence["held_out_images"] >= 30
    assert failed["type"] == "model.gate_failed" and "training failed" in failed["params"]["reason"]
    after = state.apply(rollback, 3)
    assert after.detector.production is None and after.rolled_back["yolo@bad"]
    assert np.isfinite(evidence["production_map50"])


def test_the_gate_also_judges_on_held_out_images_that_arrived_while_it_trained(
    settings: Settings,
) -> None:
    """The newest newer manifest's held-out samples join the request's, each once; none of
    them is a training sample of either dataset (the split is by hash of the image id)."""
    store = ArtifactStore(settings.artifacts_dir)
    ids = [(s.image_id, store.put_bytes(s.to_bytes())) for s in _samples(120)]
    requested = DatasetManifest.build(ids[:60], 0.2)
    grown = DatasetManifest.build(ids, 0.2)
    newest = store.put_bytes(grown.to_bytes())

    alone = held_out_at_gate(store, requested, ())
    assert len(alone) == len(requested.held_out) > 0
    judged = held_out_at_gate(store, requested, ["an older manifest, not read", newest])
    assert len(judged) == len(grown.held_out) > len(alone)
    assert {s.image_id for s in alone} < {s.image_id for s in judged}
    trained = {image_id for image_id, sample in ids if sample in grown.train}
    assert trained and not trained & {s.image_id for s in judged}
