"""What an image source yields, and how an item becomes an ImageRecord.

Every item is exactly one of :class:`RawImage` (a decodable cutout) or :class:`SourceFailure`
(an item the source could not read, kept whole for the dead-letter topic). Sources never raise
for one bad item; they raise :class:`~processors.core.exceptions.SourceError` only when they
cannot go on at all. An image's id is its content address (:func:`image_id_for`), so the same
cutout from the same source always gets the same id, however often it is re-read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from processors.core.records import GroundTruth, ImageFormat, ImageRecord

__all__ = ["RawImage", "SourceFailure", "SourceItem", "image_id_for", "to_record"]


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


def image_id_for(source: str, pixels: bytes) -> str:
    """Content address: sha256(source NUL pixels). Same cutout from the same source, same id."""
    digest = hashlib.sha256(source.encode())
    digest.update(b"\x00")
    digest.update(pixels)
    return digest.hexdigest()


def to_record(image: RawImage, fetched_at: datetime | None = None) -> ImageRecord:
    """The ImageRecord of ``image``; ``fetched_at`` defaults to now (UTC)."""
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
