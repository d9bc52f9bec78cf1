from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from processors.core.exceptions import DetectorError
from processors.yolo.ultralytics_env import offline_ultralytics
from processors.yolo.yolo import YoloLocalizer
from tests.detect.blobs import blob_image

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ultralytics")


@pytest.fixture(scope="module")
def checkpoints(config_dir: Path) -> dict[str, Path]:
    """An untrained YOLOv8n checkpoint and one whose weights are all NaN."""
    offline_ultralytics(config_dir)
    from ultralytics import YOLO

    paths = {"untrained": config_dir / "untrained.pt", "nan": config_dir / "nan.pt"}
    model = YOLO("yolov8n.yaml")
    model.save(paths["untrained"])
    with torch.no_grad():
        for parameter in model.model.parameters():
            parameter.fill_(float("nan"))
    model.save(paths["nan"])
    return paths


def test_import_and_predict_never_touch_the_network(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import socket
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(args[:2])
            raise OSError("network refused by the test")
        socket.getaddrinfo = refuse
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from pathlib import Path
        import numpy as np
        from processors.yolo.ultralytics_env import offline_ultralytics
        offline_ultralytics(Path({str(tmp_path)!r}))
        from ultralytics import YOLO
        YOLO("yolov8n.yaml").predict(np.zeros((32, 32, 3), np.uint8), imgsz=32, verbose=False)
        print("attempts", attempts)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for key in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "OMP_NUM_THREADS"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attempts []" in done.stdout
    settings = (tmp_path / "Ultralytics" / "settings.json").read_text()
    assert '"sync": false' in settings
    assert (tmp_path / "Ultralytics" / "Arial.ttf").stat().st_size > 100_000


def test_boxes_are_in_the_input_pixels_in_batch_order(
    checkpoints: dict[str, Path], config_dir: Path
) -> None:
    localizer = YoloLocalizer(checkpoints["untrained"], imgsz=64, conf=0.0, config_dir=config_dir)
    wide, _ = blob_image(1, size=80)
    wide = wide[:48]
    square, _ = blob_image(2, size=64)
    threads = torch.get_num_threads()
    boxes = localizer.predict([wide, square, wide[:, :, None]])
    assert torch.get_num_threads() == threads
    assert len(boxes) == 3 and boxes[0]  # conf=0 keeps the untrained network's guesses
    assert boxes[0] == boxes[2]  # 2-D and bands-last of the same pixels render the same
    for image_boxes, (h, w) in zip(boxes, [(48, 80), (64, 64)], strict=False):
        for box in image_boxes:
            assert 0 <= box["x1"] < box["x2"] <= w and 0 <= box["y1"] < box["y2"] <= h
            assert box["label"] in localizer.names.values()
        confidences = [b["confidence"] for b in image_boxes]
        assert confidences == sorted(confidences, reverse=True)
    assert localizer.predict([]) == []


def test_a_nan_model_raises_instead_of_finding_nothing(
    checkpoints: dict[str, Path], config_dir: Path
) -> None:
    localizer = YoloLocalizer(checkpoints["nan"], imgsz=64, config_dir=config_dir)
    image, _ = blob_image(3, size=64)
    with pytest.raises(DetectorError, match="non-finite"):
        localizer.predict([image])


def test_missing_or_corrupt_weights(tmp_path: Path, config_dir: Path) -> None:
    with pytest.raises(DetectorError, match="do not exist"):
        YoloLocalizer(tmp_path / "missing.pt", config_dir=config_dir)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DetectorError, match="cannot load"):
        YoloLocalizer(corrupt, config_dir=config_dir)
