"""What an image source yields, and how an item becomes an ImageRecord.

A source is any iterable of :class:`RawImage` (a decodable cutout) or :class:`SourceFailure`
(an item it could not read, kept whole for the dead-letter topic). Sources never raise for one
bad item; they raise :class:`SourceError` only when they cannot go on at all.

Optional capabilities a source may have, found by :func:`source_parts` and the helpers below:
``endless`` (bool: whether iteration can run forever; unknown sources are taken as endless),
``stats`` (an object with ``snapshot() -> dict[str, int]``: the source's own counters, e.g.
quality cuts), ``commit()`` (commit what was handed out, once the caller's outputs made from it
are delivered) and ``deliver`` (an attribute the caller may set to a callable that returns once
those outputs are delivered, so the source can commit at its own quiet points). A composite
source exposes its parts as ``sources``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from processors.core.records import GroundTruth, ImageFormat, ImageRecord

__all__ = [
    "ImageSource",
    "RawImage",
    "SourceFailure",
    "SourceItem",
    "image_id_for",
    "is_endless",
    "source_counters",
    "source_parts",
    "to_record",
]


@dataclass(frozen=True)
class RawImage:
    """One cutout as a source delivers it; ``pixels`` are encoded in ``format``."""

    source: str
    survey: str
    format: ImageFormat
    pixels: bytes
    width: int
    height: int
    bands: int
    observed_at: datetime
    ra: float | None = None
    dec: float | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    truth: GroundTruth | None = None


@dataclass(frozen=True)
class SourceFailure:
    """An item the source could not turn into an image, with the reason and its raw bytes."""

    source: str
    key: str
    raw: bytes
    error_class: str
    message: str


SourceItem = RawImage | SourceFailure


class ImageSource(Protocol):
    """A named, finite or endless stream of items. Iteration order is the publish order."""

    name: str

    def __iter__(self) -> Iterator[SourceItem]: ...


def source_parts(source: ImageSource) -> list[ImageSource]:
    """The leaf sources of ``source`` (its ``sources`` if composite, recursively), in order."""
    parts = getattr(source, "sources", None)
    if parts is None:
        return [source]
    return [leaf for part in parts for leaf in source_parts(part)]


def is_endless(source: ImageSource) -> bool:
    """Whether iterating ``source`` may never end; a source that does not say is endless."""
    return any(bool(getattr(part, "endless", True)) for part in source_parts(source))


def source_counters(source: ImageSource) -> dict[str, dict[str, int]]:
    """``{part name: part.stats.snapshot()}`` for every leaf source that keeps counters.

    Parts sharing a name (their images share the ``source`` field too) have their counters summed.
    """
    counters: dict[str, dict[str, int]] = {}
    for part in source_parts(source):
        stats: Any = getattr(part, "stats", None)
        if stats is None or not callable(getattr(stats, "snapshot", None)):
            continue
        merged = counters.setdefault(part.name, {})
        for key, value in stats.snapshot().items():
            merged[key] = merged.get(key, 0) + int(value)
    return counters


def image_id_for(source: str, pixels: bytes) -> str:
    """Content address: sha256(source NUL pixels). Same cutout from the same source, same id."""
    digest = hashlib.sha256(source.encode())
    digest.update(b"\x00")
    digest.update(pixels)
    return digest.hexdigest()


def to_record(image: RawImage, fetched_at: datetime | None = None) -> ImageRecord:
    return ImageRecord(
        image_id=image_id_for(image.source, image.pixels),
        source=image.source,
        survey=image.survey,
        ra=image.ra,
        dec=image.dec,
        observed_at=image.observed_at,
        fetched_at=fetched_at or datetime.now(UTC),
        format=image.format,
        pixels=image.pixels,
        uri=None,
        width=image.width,
        height=image.height,
        bands=image.bands,
        provenance=dict(image.provenance),
        truth=image.truth,
    )
