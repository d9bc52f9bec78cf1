"""Turn a ZTF alert's cutouts into the image to score: a float32 FITS :class:`RawImage`.

The cutout mode picks the image: ``difference`` (default), ``science``, ``template``, or
``triplet`` (science, template, difference stacked bands-last in that order; their shapes must
agree). Stamps are decoded by :func:`processors.core.imaging.decode_pixels` (gzip-compressed or
plain FITS; JPEG in the oldest simulated packets). Stamps are nominally 63x63 but smaller at
CCD edges; they are kept at their size. NaN pixels (masked) are kept for the scorer.

The output FITS carries only pixel-derived header cards (no schema version), so the same cutout
republished under another schema version gets the same ``image_id``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError
from processors.core.imaging import decode_pixels, encode_fits
from processors.core.records import ImageFormat
from processors.ingest.sources.items import RawImage
from processors.ingest.ztf.packets import ZtfAlert

__all__ = [
    "CUTOUT_MODES",
    "FILTERS",
    "TRIPLET_ORDER",
    "CutoutError",
    "CutoutMode",
    "alert_pixels",
    "alert_provenance",
    "alert_to_image",
]

CutoutMode = Literal["difference", "science", "template", "triplet"]
CUTOUT_MODES: Final[tuple[str, ...]] = get_args(CutoutMode)
TRIPLET_ORDER: Final[tuple[str, str, str]] = ("science", "template", "difference")
FILTERS: Final[dict[int, str]] = {1: "g", 2: "r", 3: "i"}
"""ZTF filter id (``fid``) -> band name."""


class CutoutError(BadImageError):
    """A cutout is missing, undecodable or disagrees with its siblings; ``reason`` is a code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _stamp_format(data: bytes) -> ImageFormat:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "fits"  # gzip-compressed or plain; anything else fails in the FITS decoder


def _stamp(alert: ZtfAlert, kind: str) -> NDArray[np.float32]:
    data = alert.cutouts.get(kind)
    if data is None:
        raise CutoutError("MissingCutout", f"candid {alert.candid}: no {kind} cutout in packet")
    try:
        array = decode_pixels(data, _stamp_format(data))
    except BadImageError as exc:
        raise CutoutError("BadCutout", f"candid {alert.candid}: {kind} cutout: {exc}") from exc
    if array.shape[2] != 1:
        raise CutoutError(
            "BadCutout",
            f"candid {alert.candid}: {kind} cutout has {array.shape[2]} bands; expected 1",
        )
    return array


def alert_pixels(alert: ZtfAlert, mode: CutoutMode) -> tuple[NDArray[np.float32], tuple[str, ...]]:
    """The ``(h, w, bands)`` float32 array to score and the names of its bands, in order."""
    if mode != "triplet":
        return _stamp(alert, mode), (mode,)
    stamps = [_stamp(alert, kind) for kind in TRIPLET_ORDER]
    shapes = {kind: s.shape[:2] for kind, s in zip(TRIPLET_ORDER, stamps, strict=True)}
    if len(set(shapes.values())) != 1:
        sizes = ", ".join(f"{kind} {h}x{w}" for kind, (h, w) in shapes.items())
        raise CutoutError(
            "CutoutShapeMismatch",
            f"candid {alert.candid}: triplet cutouts disagree in shape ({sizes})",
        )
    return np.concatenate(stamps, axis=2), TRIPLET_ORDER


def alert_provenance(alert: ZtfAlert) -> dict[str, str]:
    """The alert's identity, position, time, photometry and quality scores as text."""
    prov: dict[str, str] = {
        "candid": str(alert.candid),
        "jd": repr(alert.jd),
        "observed_at": alert.observed_at.isoformat(),
        "ra": repr(alert.ra),
        "dec": repr(alert.dec),
        "schemavsn": alert.schema_label,
    }
    optional: dict[str, object] = {
        "object_id": alert.object_id,
        "magpsf": alert.magpsf,
        "sigmapsf": alert.sigmapsf,
        "fid": alert.fid,
        "filter": FILTERS.get(alert.fid) if alert.fid is not None else None,
        "rb": alert.rb,
        "drb": alert.drb,
        "nbad": alert.nbad,
        "programid": alert.programid,
    }
    prov.update({key: _text(value) for key, value in optional.items() if value is not None})
    for key, value in alert.extra.items():
        prov.setdefault(key, value)
    return prov


def alert_to_image(alert: ZtfAlert, mode: CutoutMode, source: str) -> RawImage:
    """Decode the cutout(s) for ``mode`` into a float32 FITS RawImage (raises CutoutError)."""
    pixels, bands = alert_pixels(alert, mode)
    height, width, nbands = pixels.shape
    header: dict[str, str | float] = {"SURVEY": "ZTF", "CUTOUT": mode}
    header.update({f"BAND{i}": name for i, name in enumerate(bands, start=1)})
    provenance = alert_provenance(alert)
    provenance["cutout"] = mode
    provenance["bands"] = ",".join(bands)
    return RawImage(
        source=source,
        survey="ztf",
        format="fits",
        pixels=encode_fits(pixels, header),
        width=width,
        height=height,
        bands=nbands,
        observed_at=alert.observed_at,
        ra=alert.ra,
        dec=alert.dec,
        provenance=provenance,
    )


def _text(value: object) -> str:
    """Shortest text that round-trips; float32 photometry prints as stored (0.28, not 0.28000..)."""
    if isinstance(value, float):
        as_f32 = np.float32(value)
        return str(as_f32) if float(as_f32) == value else repr(value)
    return str(value)
