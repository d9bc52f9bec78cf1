"""Decompression bombs are refused before they are decoded (processors.core.imaging).

Every bomb here is real: a PNG or TIFF whose header declares a huge raster over a tiny body, a
FITS header that declares a huge image (plain, gzip-compressed, tile-compressed), and a gzip
FITS that inflates past the bound. Each must raise ImageTooLargeError with a reason that names
the limit, in far less memory than the declared image would take.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from processors.core.exceptions import BadImageError, ImageTooLargeError
from processors.core.imaging import (
    DEFAULT_MAX_PIXELS,
    decode_pixels,
    encode_fits,
    encode_png,
    gunzip_bounded,
    max_inflated_bytes,
    max_pixels,
    set_max_pixels,
)
from processors.ingest.files.decode import read_image_bytes
from processors.ingest.files.folder import FolderSource
from processors.ingest.sources.items import RawImage, SourceFailure


@pytest.fixture
def limit() -> Iterator[None]:
    """Restore the process's pixel limit after a test that changes it."""
    yield
    set_max_pixels(DEFAULT_MAX_PIXELS)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` grey pixels over one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _fits_header(naxis: tuple[int, ...], bitpix: int = -32) -> bytes:
    cards = ["SIMPLE  =                    T", f"BITPIX  = {bitpix:>20}"]
    cards.append(f"NAXIS   = {len(naxis):>20}")
    cards += [f"NAXIS{i + 1:<3}= {n:>20}" for i, n in enumerate(naxis)]
    cards.append("END")
    text = "".join(card.ljust(80) for card in cards)
    return text.ljust(-(-len(text) // 2880) * 2880).encode("ascii")


def gzip_zeros_fits(side: int) -> bytes:
    """A gzip FITS of ``side x side`` float32 zeros, compressed in chunks (never all in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [packer.compress(_fits_header((side, side)))]
    remaining = side * side * 4
    chunk = b"\x00" * (1 << 20)
    while remaining > 0:
        out.append(packer.compress(chunk[: min(remaining, len(chunk))]))
        remaining -= len(chunk)
    out.append(packer.flush())
    return b"".join(out)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_small_images_still_decode() -> None:
    png = encode_png(np.full((32, 32, 3), 7, np.uint8))
    assert decode_pixels(png, "png").shape == (32, 32, 3)
    fits_bytes = encode_fits(np.ones((16, 16), np.float32))
    assert decode_pixels(fits_bytes, "fits").shape == (16, 16, 1)
    assert max_pixels() == DEFAULT_MAX_PIXELS


def test_png_declaring_more_than_the_limit_is_refused_from_its_header() -> None:
    bomb = _png_header_only(5000, 5000)  # 25 M values: over ours, under Pillow's own bound
    assert len(bomb) < 200
    with pytest.raises(ImageTooLargeError, match=r"5000x5000 declares 25000000 pixel values"):
        decode_pixels(bomb, "png")


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's warning (> 89 M), error (> 179 M)
def test_pillow_bomb_warning_and_error_become_image_too_large(limit: None, side: int) -> None:
    set_max_pixels(1 << 31)  # let Pillow's own check be the one that fires
    with pytest.raises(ImageTooLargeError, match="decompression bomb refused by Pillow"):
        decode_pixels(_png_header_only(side, side), "png")


def test_tiff_over_the_limit_is_refused_by_the_file_decoder(limit: None) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint16)).save(buf, format="TIFF")
    assert read_image_bytes(buf.getvalue()).width == 64
    set_max_pixels(64 * 64 - 1)
    with pytest.raises(ImageTooLargeError, match="TIFF image of 64x64 declares 4096"):
        read_image_bytes(buf.getvalue())


def test_fits_header_declaring_a_huge_image_is_refused_before_its_data() -> None:
    bomb = _fits_header((100_000, 100_000)) + b"\x00" * 2880  # 40 GB declared, 5 KB given
    with pytest.raises(ImageTooLargeError, match="FITS image HDU declares 10000000000"):
        decode_pixels(bomb, "fits")
    cube = _fits_header((3000, 3000, 3)) + b"\x00" * 2880
    with pytest.raises(ImageTooLargeError, match="declares 27000000"):
        read_image_bytes(cube)


def test_tile_compressed_fits_is_refused_from_its_image_header(limit: None) -> None:
    buf = io.BytesIO()
    hdus = [fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((300, 400), np.float32))]
    fits.HDUList(hdus).writeto(buf)
    assert decode_pixels(buf.getvalue(), "fits").shape == (300, 400, 1)
    set_max_pixels(300 * 400 - 1)
    with pytest.raises(ImageTooLargeError, match="declares 120000 pixel values"):
        decode_pixels(buf.getvalue(), "fits")


def test_gzip_fits_inflating_past_the_bound_is_refused_in_bounded_memory() -> None:
    side = 6_000  # 144 MB of float32 zeros; the bound is 8 bytes x 16.7 M values + 1 MiB
    bomb = gzip_zeros_fits(side)
    assert len(bomb) < 400_000 and side * side * 4 > max_inflated_bytes()
    before = _peak_rss_mb()
    with pytest.raises(ImageTooLargeError, match="inflates to more than"):
        decode_pixels(bomb, "fits")
    with pytest.raises(ImageTooLargeError, match="inflates to more than"):
        read_image_bytes(bomb)
    # the bounded read holds at most the bound (~135 MB) once, never the whole inflated bomb
    assert _peak_rss_mb() - before < 300


def test_gzip_bound_is_exact_and_corrupt_gzip_stays_a_bad_image() -> None:
    packed = zlib.compress(b"x" * 1000, wbits=31)
    assert gunzip_bounded(packed, limit=1000) == b"x" * 1000
    with pytest.raises(ImageTooLargeError, match="more than 999 bytes"):
        gunzip_bounded(packed, limit=999)
    with pytest.raises(BadImageError, match="corrupt gzip") as err:
        gunzip_bounded(packed[:20] + b"\xff" * 20)
    assert not isinstance(err.value, ImageTooLargeError)


def test_the_setting_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        set_max_pixels(0)


def test_a_bomb_in_a_folder_is_a_failure_with_its_reason_and_the_rest_still_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "ok.png").write_bytes(encode_png(np.full((20, 20), 9, np.uint8)))
    (tmp_path / "bomb.png").write_bytes(_png_header_only(5000, 5000))
    (tmp_path / "bomb.fits.gz").write_bytes(gzip_zeros_fits(6_000))
    items = {
        (item.key if isinstance(item, SourceFailure) else item.provenance["path"]): item
        for item in FolderSource(tmp_path)
    }
    assert isinstance(items["ok.png"], RawImage)
    for name in ("bomb.png", "bomb.fits.gz"):
        failure = items[name]
        assert isinstance(failure, SourceFailure)
        assert failure.error_class == "ImageTooLarge"
        assert "ingest.max_pixels" in failure.message
