"""Encode and decode the pixels of an ImageRecord (FITS, PNG, JPEG) as float32 arrays.

Decoded arrays are ``float32`` of shape ``(height, width, bands)``. Decoding validates what the
scorer relies on and raises :class:`BadImageError` with the reason otherwise: undecodable bytes,
an empty image, non-finite values only, or a shape that disagrees with the record.
"""

from __future__ import annotations

import gzip
import io
import warnings

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError
from processors.core.records import ImageFormat, ImageRecord

__all__ = ["MAX_PIXEL_BYTES", "decode_image", "decode_pixels", "encode_fits", "encode_png"]

MAX_PIXEL_BYTES = 1_000_000
GZIP_MAGIC = b"\x1f\x8b"


def encode_fits(array: NDArray[np.floating], header: dict[str, str | float] | None = None) -> bytes:
    """Encode a ``(h, w)`` or ``(h, w, bands)`` float array as a FITS primary HDU (bands first)."""
    from astropy.io import fits

    data = np.asarray(array, dtype=np.float32)
    if data.ndim == 3:
        data = np.moveaxis(data, -1, 0)
    hdu = fits.PrimaryHDU(data)
    for key, value in (header or {}).items():
        hdu.header[key] = value
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def encode_png(array: NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _decode_fits(data: bytes) -> NDArray[np.float32]:
    from astropy.io import fits

    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise BadImageError(f"corrupt gzip around FITS data: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                hdu = next((h for h in hdul if getattr(h, "data", None) is not None), None)
                if hdu is None:
                    raise BadImageError("FITS file has no image data")
                pixels = np.asarray(hdu.data, dtype=np.float32)
    except BadImageError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError for bad files
        raise BadImageError(f"undecodable FITS: {type(exc).__name__}: {exc}") from exc
    if pixels.ndim == 2:
        return pixels[:, :, None]
    if pixels.ndim == 3:
        return np.moveaxis(pixels, 0, -1)
    raise BadImageError(f"FITS image has {pixels.ndim} dimensions; expected 2 or 3")


def _decode_raster(data: bytes) -> NDArray[np.float32]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            array = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ImportError) as exc:
        # ImportError: ultralytics (imported by the detector) patches Image.open to load a
        # HEIF plugin for any file Pillow cannot identify, and that plugin is not installed
        raise BadImageError(f"undecodable image: {type(exc).__name__}: {exc}") from exc
    return array[:, :, None] if array.ndim == 2 else array


def decode_pixels(data: bytes | None, fmt: ImageFormat) -> NDArray[np.float32]:
    """Decode encoded pixels to ``(h, w, bands)`` float32; NaNs are kept for the caller."""
    if not data:
        raise BadImageError("image has no pixels")
    if len(data) > MAX_PIXEL_BYTES * 4:
        raise BadImageError(f"pixels are {len(data)} bytes; the limit is {MAX_PIXEL_BYTES}")
    array = _decode_fits(data) if fmt == "fits" else _decode_raster(data)
    if array.size == 0 or min(array.shape[:2]) < 2:
        raise BadImageError(f"empty or degenerate image of shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.any():
        raise BadImageError("image has no finite pixel values")
    return array


def decode_image(record: ImageRecord) -> NDArray[np.float32]:
    """Decode an ImageRecord's pixels and check them against its declared shape."""
    array = decode_pixels(record["pixels"], record["format"])
    h, w, b = array.shape
    if (h, w) != (record["height"], record["width"]):
        raise BadImageError(
            f"decoded {h}x{w} pixels but the record says {record['height']}x{record['width']}"
        )
    if b != record["bands"]:
        raise BadImageError(f"decoded {b} bands but the record says {record['bands']}")
    return array
