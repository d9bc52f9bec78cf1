"""The FITS reader without astropy gives astropy's array for the common case, and steps aside
(``None``) for everything else, so that astropy reads or refuses it as before."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import fastavro
import numpy as np
import pytest
from astropy.io import fits

from processors.core.exceptions import BadImageError, ImageTooLargeError
from processors.core.fits_primary import read_primary
from processors.core.imaging import decode_pixels, gunzip_bounded

LIMIT = 16_777_216


def _astropy(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the folder's corrupt cutouts (as the decoder does)
        with fits.open(io.BytesIO(data), memmap=False) as hdul:
            hdu = next(h for h in hdul if h.data is not None)
            return np.asarray(hdu.data, dtype=np.float32)


def _fits(*hdus: fits.hdu.base.ExtensionHDU | fits.PrimaryHDU) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(list(hdus)).writeto(buf)
    return buf.getvalue()


def _ztf_stamps() -> list[bytes]:
    root = Path(os.environ.get("SKYLOOP_ZTF_ALERTS_DIR", "../shared/data/ztf-alerts"))
    stamps = []
    for path in sorted(root.glob("*.avro")):
        try:
            with path.open("rb") as fh:
                for alert in fastavro.reader(fh):
                    for kind in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
                        cutout = alert.get(kind) or {}
                        if cutout.get("stampData"):
                            stamps.append(cutout["stampData"])
        except (ValueError, EOFError, OSError):
            continue  # the folder's malformed packets: their own tests
    return stamps


@pytest.mark.parametrize(
    "array",
    [
        np.arange(63 * 63, dtype=np.float32).reshape(63, 63) / 7 - 100,
        np.random.default_rng(1).normal(size=(3, 20, 30)).astype(np.float64),
        np.array([[np.nan, np.inf], [-np.inf, 1.5]], dtype=np.float32),
        np.arange(-600, 600, dtype=np.int16).reshape(30, 40),
        np.arange(12, dtype=np.int32).reshape(3, 4) * 100_000,
        np.arange(35, dtype=np.int64).reshape(5, 7) - 10**12,
        np.arange(200, dtype=np.uint8).reshape(10, 20),
    ],
    ids=["float32", "float64-3d", "non-finite", "int16", "int32", "int64", "uint8"],
)
def test_the_common_case_is_astropy_s_array(array: np.ndarray) -> None:
    data = _fits(fits.PrimaryHDU(array))
    pixels = read_primary(data, LIMIT)
    assert pixels is not None and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, _astropy(data))


def test_every_real_ztf_cutout_reads_as_astropy_reads_it() -> None:
    stamps = _ztf_stamps()
    if not stamps:
        pytest.skip("needs the shared ZTF alert packets ($SKYLOOP_ZTF_ALERTS_DIR)")
    read = refused = 0
    for stamp in stamps:
        data = gunzip_bounded(stamp) if stamp[:2] == b"\x1f\x8b" else stamp
        pixels = read_primary(data, LIMIT)
        try:
            expected = _astropy(data)
        except OSError:
            assert pixels is None, "read a cutout astropy cannot"
            refused += 1  # the folder's deliberately corrupt cutouts
            continue
        assert pixels is not None, "a ZTF cutout is the common case"
        np.testing.assert_array_equal(pixels, expected)
        read += 1
    assert read > refused > 0 and read + refused == len(stamps)


def _scaled_uint16() -> bytes:
    hdu = fits.PrimaryHDU(np.array([[0, 40_000], [65_535, 7]], dtype=np.uint16))
    return _fits(hdu)  # astropy writes BZERO = 32768


def _blank_int() -> bytes:
    hdu = fits.PrimaryHDU(np.array([[1, -1], [2, 3]], dtype=np.int16))
    hdu.header["BLANK"] = -1
    return _fits(hdu)


def _in_an_extension() -> bytes:
    return _fits(fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 5), dtype=np.float32)))


def _compressed() -> bytes:
    return _fits(fits.PrimaryHDU(), fits.CompImageHDU(np.ones((16, 16), dtype=np.float32)))


@pytest.mark.parametrize(
    "make",
    [_scaled_uint16, _blank_int, _in_an_extension, _compressed],
    ids=["bzero-uint16", "blank", "image-in-extension", "tile-compressed"],
)
def test_anything_else_is_left_to_astropy_which_reads_it(make: object) -> None:
    data = make()  # type: ignore[operator]
    assert read_primary(data, LIMIT) is None
    decoded = decode_pixels(data, "fits")
    np.testing.assert_array_equal(decoded[:, :, 0], _astropy(data))


def test_a_scaled_image_keeps_its_physical_values() -> None:
    decoded = decode_pixels(_scaled_uint16(), "fits")
    assert decoded[:, :, 0].tolist() == [[0.0, 40_000.0], [65_535.0, 7.0]]


def test_a_cut_short_or_endless_file_is_left_to_astropy_which_refuses_it() -> None:
    whole = _fits(fits.PrimaryHDU(np.ones((64, 64), dtype=np.float32)))
    cut = whole[: len(whole) - 2880]
    assert read_primary(cut, LIMIT) is None
    no_end = whole[:2880].replace(b"END" + b" " * 77, b"COMMENT" + b" " * 73)
    assert read_primary(no_end, LIMIT) is None
    with pytest.raises(BadImageError):
        decode_pixels(no_end, "fits")


def test_a_file_whose_first_card_is_not_simple_is_left_to_astropy() -> None:
    whole = _fits(fits.PrimaryHDU(np.ones((8, 8), dtype=np.float32)))
    swapped = whole[80:160] + whole[:80] + whole[160:]  # BITPIX first, SIMPLE second
    assert read_primary(whole, LIMIT) is not None
    assert read_primary(swapped, LIMIT) is None


def test_too_many_values_are_refused_from_the_header_as_before() -> None:
    data = _fits(fits.PrimaryHDU(np.zeros((40, 50), dtype=np.float32)))
    assert read_primary(data, 1_999) is None
    from processors.core import imaging

    before = imaging.max_pixels()
    imaging.set_max_pixels(1_999)
    try:
        with pytest.raises(ImageTooLargeError, match="2000 pixel values"):
            decode_pixels(data, "fits")
    finally:
        imaging.set_max_pixels(before)
