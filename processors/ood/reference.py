"""Calibration references: the features and energy scores of images taken as normal.

A :class:`ReferenceSet` is what a ``calibration.updated`` control event points at (by artifact
id). The controller computes thresholds from it and every scorer refits its OOD ensemble from the
same bytes, so its serialisation is canonical: equal contents give equal bytes, hence the same
content address, on every machine.

Byte format, all integers and floats little-endian::

    b"SKYREF\\x00\\x01" or b"SKYREF\\x00\\x02"   magic + format version
    u64 n, u64 d, u32 len(backbone)
    backbone version, UTF-8
    features, n*d row-major: float32 (version 1) or float16 (version 2)
    energy, n float64

Version 2 is written exactly when every feature is a float16 value (the controller's
references come from its ring, which keeps features in float16), so the set's contents alone
choose the version, the bytes stay canonical, and reading gives the same float32 features
either way; such a reference takes half the bytes (2.5 MB instead of 5 for 972 images of
1,280 features).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors.core.artifacts import ArtifactStore
from processors.core.exceptions import SkyloopError

__all__ = ["ReferenceSet", "ReferenceSetError", "load_reference", "save_reference"]

_MAGIC = b"SKYREF\x00\x01"  # features in float32
_MAGIC_F16 = b"SKYREF\x00\x02"  # features in float16 (every one exactly a float16 value)
_HEADER = struct.Struct("<QQI")


class ReferenceSetError(SkyloopError):
    """A reference set is malformed (shapes, non-finite values, bytes) or too small to use."""


def _frozen(array: NDArray[Any], dtype: type[np.generic]) -> NDArray[Any]:
    out = np.array(array, dtype=np.dtype(dtype).newbyteorder("<"), order="C", copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """Features ``(n, d)`` float32 and raw energy scores ``(n,)`` float64 of ``n`` normal images.

    Invariants (checked on construction, :class:`ReferenceSetError` otherwise): ``n >= 1``,
    ``d >= 1``, rows of ``features`` and ``energy`` describe the same images in the same order,
    all values finite. The arrays are copied and made read-only, so a set never changes after
    its bytes were addressed. ``backbone`` names the backbone version that produced the features
    (empty when unknown); features from another backbone are not comparable.

    Example:
        >>> ref = ReferenceSet(np.zeros((2, 3), np.float32), np.array([-1.0, -2.0]), "bb@1")
        >>> ReferenceSet.from_bytes(ref.to_bytes()).to_bytes() == ref.to_bytes()
        True
    """

    features: NDArray[np.float32]
    energy: NDArray[np.float64]
    backbone: str = ""

    def __post_init__(self) -> None:
        features = np.asarray(self.features)
        energy = np.asarray(self.energy)
        if features.ndim != 2 or features.shape[0] < 1 or features.shape[1] < 1:
            raise ReferenceSetError(f"features must be (n >= 1, d >= 1), got {features.shape}")
        if energy.shape != (features.shape[0],):
            raise ReferenceSetError(
                f"energy must be ({features.shape[0]},) to match features, got {energy.shape}"
            )
        features = _frozen(features, np.float32)
        energy = _frozen(energy, np.float64)
        if not np.isfinite(features).all():
            bad = int((~np.isfinite(features).all(axis=1)).sum())
            raise ReferenceSetError(f"features have non-finite values in {bad} rows")
        if not np.isfinite(energy).all():
            raise ReferenceSetError(f"energy has {int((~np.isfinite(energy)).sum())} non-finite")
        if not isinstance(self.backbone, str):
            raise ReferenceSetError(f"backbone must be a str, got {type(self.backbone).__name__}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "energy", energy)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        n, d = self.features.shape
        return f"ReferenceSet(n={n}, d={d}, backbone={self.backbone!r})"

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return int(self.features.shape[1])

    def to_bytes(self) -> bytes:
        """Canonical bytes (format in the module docstring); equal sets give equal bytes."""
        n, d = self.features.shape
        name = self.backbone.encode("utf-8")
        with np.errstate(over="ignore"):  # a value past float16's range: kept in float32
            half = self.features.astype("<f2")
        lossless = bool(np.array_equal(half.astype(np.float32), self.features))
        return b"".join(
            (
                _MAGIC_F16 if lossless else _MAGIC,
                _HEADER.pack(n, d, len(name)),
                name,
                (half if lossless else self.features).tobytes(order="C"),
                self.energy.tobytes(order="C"),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSet:
        """Parse :meth:`to_bytes` output; raises :class:`ReferenceSetError` on any mismatch."""
        view = memoryview(data)
        magic = bytes(view[: len(_MAGIC)])
        if magic not in (_MAGIC, _MAGIC_F16):
            raise ReferenceSetError("not a skyloop reference set (bad magic or format version)")
        width, dtype = (2, "<f2") if magic == _MAGIC_F16 else (4, "<f4")
        offset = len(_MAGIC)
        if len(view) < offset + _HEADER.size:
            raise ReferenceSetError("reference set bytes are truncated in the header")
        n, d, name_len = _HEADER.unpack_from(view, offset)
        offset += _HEADER.size
        expected = offset + name_len + n * d * width + n * 8
        if len(view) != expected:
            raise ReferenceSetError(
                f"reference set of n={n}, d={d} needs {expected} bytes, got {len(view)}"
            )
        try:
            backbone = bytes(view[offset : offset + name_len]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReferenceSetError(f"backbone name is not UTF-8: {exc}") from exc
        offset += name_len
        features = np.frombuffer(view, dtype=dtype, count=n * d, offset=offset).reshape(n, d)
        offset += n * d * width
        energy = np.frombuffer(view, dtype="<f8", count=n, offset=offset)
        return cls(features=features, energy=energy, backbone=backbone)


def save_reference(store: ArtifactStore, reference: ReferenceSet) -> str:
    """Store the reference's canonical bytes; returns its artifact id (idempotent)."""
    return store.put_bytes(reference.to_bytes())


def load_reference(store: ArtifactStore, artifact_id: str) -> ReferenceSet:
    """Load and verify a stored reference.

    Raises ``ArtifactError`` when absent or corrupt, :class:`ReferenceSetError` when the
    verified bytes are not a reference set.
    """
    data = store.get_bytes(artifact_id)
    try:
        return ReferenceSet.from_bytes(data)
    except ReferenceSetError as exc:
        raise ReferenceSetError(f"artifact {artifact_id}: {exc}") from exc
