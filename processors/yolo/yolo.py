"""YOLOv8 localization on CPU, offline: arrays in, boxes in the input's pixel coordinates out.

:class:`YoloLocalizer` loads one weights file (a ``.pt`` written by ultralytics training) and
answers :meth:`YoloLocalizer.predict` for a batch of images. Every image goes through
:func:`processors.yolo.raster.stretch_to_uint8`, the rendering the training dataset was
written with, so a detector sees at inference what it saw in training.

Invariants: boxes are ``(x1, y1, x2, y2)`` in the input image's pixels (letterboxing undone by
ultralytics, then clipped to the image), most confident first; labels are the model's class
names. A model whose raw outputs are not finite raises :class:`DetectorError` instead of
yielding fewer boxes, so a broken model cannot pass for one that found nothing. Not thread-safe
(ultralytics keeps a predictor per model): use one localizer per thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from processors.core.allocator import keep_large_allocations
from processors.core.exceptions import DetectorError
from processors.core.records import Box
from processors.yolo.raster import Layout, stretch_to_uint8
from processors.yolo.ultralytics_env import offline_ultralytics

__all__ = ["YoloLocalizer"]

_DEFAULT_IMGSZ = 640


class _FiniteWatch:
    """Forward hook that notes a non-finite raw output; shared by every copy of the model."""

    def __init__(self) -> None:
        self.finite = True

    def __deepcopy__(self, memo: dict[int, Any]) -> _FiniteWatch:
        # ultralytics deep-copies the network for its predictor; the copy must report here.
        return self

    def __call__(self, module: Any, inputs: Any, output: Any) -> None:
        raw = output[0] if isinstance(output, tuple | list) else output
        if isinstance(raw, torch.Tensor) and not bool(torch.isfinite(raw).all()):
            self.finite = False


class YoloLocalizer:
    """Boxes from a YOLOv8 weights file.

    ``imgsz``: the inference size (default: the size the weights were trained at).
    ``conf``: the least confidence returned, default 0.25. ``iou``: NMS IoU, default 0.7.
    ``max_det``: most boxes per image, default 16. ``config_dir``: ultralytics' state
    directory (see :func:`processors.yolo.ultralytics_env.offline_ultralytics`).
    """

    def __init__(
        self,
        weights_path: Path,
        *,
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 16,
        config_dir: Path | None = None,
    ) -> None:
        weights = Path(weights_path)
        if not weights.is_file():
            raise DetectorError(f"detector weights {weights} do not exist")
        offline_ultralytics(config_dir)
        keep_large_allocations()  # activations reused from the heap, not mapped per batch
        from ultralytics import YOLO

        try:
            self._model: Any = YOLO(str(weights), task="detect")
        except Exception as exc:  # torch/ultralytics raise many types for a bad checkpoint
            raise DetectorError(f"cannot load detector weights {weights}: {exc}") from exc
        trained = self._model.overrides.get("imgsz")
        self.weights_path = weights
        self.imgsz = int(imgsz or (trained if isinstance(trained, int) else _DEFAULT_IMGSZ))
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.names: dict[int, str] = {int(k): str(v) for k, v in self._model.names.items()}
        # NMS silently drops NaN scores; watching the network's raw output catches them.
        self._watch = _FiniteWatch()
        network: Any = self._model.model
        network.register_forward_hook(self._watch)

    def predict(
        self, images: Sequence[NDArray[np.generic]], layout: Layout = "auto"
    ) -> list[list[Box]]:
        """Boxes per image, in order, for a batch of 2-D / bands-first / bands-last arrays."""
        if not images:
            return []
        rendered = [stretch_to_uint8(image, layout) for image in images]
        self._watch.finite = True
        threads = torch.get_num_threads()
        try:
            results = self._model.predict(
                rendered,
                imgsz=self.imgsz,
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_det,
                device="cpu",
                batch=len(rendered),
                verbose=False,
            )
        except Exception as exc:  # a broken model fails inside torch with arbitrary types
            raise DetectorError(f"detector {self.weights_path.name} failed: {exc}") from exc
        finally:
            # ultralytics' device selection resets torch's thread count to its own choice.
            torch.set_num_threads(threads)
        if not self._watch.finite:
            raise DetectorError(f"detector {self.weights_path.name} gave non-finite outputs")
        return [
            self._boxes(result, image.shape[:2])
            for result, image in zip(results, rendered, strict=True)
        ]

    def _boxes(self, result: Any, shape: tuple[int, ...]) -> list[Box]:
        xyxy = result.boxes.xyxy.cpu().numpy().astype(np.float64)
        confidence = result.boxes.conf.cpu().numpy().astype(np.float64)
        classes = result.boxes.cls.cpu().numpy().astype(np.int64)
        if not (np.isfinite(xyxy).all() and np.isfinite(confidence).all()):
            raise DetectorError(f"detector {self.weights_path.name} gave non-finite boxes")
        h, w = shape
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0.0, float(w))
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0.0, float(h))
        order = np.argsort(-confidence, kind="stable")
        return [
            Box(
                label=self.names.get(int(classes[i]), str(int(classes[i]))),
                confidence=float(confidence[i]),
                x1=float(xyxy[i, 0]),
                y1=float(xyxy[i, 1]),
                x2=float(xyxy[i, 2]),
                y2=float(xyxy[i, 3]),
            )
            for i in order
            if xyxy[i, 2] > xyxy[i, 0] and xyxy[i, 3] > xyxy[i, 1]
        ]
