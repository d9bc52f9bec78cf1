"""`skyloop run --source dir:FOLDER` end to end on PNG and FITS cutouts written here; `skyloop
sql` then names every image's file, and the unreadable file, the decompression bomb and the
symlink leaving the folder are dead letters with their reasons."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processors.core.imaging import encode_png
from tests.core.test_imaging_limits import gzip_zeros_fits

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({"SKYLOOP_E2E_MARKER": uuid.uuid4().hex, "HF_HUB_OFFLINE": "1"})
    return env


def _skyloop(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _cutouts(root: Path) -> set[str]:
    """Six PNG and six FITS cutouts (two nights), one file that is not an image."""
    rng = np.random.default_rng(7)
    names = set()
    for i in range(6):
        name = f"night1/png_{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sky = rng.normal(40, 8, (64, 64, 3)).clip(0, 255).astype(np.uint8)
        (root / name).write_bytes(encode_png(sky))
        names.add(name)
        name = f"night2/fits_{i:02d}.fits"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        header = fits.Header()
        header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0 + i, CRVAL2=2.0)
        header.update(CRPIX1=32.5, CRPIX2=32.5, CDELT1=-2.8e-4, CDELT2=2.8e-4)
        fits.PrimaryHDU(rng.normal(100, 5, (64, 64)).astype("f4"), header).writeto(root / name)
        names.add(name)
    (root / "night2" / "truncated.fits").write_bytes((root / name).read_bytes()[:3000])
    # hostile entries: a decompression bomb, and a symlink to an image outside the folder
    (root / "night2" / "bomb.fits.gz").write_bytes(gzip_zeros_fits(6_000))
    outside = root.parent / "outside.png"
    outside.write_bytes(encode_png(rng.normal(40, 8, (64, 64, 3)).clip(0, 255).astype(np.uint8)))
    (root / "escape.png").symlink_to(outside)
    return names


def test_run_on_a_folder_names_every_file_in_sql(tmp_path: Path) -> None:
    folder = tmp_path / "my cutouts"
    names = _cutouts(folder)
    data = tmp_path / "data"
    done = _skyloop("run", "--source", f"dir:{folder}", "--data-dir", str(data), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dir: 15 files, 12 published (12 distinct images), 3 failed" in done.stdout, done.stdout

    def sql(query: str) -> list[list[str]]:
        out = _skyloop("sql", query, "--data-dir", str(data), "--format", "tsv", timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line.split("\t") for line in out.stdout.splitlines()[1:] if line]

    scored = sql(
        "SELECT i.provenance['path'], i.format, round(i.ra, 4) FROM images AS i FINAL "
        "INNER JOIN (SELECT image_id FROM scores FINAL WHERE role = 'production') AS s "
        "ON s.image_id = i.image_id ORDER BY 1"
    )
    assert {row[0] for row in scored} == names and len(scored) == len(names)
    for path, fmt, ra in scored:
        assert fmt == ("fits" if path.endswith(".fits") else "png")
        if fmt == "fits":
            assert float(ra) == 150.0 + int(path[-7:-5])
    letters = {
        row[0]: row[1:] for row in sql("SELECT key, error_class, message FROM dead_letters FINAL")
    }
    assert {key: row[0] for key, row in letters.items()} == {
        "night2/truncated.fits": "BadImageFile",
        "night2/bomb.fits.gz": "ImageTooLarge",
        "escape.png": "SymlinkOutsideFolder",
    }
    assert "FITS" in letters["night2/truncated.fits"][1]
    assert "inflates to more than" in letters["night2/bomb.fits.gz"][1]
    assert "leaves the watched folder" in letters["escape.png"][1]
