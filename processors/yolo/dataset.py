"""Write (image, boxes) samples as a YOLO dataset folder that ultralytics trains on.

Layout under ``root``::

    data.yaml                  train/val folders and class names; no absolute path, so the
                               folder can move (ultralytics resolves it next to data.yaml)
    images/{train,val}/ID.png  the image rendered by stretch_to_uint8 (what YoloLocalizer sees)
    labels/{train,val}/ID.txt  one "class cx cy w h" line per box, normalised to [0, 1],
                               six decimals; an empty file for an image without boxes

Invariants: equal samples give byte-identical files (PNG without timestamps, fixed number
formats, samples and lines in a fixed order), and :attr:`YoloDataset.digest` is the sha256
over every file's relative path and bytes, so a dataset is content-addressed. An image id may
appear once (a held-out image can never also train). Every box is checked: finite, inside the
image after clipping, with positive area, and a label among ``names``; otherwise
:class:`DatasetError` names the image and the box. ``root`` must not exist or be empty.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import DatasetError
from processors.core.imaging import encode_png
from processors.core.records import Box
from processors.yolo.raster import Layout, stretch_to_uint8

__all__ = ["DetectionSample", "YoloDataset", "dataset_digest", "write_yolo_dataset"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SPLITS = ("train", "val")


@dataclass(frozen=True, slots=True)
class DetectionSample:
    """One image (2-D, bands-first or bands-last) and its boxes in the image's pixels."""

    image_id: str
    image: NDArray[np.generic]
    boxes: Sequence[Box] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class YoloDataset:
    root: Path
    data_yaml: Path
    digest: str
    images: dict[str, int]
    boxes: dict[str, int]
    names: tuple[str, ...]


def _label_lines(sample: DetectionSample, shape: tuple[int, int], names: Sequence[str]) -> str:
    h, w = shape
    lines = []
    for n, box in enumerate(sample.boxes):
        where = f"image {sample.image_id!r} box {n}"
        if box["label"] not in names:
            raise DatasetError(f"{where}: label {box['label']!r} is not one of {list(names)}")
        coords = np.array([box["x1"], box["y1"], box["x2"], box["y2"]], dtype=np.float64)
        if not np.isfinite(coords).all():
            raise DatasetError(f"{where}: non-finite coordinates {coords.tolist()}")
        x1, x2 = np.clip(coords[[0, 2]], 0.0, w)
        y1, y2 = np.clip(coords[[1, 3]], 0.0, h)
        if not (x2 > x1 and y2 > y1):
            raise DatasetError(f"{where}: {coords.tolist()} has no area inside the {w}x{h} image")
        cls = names.index(box["label"])
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    return "".join(lines)


def _data_yaml(names: Sequence[str]) -> str:
    entries = "".join(f"  {i}: {json.dumps(name)}\n" for i, name in enumerate(names))
    return f"train: images/train\nval: images/val\nnc: {len(names)}\nnames:\n{entries}"


def dataset_digest(root: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        digest.update(len(rel).to_bytes(8, "big") + rel + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def write_yolo_dataset(
    root: Path,
    train: Sequence[DetectionSample],
    val: Sequence[DetectionSample],
    *,
    names: Sequence[str] = ("source",),
    layout: Layout = "auto",
) -> YoloDataset:
    """Write ``train`` and ``val`` under ``root`` (created); return its paths, counts and digest.

    ultralytics needs a validation split to train; ``val`` must not be empty. Files are
    written in sample order, each completely before the next; on an error the folder is left
    partial and must be discarded (write to a fresh folder and rename it into place).
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"dataset folder {root} already has files; write to a fresh folder")
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"class names must be unique and non-empty; got {list(names)}")
    if not val:
        raise DatasetError("the validation split is empty; ultralytics needs at least one image")
    seen: set[str] = set()
    counts: dict[str, int] = {}
    box_counts: dict[str, int] = {}
    for split, samples in zip(SPLITS, (train, val), strict=True):
        images_dir, labels_dir = root / "images" / split, root / "labels" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            if not _SAFE_ID.match(sample.image_id):
                raise DatasetError(
                    f"image id {sample.image_id!r} cannot be a file name (letters, digits, . _ -)"
                )
            if sample.image_id in seen:
                raise DatasetError(f"image id {sample.image_id!r} appears twice in the dataset")
            seen.add(sample.image_id)
            pixels = stretch_to_uint8(sample.image, layout)
            labels = _label_lines(sample, (pixels.shape[0], pixels.shape[1]), names)
            (images_dir / f"{sample.image_id}.png").write_bytes(encode_png(pixels))
            (labels_dir / f"{sample.image_id}.txt").write_text(labels, encoding="utf-8")
            box_counts[split] = box_counts.get(split, 0) + len(sample.boxes)
        counts[split] = len(samples)
        box_counts.setdefault(split, 0)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(_data_yaml(names), encoding="utf-8")
    return YoloDataset(
        root=root,
        data_yaml=data_yaml,
        digest=dataset_digest(root),
        images=counts,
        boxes=box_counts,
        names=tuple(names),
    )
