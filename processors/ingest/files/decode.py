"""One image file's bytes -> what a RawImage needs: format, pixels, shape, sky position, time.

The format is found from the bytes (magic numbers), never from the file name. FITS, PNG and
JPEG are passed through unchanged (so a file's content hash is the image id, and the same file
read twice is the same image); TIFF, which records cannot carry, is transcoded losslessly: 8-bit
to PNG, anything else to a float32 FITS. Decoding is checked with the scorer's own decoder, so
a file accepted here decodes downstream with the same shape.

FITS headers give the sky position when they hold a celestial WCS (the world coordinates of the
central pixel, in ICRS-like RA/Dec degrees as the header states them) and the observation time
from ``DATE-OBS`` or ``MJD-OBS``. Anything else raises :class:`BadImageError` with the reason;
an image over the pixel limit (``ingest.max_pixels``) raises ``ImageTooLargeError`` from its
header, before its pixels are decoded (:mod:`processors.core.imaging`).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from processors.core.exceptions import BadImageError
from processors.core.imaging import (
    decode_pixels,
    encode_fits,
    encode_png,
    gunzip_bounded,
    open_raster,
)
from processors.core.records import ImageFormat

__all__ = ["FILE_SUFFIXES", "DecodedFile", "read_image_bytes", "sniff_format"]

FILE_SUFFIXES = (
    ".fits",
    ".fit",
    ".fts",
    ".fits.gz",
    ".fit.gz",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"SIMPLE  =", "fits"),
    (b"\x1f\x8b", "fits.gz"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)


@dataclass(frozen=True)
class DecodedFile:
    format: ImageFormat
    pixels: bytes
    width: int
    height: int
    bands: int
    ra: float | None = None
    dec: float | None = None
    observed_at: datetime | None = None
    provenance: dict[str, str] = field(default_factory=dict)


def sniff_format(data: bytes) -> str:
    """``fits``, ``fits.gz``, ``png``, ``jpeg`` or ``tiff``; BadImageError otherwise."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    head = data[:16].decode("latin-1", "replace")
    raise BadImageError(f"not a FITS, PNG, JPEG or TIFF file (starts with {head!r})")


def read_image_bytes(data: bytes) -> DecodedFile:
    """Decode and check one file's bytes; see the module docstring."""
    if not data:
        raise BadImageError("empty file")
    kind = sniff_format(data)
    if kind == "tiff":
        return _from_tiff(data)
    fmt: ImageFormat = "fits" if kind.startswith("fits") else kind  # type: ignore[assignment]
    array = decode_pixels(data, fmt)
    h, w, b = array.shape
    decoded = DecodedFile(fmt, data, w, h, b, provenance={"format": kind})
    if fmt == "fits":
        return _with_fits_header(decoded, data)
    return decoded


def _from_tiff(data: bytes) -> DecodedFile:
    def load(img: Any) -> Any:
        img.load()
        return np.asarray(img)

    array = open_raster(data, load)  # refuses a TIFF over the pixel limit from its header
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 2:
        raise BadImageError(f"TIFF image of shape {array.shape}; expected (h, w[, bands])")
    h, w = array.shape[:2]
    b = 1 if array.ndim == 2 else array.shape[2]
    prov = {"format": "tiff"}
    if array.dtype == np.uint8 and b in (1, 3, 4):
        return DecodedFile("png", encode_png(array), w, h, b, provenance=prov)
    floats = array.astype(np.float32)
    if not np.isfinite(floats).any():
        raise BadImageError("TIFF image has no finite pixel values")
    return DecodedFile("fits", encode_fits(floats), w, h, b, provenance=prov)


def _with_fits_header(decoded: DecodedFile, data: bytes) -> DecodedFile:
    header = _first_data_header(data)
    ra, dec = _centre(header, decoded.width, decoded.height)
    prov = dict(decoded.provenance)
    for card in ("TELESCOP", "INSTRUME", "FILTER", "OBJECT"):
        value = header.get(card)
        if value not in (None, ""):
            prov[card.lower()] = str(value).strip()
    return DecodedFile(
        decoded.format,
        decoded.pixels,
        decoded.width,
        decoded.height,
        decoded.bands,
        ra=ra,
        dec=dec,
        observed_at=_observed_at(header),
        provenance=prov,
    )


def _first_data_header(data: bytes) -> Any:
    from astropy.io import fits

    raw = gunzip_bounded(data) if data[:2] == b"\x1f\x8b" else data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(raw), memmap=False) as hdul:
            for hdu in hdul:
                if getattr(hdu, "data", None) is not None:
                    return hdu.header.copy()
    raise BadImageError("FITS file has no image data")


def _centre(header: Any, width: int, height: int) -> tuple[float | None, float | None]:
    """World coordinates of the central pixel when the header has a celestial WCS."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
            if not wcs.has_celestial:
                return None, None
            ra, dec = wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)[0]
    except Exception:  # a malformed WCS is a missing position, not an unreadable image
        return None, None
    if not (np.isfinite(ra) and np.isfinite(dec)) or not -90.0 <= dec <= 90.0:
        return None, None
    return float(ra) % 360.0, float(dec)


def _observed_at(header: Any) -> datetime | None:
    from astropy.time import Time

    for card, fmt in (("DATE-OBS", "isot"), ("MJD-OBS", "mjd")):
        value = header.get(card)
        if value in (None, ""):
            continue
        try:
            moment = Time(value, format=fmt, scale="utc") if fmt == "mjd" else Time(value)
            return moment.to_datetime(timezone=UTC)
        except (ValueError, TypeError):
            continue
    return None
