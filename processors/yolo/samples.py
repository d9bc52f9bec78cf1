"""Training samples and dataset manifests: content-addressed, versioned, with a fixed held-out set.

A :class:`TrainingSample` is one pseudo-labelled image: its pixels as the float32 plane every
localizer sees (:func:`processors.yolo.raster.record_plane`), its boxes in those pixels'
coordinates, the image id and its source. Its bytes (a small header, JSON, then the plane as
``.npy``) are an artifact: the same image with the same boxes is the same sample, wherever and
however often it is written. Rendering for YOLO (the 8-bit stretch) happens when a dataset is
written (:mod:`processors.yolo.dataset`), so a sample does not depend on it.

Samples are gathered into dataset versions by :class:`processors.core.datasets.DatasetManifest`
(which also fixes the held-out split).

Example:
    >>> box = {"label": "source", "confidence": 0.9, "x1": 1.0, "y1": 2.0, "x2": 6.0, "y2": 7.0}
    >>> sample = TrainingSample("img-1", "sky", np.eye(8, dtype=np.float32), [box])
    >>> again = TrainingSample.from_bytes(sample.to_bytes())
    >>> again.boxes == [box], again.plane.shape, again.to_bytes() == sample.to_bytes()
    (True, (8, 8), True)
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.records import Box

__all__ = ["TrainingSample"]

_MAGIC = b"SKYS1"
_LEN = struct.Struct("<I")


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
