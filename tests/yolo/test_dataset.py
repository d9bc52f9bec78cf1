from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from processors.core.exceptions import DatasetError
from processors.core.records import Box
from processors.yolo.dataset import DetectionSample, dataset_digest, write_yolo_dataset
from tests.detect.blobs import blob_set


def samples(first: int, n: int, prefix: str) -> list[DetectionSample]:
    return [
        DetectionSample(f"{prefix}{k}", image, boxes)
        for k, (image, boxes) in enumerate(blob_set(first, n, size=48))
    ]


def test_layout_labels_and_yaml(tmp_path: Path) -> None:
    train, val = samples(0, 3, "t"), samples(10, 1, "v")
    train.append(DetectionSample("empty", np.zeros((48, 48), np.float32) + 1.0, ()))
    dataset = write_yolo_dataset(tmp_path / "ds", train, val)
    assert dataset.images == {"train": 4, "val": 1}
    assert dataset.boxes["train"] == sum(len(s.boxes) for s in train)
    data = yaml.safe_load(dataset.data_yaml.read_text())
    assert data == {"train": "images/train", "val": "images/val", "nc": 1, "names": {0: "source"}}
    png = Image.open(tmp_path / "ds" / "images" / "train" / "t0.png")
    assert png.size == (48, 48) and png.mode == "RGB"
    lines = (tmp_path / "ds" / "labels" / "train" / "t0.txt").read_text().splitlines()
    first = train[0].boxes[0]
    cls, cx, _, _, h = lines[0].split()
    assert cls == "0" and len(lines) == len(train[0].boxes)
    assert float(cx) == pytest.approx((first["x1"] + first["x2"]) / 96, abs=1e-6)
    assert float(h) == pytest.approx((first["y2"] - first["y1"]) / 48, abs=1e-6)
    assert (tmp_path / "ds" / "labels" / "train" / "empty.txt").read_text() == ""


def test_equal_samples_give_equal_bytes(tmp_path: Path) -> None:
    one = write_yolo_dataset(tmp_path / "a", samples(0, 4, "t"), samples(20, 2, "v"))
    two = write_yolo_dataset(tmp_path / "b", samples(0, 4, "t"), samples(20, 2, "v"))
    assert one.digest == two.digest == dataset_digest(tmp_path / "b")
    other = write_yolo_dataset(tmp_path / "c", samples(1, 4, "t"), samples(20, 2, "v"))
    assert other.digest != one.digest


def test_boxes_are_clipped_and_checked(tmp_path: Path) -> None:
    image = np.ones((40, 40), np.float32)
    outside = Box(label="source", confidence=1.0, x1=30, y1=30, x2=60, y2=60)
    dataset = write_yolo_dataset(
        tmp_path / "ok", [DetectionSample("a", image, [outside])], [DetectionSample("b", image)]
    )
    _, cx, _, w, _ = (dataset.root / "labels" / "train" / "a.txt").read_text().split()
    assert (float(cx), float(w)) == (0.875, 0.25)
    bad = [
        (Box(label="star", confidence=1, x1=0, y1=0, x2=5, y2=5), "label 'star'"),
        (Box(label="source", confidence=1, x1=0, y1=0, x2=float("nan"), y2=5), "non-finite"),
        (Box(label="source", confidence=1, x1=41, y1=0, x2=50, y2=5), "no area"),
    ]
    for n, (box, reason) in enumerate(bad):
        with pytest.raises(DatasetError, match=reason):
            write_yolo_dataset(
                tmp_path / f"bad{n}",
                [DetectionSample("a", image, [box])],
                [DetectionSample("b", image)],
            )


def test_refuses_unsafe_ids_duplicates_and_used_folders(tmp_path: Path) -> None:
    image = np.ones((16, 16), np.float32)
    with pytest.raises(DatasetError, match="file name"):
        write_yolo_dataset(
            tmp_path / "x", [DetectionSample("../a", image)], [DetectionSample("b", image)]
        )
    with pytest.raises(DatasetError, match="twice"):
        write_yolo_dataset(
            tmp_path / "y", [DetectionSample("a", image)], [DetectionSample("a", image)]
        )
    with pytest.raises(DatasetError, match="validation split is empty"):
        write_yolo_dataset(tmp_path / "z", [DetectionSample("a", image)], [])
    with pytest.raises(DatasetError, match="already has files"):
        write_yolo_dataset(
            tmp_path / "y", [DetectionSample("c", image)], [DetectionSample("d", image)]
        )
