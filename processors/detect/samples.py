"""Training samples and dataset manifests: content-addressed, versioned, with a fixed held-out set.

A :class:`TrainingSample` is one pseudo-labelled image: its pixels as the float32 plane every
localizer sees (:func:`processors.detect.raster.record_plane`), its boxes in those pixels'
coordinates, the image id and its source. Its bytes (a small header, JSON, then the plane as
``.npy``) are an artifact: the same image with the same boxes is the same sample, wherever and
however often it is written. Rendering for YOLO (the 8-bit stretch) happens when a dataset is
written (:mod:`processors.detect.dataset`), so a sample does not depend on it.

Held-out split: :func:`is_held_out` takes an image by the hash of its id (a hash space of its
own, independent of canary routing), so an image is held out in every dataset version or in
none, and a held-out image never trains a model.

A :class:`DatasetManifest` lists sample ids (train and held-out, sorted), the manifest it grew
from, and how many pseudo-labels it counts; its JSON bytes are an artifact too, so its id names
exactly that dataset version.

Example:
    >>> box = {"label": "source", "confidence": 0.9, "x1": 1.0, "y1": 2.0, "x2": 6.0, "y2": 7.0}
    >>> sample = TrainingSample("img-1", "sky", np.eye(8, dtype=np.float32), [box])
    >>> again = TrainingSample.from_bytes(sample.to_bytes())
    >>> again.boxes == [box], again.plane.shape, again.to_bytes() == sample.to_bytes()
    (True, (8, 8), True)
    >>> is_held_out("img-1", 0.2) == is_held_out("img-1", 0.2)
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from processors.core.records import Box

__all__ = ["DatasetManifest", "TrainingSample", "is_held_out"]

_MAGIC = b"SKYS1"
_LEN = struct.Struct("<I")


def is_held_out(image_id: str, fraction: float) -> bool:
    """Whether ``image_id`` belongs to the held-out set at ``fraction`` (stable, by hash)."""
    digest = hashlib.sha256(f"held-out|{image_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


@dataclass(frozen=True)
class TrainingSample:
    image_id: str
    source: str
    plane: NDArray[np.float32]
    boxes: list[Box]

    def to_bytes(self) -> bytes:
        meta = json.dumps(
            {"image_id": self.image_id, "source": self.source, "boxes": self.boxes},
            sort_keys=True,
        ).encode()
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.plane, dtype="<f4"), allow_pickle=False)
        return _MAGIC + _LEN.pack(len(meta)) + meta + buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainingSample:
        if not data.startswith(_MAGIC):
            raise ValueError("not a training sample (bad magic)")
        (size,) = _LEN.unpack_from(data, len(_MAGIC))
        start = len(_MAGIC) + _LEN.size
        meta = json.loads(data[start : start + size])
        plane = np.load(io.BytesIO(data[start + size :]), allow_pickle=False)
        return cls(meta["image_id"], meta["source"], plane, meta["boxes"])


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset version: sample artifact ids split into train and held-out, sorted."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]
    parent: str | None = None
    pseudo_labels: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        samples: Iterable[tuple[str, str]],
        held_out_fraction: float,
        parent: str | None = None,
    ) -> DatasetManifest:
        """From ``(image_id, sample_id)`` pairs; each image's side is fixed by its id."""
        train: set[str] = set()
        held: set[str] = set()
        for image_id, sample_id in samples:
            (held if is_held_out(image_id, held_out_fraction) else train).add(sample_id)
        return cls(tuple(sorted(train)), tuple(sorted(held)), parent, len(train) + len(held))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "train": list(self.train),
                "held_out": list(self.held_out),
                "parent": self.parent,
                "pseudo_labels": self.pseudo_labels,
                "extra": dict(sorted(self.extra.items())),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DatasetManifest:
        raw = json.loads(data)
        return cls(
            tuple(raw["train"]),
            tuple(raw["held_out"]),
            raw.get("parent"),
            int(raw.get("pseudo_labels", 0)),
            dict(raw.get("extra") or {}),
        )
