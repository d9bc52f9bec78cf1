"""Encode and decode the pixels of an ImageRecord (FITS, PNG, JPEG) as float32 arrays.

Decoded arrays are ``float32`` of shape ``(height, width, bands)``. Decoding validates what the
scorer relies on and raises :class:`BadImageError` with the reason otherwise: undecodable bytes,
an empty image, non-finite values only, or a shape that disagrees with the record.

Decompression bombs: no decoder is let to allocate more than the process's pixel limit
(:func:`set_max_pixels`, the ``ingest.max_pixels`` setting, applied by ``skyloop worker`` in every
worker; :data:`DEFAULT_MAX_PIXELS` otherwise) allows. An image whose header declares more than
``max_pixels`` values (width x height x bands; every image HDU of a FITS file, a tile-compressed
one included) is refused from its header, before its data is read; gzip is inflated in bounded
steps and refused once it passes :func:`max_inflated_bytes`; Pillow's own
``DecompressionBombWarning`` and ``DecompressionBombError`` become :class:`ImageTooLargeError`.
The refusal is an :class:`ImageTooLargeError` (a ``BadImageError``), so every caller that
dead-letters a bad image dead-letters a bomb with its reason.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from typing import Any

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError, ImageTooLargeError
from processors.core.fits_primary import read_primary
from processors.core.records import ImageFormat, ImageRecord

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXEL_BYTES",
    "decode_image",
    "decode_pixels",
    "encode_fits",
    "encode_png",
    "gunzip_bounded",
    "max_inflated_bytes",
    "max_pixels",
    "open_raster",
    "set_max_pixels",
]

MAX_PIXEL_BYTES = 1_000_000
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_PIXELS = 16_777_216
"""Pixel values (width x height x bands) one decoded image may hold: 64 MiB as float32."""
_FITS_HEADER_ALLOWANCE = 1 << 20
_limits = {"max_pixels": DEFAULT_MAX_PIXELS}


def set_max_pixels(limit: int) -> None:
    """Set this process's pixel limit (``ingest.max_pixels``); every later decode obeys it."""
    if limit < 4:
        raise ValueError(f"max_pixels must be at least 4, not {limit}")
    _limits["max_pixels"] = int(limit)


def max_pixels() -> int:
    """This process's pixel limit: the most values (w x h x bands) one image may decode to."""
    return _limits["max_pixels"]


def max_inflated_bytes() -> int:
    """The most bytes gzip-compressed image data may inflate to: the pixel limit at 8 bytes a
    value (FITS ``BITPIX=-64``) plus 1 MiB of headers."""
    return max_pixels() * 8 + _FITS_HEADER_ALLOWANCE


def gunzip_bounded(data: bytes, limit: int | None = None) -> bytes:
    """Inflate gzip ``data`` (every member) in bounded steps; ImageTooLargeError past ``limit``
    bytes (default :func:`max_inflated_bytes`), BadImageError when the gzip is corrupt."""
    bound = max_inflated_bytes() if limit is None else limit
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            raw = stream.read(bound + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadImageError(f"corrupt gzip around FITS data: {exc}") from exc
    if len(raw) > bound:
        raise ImageTooLargeError(
            f"gzip-compressed image of {len(data)} bytes inflates to more than {bound} bytes "
            f"(a decompression bomb; ingest.max_pixels={max_pixels()})"
        )
    return raw


def _refuse_declared(values: int, what: str) -> None:
    if values > max_pixels():
        raise ImageTooLargeError(
            f"{what} declares {values} pixel values; the limit is {max_pixels()} "
            "(ingest.max_pixels): refused before decoding"
        )


def _declared_fits_values(hdu: Any) -> int:
    """Pixel values an image HDU declares in its header (its data not read); 0 for tables."""
    from astropy.io import fits

    if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        return 0
    header = hdu.header
    naxis = int(header.get("NAXIS", 0) or 0)
    values = 1 if naxis else 0
    for axis in range(1, naxis + 1):
        values *= max(int(header.get(f"NAXIS{axis}", 0) or 0), 0)
    return values


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
    if data[:2] == GZIP_MAGIC:
        data = gunzip_bounded(data)
    pixels = read_primary(data, max_pixels())  # the common case, without astropy
    if pixels is None:
        pixels = _decode_fits_astropy(data)
    if pixels.ndim == 2:
        return pixels[:, :, None]
    if pixels.ndim == 3:
        return np.moveaxis(pixels, 0, -1)
    raise BadImageError(f"FITS image has {pixels.ndim} dimensions; expected 2 or 3")


def _decode_fits_astropy(data: bytes) -> NDArray[np.float32]:
    """Any FITS file astropy reads: the first HDU with data, every image HDU's declared size
    checked against the pixel limit before its data is read."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False) as hdul:
                hdu = None
                for candidate in hdul:
                    _refuse_declared(_declared_fits_values(candidate), "FITS image HDU")
                    if getattr(candidate, "data", None) is not None:
                        hdu = candidate
                        break
                if hdu is None:
                    raise BadImageError("FITS file has no image data")
                pixels = np.asarray(hdu.data, dtype=np.float32)
    except BadImageError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError for bad files
        raise BadImageError(f"undecodable FITS: {type(exc).__name__}: {exc}") from exc
    return pixels


def open_raster(data: bytes, load: Any) -> Any:
    """Open ``data`` with Pillow, refuse it from its header when it declares more than the
    pixel limit (Pillow's own bomb warning and error included), then return ``load(image)``.

    Pillow reads only the header in ``Image.open``; ``load`` is what decodes the pixels.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                values = width * height * len(img.getbands())
                _refuse_declared(values, f"{img.format} image of {width}x{height}")
                return load(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(
            f"decompression bomb refused by Pillow before decoding: {exc}"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, ImportError) as exc:
        # ImportError: ultralytics (imported by the detector) patches Image.open to load a
        # HEIF plugin for any file Pillow cannot identify, and that plugin is not installed
        raise BadImageError(f"undecodable image: {type(exc).__name__}: {exc}") from exc


def _decode_raster(data: bytes) -> NDArray[np.float32]:
    def load(img: Any) -> NDArray[np.float32]:
        img.load()
        return np.asarray(img, dtype=np.float32)

    array: NDArray[np.float32] = open_raster(data, load)
    return array[:, :, None] if array.ndim == 2 else array


def decode_pixels(data: bytes | None, fmt: ImageFormat) -> NDArray[np.float32]:
    """Decode encoded pixels to ``(h, w, bands)`` float32; NaNs are kept for the caller.

    ImageTooLargeError (a BadImageError) for an image over the pixel limit, before decoding."""
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
