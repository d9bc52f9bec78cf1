"""The ``dir:`` source on real files written here: FITS with and without WCS, PNG, JPEG, TIFF,
and files that are not images. Expected values come from how the files were written."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from processors.core.exceptions import ConfigError
from processors.core.imaging import decode_pixels
from processors.ingest.files.folder import FolderSource
from processors.ingest.sources import source_from_spec
from processors.ingest.sources.items import RawImage, SourceFailure, SourceItem, image_id_for


def _wcs_fits(path: Path, ra: float, dec: float, size: int = 24) -> None:
    header = fits.Header()
    header.update(
        CTYPE1="RA---TAN",
        CTYPE2="DEC--TAN",
        CRVAL1=ra,
        CRVAL2=dec,
        CUNIT1="deg",
        CUNIT2="deg",
        CRPIX1=(size + 1) / 2,
        CRPIX2=(size + 1) / 2,
        CDELT1=-1e-4,
        CDELT2=1e-4,
    )
    header["DATE-OBS"] = "2021-03-04T05:06:07"
    rng = np.random.default_rng(1)
    fits.PrimaryHDU(rng.normal(size=(size, size)).astype("f4"), header=header).writeto(path)


def _raster(path: Path, mode: str, fmt: str) -> None:
    rng = np.random.default_rng(len(path.name))
    shape = (20, 20, 3) if mode == "RGB" else (20, 20)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "cutouts"
    (root / "night2").mkdir(parents=True)
    _wcs_fits(root / "night2" / "m31.fits", 10.6847, 41.2690)
    fits.PrimaryHDU(np.arange(400, dtype="f4").reshape(20, 20)).writeto(root / "plain.fits")
    _raster(root / "a.png", "RGB", "PNG")
    _raster(root / "b.jpg", "L", "JPEG")
    wide = (np.random.default_rng(3).random((20, 20)) * 60000).astype(np.uint16)
    Image.fromarray(wide).save(root / "deep.tiff")
    (root / "broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    (root / "page.png").write_bytes(b"<html><body>503</body></html>")
    (root / ".partial.png").write_bytes(b"ignored")
    (root / "notes.txt").write_text("not an image")
    return root


def _items(source: FolderSource) -> list[SourceItem]:
    return list(source)


def test_every_file_is_one_item_in_path_order_with_its_relative_path(folder: Path) -> None:
    items = _items(FolderSource(folder))
    keys = [i.provenance["path"] if isinstance(i, RawImage) else i.key for i in items]
    assert keys == [
        "a.png",
        "b.jpg",
        "broken.fits",
        "deep.tiff",
        "night2/m31.fits",
        "page.png",
        "plain.fits",
    ]
    images = {i.provenance["path"]: i for i in items if isinstance(i, RawImage)}
    failures = {i.key: i for i in items if isinstance(i, SourceFailure)}
    assert set(failures) == {"broken.fits", "page.png"}
    assert failures["page.png"].raw == (folder / "page.png").read_bytes()
    assert "not a FITS, PNG, JPEG or TIFF" in failures["page.png"].message
    assert "FITS" in failures["broken.fits"].message
    # pass-through formats keep the file's bytes, so the id is the file's content hash
    for name in ("a.png", "b.jpg", "night2/m31.fits", "plain.fits"):
        assert images[name].pixels == (folder / name).read_bytes()
        assert image_id_for("dir", images[name].pixels) == image_id_for(
            "dir", (folder / name).read_bytes()
        )
    assert (images["a.png"].bands, images["b.jpg"].bands, images["plain.fits"].bands) == (3, 1, 1)
    m31 = images["night2/m31.fits"]
    assert m31.ra == pytest.approx(10.6847, abs=1e-6) and m31.dec == pytest.approx(
        41.2690, abs=1e-6
    )
    assert m31.observed_at.isoformat() == "2021-03-04T05:06:07+00:00"
    assert images["plain.fits"].ra is None and images["a.png"].dec is None
    # 16-bit TIFF becomes a lossless float FITS of the same values
    deep = images["deep.tiff"]
    assert (deep.format, deep.provenance["format"]) == ("fits", "tiff")
    wide = np.asarray(Image.open(folder / "deep.tiff"), dtype=np.float32)
    np.testing.assert_array_equal(decode_pixels(deep.pixels, "fits")[:, :, 0], wide)
    for image in images.values():
        assert decode_pixels(image.pixels, image.format).shape == (
            image.height,
            image.width,
            image.bands,
        )


def test_counters_account_for_every_file(folder: Path) -> None:
    source = FolderSource(folder)
    _items(source)
    stats = source.stats.snapshot()
    assert stats["files"] == 7 and stats["yielded"] == 5 and stats["failed"] == 2
    assert stats["failed.BadImageFile"] == 2


def test_glob_paths_are_relative_to_the_folder_above_the_wildcard(folder: Path) -> None:
    source = source_from_spec(f"dir:{folder}/*/*.fits?name=mine&survey=m31-field")
    (image,) = _items(source)  # type: ignore[arg-type]
    assert isinstance(image, RawImage)
    assert (image.source, image.survey, image.provenance["path"]) == (
        "mine",
        "m31-field",
        "night2/m31.fits",
    )


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'size'"):
        source_from_spec(f"dir:{tmp_path}?size=3")
    with pytest.raises(ConfigError, match="watch='maybe'"):
        source_from_spec(f"dir:{tmp_path}?watch=maybe")
    with pytest.raises(ConfigError, match="does not exist"):
        source_from_spec(f"dir:{tmp_path}/absent")


def test_watch_mode_picks_up_new_files_once_they_settle(tmp_path: Path) -> None:
    stop = threading.Event()
    source = source_from_spec(f"dir:{tmp_path}?watch=1&poll_interval_s=0.05", stop=stop)
    _raster(tmp_path / "first.png", "L", "PNG")
    seen: list[str] = []

    def consume(items: Iterator[SourceItem]) -> None:
        for item in items:
            assert isinstance(item, RawImage)
            seen.append(item.provenance["path"])
            if len(seen) == 2:
                stop.set()

    worker = threading.Thread(target=consume, args=(iter(source),))
    worker.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    _raster(tmp_path / "second.png", "L", "PNG")
    worker.join(timeout=10)
    stop.set()
    assert not worker.is_alive()
    assert seen == ["first.png", "second.png"]
