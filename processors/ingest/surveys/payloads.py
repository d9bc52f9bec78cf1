"""Is a survey's response an image we can score? Checks every payload before it becomes a record.

In order, a payload fails with the first that applies (``error_class`` in brackets):
- an HTML page or a JSON document, whatever the status code said (``HtmlErrorPage``,
  ``JsonErrorPage``; transient: services serve maintenance and throttling pages with 200);
- FITS that stops short of a whole 2880-byte block or does not parse (``TruncatedFits``;
  transient: a dropped or cut transfer) and other undecodable bytes (``Undecodable``);
- a format other than the one asked for (``WrongFormat``), a size other than ``width x height``
  (``WrongSize``) or a band count other than ``bands`` (``WrongBands``): permanent;
- no finite pixel, or all pixels equal (``BlankImage``, ``ConstantImage``): permanent, what
  cutout services return outside their footprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from processors.core.exceptions import (
    BadImageError,
    ConfigError,
    PermanentFetchError,
    TransientFetchError,
)
from processors.core.imaging import decode_pixels
from processors.core.records import ImageFormat
from processors.ingest.files.decode import DecodedFile, read_image_bytes

__all__ = ["Expected", "check_payload", "cutout_format"]

_FITS_BLOCK = 2880


@dataclass(frozen=True)
class Expected:
    """What the request asked for; ``None`` accepts any value."""

    format: ImageFormat
    width: int | None = None
    height: int | None = None
    bands: int | None = None


def cutout_format(key: str, raw: str) -> str:
    """The ``format`` option of a survey that serves FITS or JPEG (``jpg`` is ``jpeg``)."""
    value = {"jpg": "jpeg"}.get(raw.lower(), raw.lower())
    if value not in ("fits", "jpeg"):
        raise ConfigError(f"{key}={raw!r}: accepted values are fits, jpeg")
    return value


def _looks_like(body: bytes, content_type: str) -> str | None:
    head = body[:512].lstrip().lower()
    ctype = content_type.lower()
    if "html" in ctype or head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "HtmlErrorPage"
    if "json" in ctype or head[:1] in (b"{", b"["):
        return "JsonErrorPage"
    return None


def check_payload(body: bytes, content_type: str, expected: Expected) -> DecodedFile:
    """The decoded payload, or :class:`TransientFetchError` / :class:`PermanentFetchError`."""
    page = _looks_like(body, content_type)
    if page is not None:
        snippet = body[:120].decode("utf-8", "replace").strip()
        raise TransientFetchError(page, f"served instead of an image: {snippet!r}")
    if body.startswith(b"SIMPLE  =") and len(body) % _FITS_BLOCK:
        raise TransientFetchError(
            "TruncatedFits", f"{len(body)} bytes is not a whole number of 2880-byte FITS blocks"
        )
    try:
        decoded = read_image_bytes(body)
    except BadImageError as exc:
        if "no finite pixel" in str(exc):
            raise PermanentFetchError("BlankImage", str(exc)) from exc
        fits = body.startswith((b"SIMPLE  =", b"\x1f\x8b"))
        raise TransientFetchError("TruncatedFits" if fits else "Undecodable", str(exc)) from exc
    if decoded.format != expected.format:
        raise PermanentFetchError(
            "WrongFormat", f"asked for {expected.format}, got {decoded.format}"
        )
    want = (expected.width or decoded.width, expected.height or decoded.height)
    if (decoded.width, decoded.height) != want:
        raise PermanentFetchError(
            "WrongSize", f"asked for {want[0]}x{want[1]}, got {decoded.width}x{decoded.height}"
        )
    if expected.bands is not None and decoded.bands != expected.bands:
        raise PermanentFetchError(
            "WrongBands", f"asked for {expected.bands} bands, got {decoded.bands}"
        )
    pixels = decode_pixels(decoded.pixels, decoded.format)
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0 or not finite.any():
        raise PermanentFetchError("BlankImage", "no signal: every pixel is zero or not finite")
    if float(finite.max()) == float(finite.min()):
        raise PermanentFetchError("ConstantImage", f"every pixel is {float(finite.min())}")
    return decoded
