"""Training in a bounded subprocess: failures are typed, and a real run learns.

``test_yolo_learns_blobs_from_scratch`` trains YOLOv8n from ``yolov8n.yaml`` on CPU: about a
minute of one core (marked ``training``; deselect with ``-m "not training"``).
"""

from __future__ import annotations

import doctest
import threading
import time
from pathlib import Path

import pytest

from processors.core.exceptions import (
    TrainingCancelledError,
    TrainingError,
    TrainingTimeoutError,
)
from processors.train import training
from processors.train.training import MAX_EPOCHS, epochs_for, train_detector
from processors.yolo.dataset import DetectionSample, write_yolo_dataset
from processors.yolo.evaluation import box_quality, map50
from processors.yolo.extraction import extract_boxes
from processors.yolo.yolo import YoloLocalizer
from tests.detect.blobs import blob_set

SIZE = 64


def dataset(root: Path, n_train: int = 40, n_val: int = 8) -> Path:
    train = [
        DetectionSample(f"t{k}", im, b) for k, (im, b) in enumerate(blob_set(0, n_train, SIZE))
    ]
    val = [DetectionSample(f"v{k}", im, b) for k, (im, b) in enumerate(blob_set(500, n_val, SIZE))]
    return write_yolo_dataset(root, train, val).root


def test_timeout_kills_the_worker_and_keeps_the_log(tmp_path: Path) -> None:
    with pytest.raises(TrainingTimeoutError, match=r"ran past 0\.5 s") as caught:
        train_detector(
            dataset(tmp_path / "ds", 4, 1),
            tmp_path / "out",
            epochs=1,
            imgsz=SIZE,
            timeout_s=0.5,
            config_dir=tmp_path / "cfg",
        )
    assert "log tail" in str(caught.value)
    assert (tmp_path / "out" / "train.log").is_file()
    assert not (tmp_path / "out" / "weights.pt").exists()


def test_cancel_kills_the_worker_within_a_second(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TrainingCancelledError, match="worker is stopping"):
        train_detector(
            dataset(tmp_path / "ds", 4, 1),
            tmp_path / "out",
            epochs=50,
            imgsz=SIZE,
            timeout_s=600,
            config_dir=tmp_path / "cfg",
            cancel=cancel,
        )
    assert time.monotonic() - started < 5  # set after 1 s, the group killed within 0.5 s more
    assert not (tmp_path / "out" / "weights.pt").exists()


def test_memory_limit_fails_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="memory limit of 256 MB"):
        train_detector(
            dataset(tmp_path / "ds", 4, 1),
            tmp_path / "out",
            epochs=1,
            imgsz=SIZE,
            timeout_s=120,
            memory_mb=256,
            config_dir=tmp_path / "cfg",
        )


def test_bad_inputs_are_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"no data\.yaml"):
        train_detector(tmp_path, tmp_path / "out", epochs=1, imgsz=SIZE, timeout_s=10)
    root = dataset(tmp_path / "ds", 2, 1)
    with pytest.raises(TrainingError, match="parent weights"):
        train_detector(
            root,
            tmp_path / "out",
            epochs=1,
            imgsz=SIZE,
            timeout_s=10,
            parent_weights=tmp_path / "missing.pt",
        )
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    with pytest.raises(TrainingError, match="already has files"):
        train_detector(root, tmp_path / "used", epochs=1, imgsz=SIZE, timeout_s=10)


def test_a_broken_dataset_fails_with_the_log_tail(tmp_path: Path) -> None:
    root = dataset(tmp_path / "ds", 2, 1)
    (root / "data.yaml").write_text("train: images/nowhere\nval: images/nowhere\nnames: {0: a}\n")
    with pytest.raises(TrainingError, match="exited with status") as caught:
        train_detector(
            root, tmp_path / "out", epochs=1, imgsz=SIZE, timeout_s=120, config_dir=tmp_path / "cfg"
        )
    assert "nowhere" in str(caught.value)


@pytest.mark.training
def test_yolo_learns_blobs_from_scratch(tmp_path: Path) -> None:
    root = dataset(tmp_path / "ds")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = train_detector(
        root,
        tmp_path / "out",
        epochs=30,
        imgsz=SIZE,
        timeout_s=600,
        threads=1,
        config_dir=tmp_path / "cfg",
    )
    assert result.weights.is_file() and result.seconds > 0
    assert "30/30" in result.log
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # never written to

    held_out = blob_set(1000, 16, SIZE)
    truths = [boxes for _, boxes in held_out]
    localizer = YoloLocalizer(result.weights, config_dir=tmp_path / "cfg", conf=0.05)
    assert localizer.imgsz == SIZE
    predictions = localizer.predict([image for image, _ in held_out])
    score = map50(predictions, truths)
    quality = box_quality(predictions, truths)
    pseudo = box_quality([extract_boxes(image) for image, _ in held_out], truths)
    print(f"held-out mAP50 {score:.3f}; YOLO {quality}; source extraction {pseudo}")
    assert score > 0.5
    assert quality.recall > 0.5

    # a retrain cycle: fine-tune the trained model on new samples, from its weights
    more = [DetectionSample(f"n{k}", im, b) for k, (im, b) in enumerate(blob_set(2000, 16, SIZE))]
    check = [DetectionSample(f"c{k}", im, b) for k, (im, b) in enumerate(blob_set(3000, 4, SIZE))]
    new_root = write_yolo_dataset(tmp_path / "ds2", more, check).root
    child = train_detector(
        new_root,
        tmp_path / "child",
        epochs=2,
        imgsz=SIZE,
        timeout_s=300,
        parent_weights=result.weights,
        config_dir=tmp_path / "cfg",
    )
    child_localizer = YoloLocalizer(child.weights, config_dir=tmp_path / "cfg", conf=0.05)
    child_score = map50(child_localizer.predict([image for image, _ in held_out]), truths)
    print(f"fine-tuned from the parent: held-out mAP50 {child_score:.3f}")
    assert child_score > 0.5  # it starts from the parent: two epochs from scratch learn nothing


def test_epochs_give_the_minimum_steps_on_small_datasets_and_no_more_than_the_maximum() -> None:
    assert doctest.testmod(training).failed == 0
    assert epochs_for(200, 8, 40, 1500) * 25 >= 1500 > (epochs_for(200, 8, 40, 1500) - 1) * 25
    assert epochs_for(2000, 8, 40, 1500) == 40  # enough steps already
    assert epochs_for(1, 8, 40, 10**6) == MAX_EPOCHS
    assert epochs_for(64, 8, 40, 0) == 40
    assert epochs_for(4096, 8, 40, 1500, max_steps=6000) * 512 <= 6000  # within the cap
    assert epochs_for(10**6, 8, 40, 1500, max_steps=6000) == 1  # one epoch at least
