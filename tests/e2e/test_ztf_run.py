"""`skyloop run --source ztf:DIR` end to end on the shared real ZTF alert packets.

What is expected is computed here from the packet files alone (fastavro + astropy), not with
skyloop's reader: which packets are readable, which cutouts they carry (two packets carrying the
same cutout, e.g. one alert serialized in two schema versions, are one image, scored once), and
where each object is. The packets are read where they are ($SKYLOOP_ZTF_ALERTS_DIR, default
../shared/data/ztf-alerts from the repository root); the test skips where they are absent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import sys
import time
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fastavro
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from PIL import Image

from processors.core.clickhouse import connect
from tools.chaos.live import MARKER_VAR, processes_with

REPO_ROOT = Path(__file__).resolve().parents[2]
ZTF_ALERTS_ENV = "SKYLOOP_ZTF_ALERTS_DIR"
STAMPS = {
    "difference": ("cutoutDifference",),
    "science": ("cutoutScience",),
    "template": ("cutoutTemplate",),
    "triplet": ("cutoutScience", "cutoutTemplate", "cutoutDifference"),
}
RUN_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def alerts_dir() -> Path:
    path = Path(os.environ.get(ZTF_ALERTS_ENV) or REPO_ROOT.parent / "shared/data/ztf-alerts")
    if not path.is_dir() or not any(path.glob("*.avro")):
        pytest.skip(f"no ZTF alert packets at {path} (set ${ZTF_ALERTS_ENV} to their directory)")
    return path


@dataclass
class Expected:
    """What the packet folder holds, by fastavro and astropy alone."""

    packets: int = 0
    alerts: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # file name -> fastavro's error
    cutouts: set[tuple[str, ...]] = field(default_factory=set)  # distinct pixel contents
    candids: set[str] = field(default_factory=set)
    positions: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # objectId -> ra, dec


def _pixels_digest(stamp: dict[str, Any]) -> str:
    """A digest of a stamp's pixel values (gzip FITS, plain FITS, or JPEG in the oldest sims)."""
    data = stamp["stampData"]
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data[:3] == b"\xff\xd8\xff":
        pixels = np.asarray(Image.open(io.BytesIO(data)), dtype="<f4")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # old stamps bend the SIMPLE card
            with fits.open(io.BytesIO(data), ignore_missing_simple=True) as hdul:
                pixels = np.asarray(hdul[0].data, dtype="<f4")
    return hashlib.sha256(pixels.tobytes() + repr(pixels.shape).encode()).hexdigest()


def _expected(folder: Path, mode: str) -> Expected:
    out = Expected()
    positions: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in sorted(folder.glob("*.avro")):
        out.packets += 1
        try:
            with path.open("rb") as fh:
                alerts = [cast(dict[str, Any], alert) for alert in fastavro.reader(fh)]
        except Exception as exc:  # a packet fastavro cannot read is what we must dead-letter
            out.unreadable[path.name] = type(exc).__name__
            continue
        for alert in alerts:
            out.alerts += 1
            out.cutouts.add(tuple(_pixels_digest(alert[kind]) for kind in STAMPS[mode]))
            out.candids.add(str(alert.get("candid") or alert["candidate"]["candid"]))
            if alert.get("objectId"):
                cand = alert["candidate"]
                positions[alert["objectId"]].add((f"{cand['ra']:.5f}", f"{cand['dec']:.5f}"))
    out.positions = dict(positions)
    return out


def _env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({MARKER_VAR: marker, "HF_HUB_OFFLINE": "1"})
    return env


def _cli(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["difference", "triplet"])
def test_every_readable_packet_is_scored_once_and_reported(
    alerts_dir: Path, tmp_path: Path, mode: str
) -> None:
    expected = _expected(alerts_dir, mode)
    assert expected.unreadable and expected.cutouts, "the shared folder changed: review the test"
    spec = f"ztf:{alerts_dir}" + ("" if mode == "difference" else f"?cutout={mode}")
    marker = uuid.uuid4().hex
    data = tmp_path / "data"
    started = time.monotonic()
    done = _cli(
        "run", "--source", spec, "--data-dir", str(data), env=_env(marker), timeout=RUN_TIMEOUT_S
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert not processes_with(marker), "processes outlived skyloop run"

    # the summary names what the source read, published and failed
    assert (
        f"ztf: {expected.packets} packets, {expected.alerts} alerts read, "
        f"{expected.alerts} published ({len(expected.cutouts)} distinct images), 0 cut, "
        f"{len(expected.unreadable)} failed (UnreadablePacket {len(expected.unreadable)})"
    ) in done.stdout, done.stdout

    run_dir = Path((data / "latest").read_text().strip())
    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in client.query(sql).result_rows]

        # every readable packet's cutout scored exactly once by the production model
        (scored,) = rows(
            "SELECT count(), uniqExact(image_id), countIf(calibrated), countIf(is_candidate) "
            "FROM scores FINAL WHERE role = 'production'"
        )
        assert scored[:2] == (len(expected.cutouts), len(expected.cutouts))
        # fewer images than the reference window: scored uncalibrated, never candidates, and
        # the run did not wait for a calibration that cannot come
        assert scored[2:] == (0, 0)
        candids = rows(
            "SELECT DISTINCT i.provenance['candid'] FROM images AS i FINAL "
            "INNER JOIN (SELECT image_id FROM scores FINAL) AS s ON s.image_id = i.image_id"
        )
        assert {c for (c,) in candids} == expected.candids
        modes = rows("SELECT DISTINCT provenance['cutout'], bands FROM images FINAL")
        assert modes == [(mode, len(STAMPS[mode]))]

        # every unreadable packet dead-lettered by ingest, with its reason and bytes
        letters = rows(
            "SELECT key, error_class, message, length(raw) FROM dead_letters FINAL "
            "WHERE original_topic = 'source:ztf' AND processor = 'ingest' ORDER BY key"
        )
        assert [Path(key).name for key, *_ in letters] == sorted(expected.unreadable)
        for key, error_class, message, size in letters:
            assert error_class == "UnreadablePacket"
            assert "UnicodeDecodeError" in message or "schema" in message, message
            assert size == Path(key).stat().st_size
        assert rows("SELECT count() FROM dead_letters FINAL") == [(len(expected.unreadable),)]
    finally:
        client.close()

    # the report lists every ZTF object with its coordinates, and says why nothing is flagged
    report_path = Path(re.search(r"^report: (.+)$", done.stdout, re.M).group(1))  # type: ignore[union-attr]
    report = report_path.read_text()
    ztf_section = report.split("## ZTF objects", 1)[1].split("\n## ", 1)[0]
    listed = {
        line.split("|")[1].strip(): line for line in ztf_section.splitlines() if "| ZTF" in line
    }
    assert set(listed) == set(expected.positions)
    for object_id, line in listed.items():
        cells = [c.strip() for c in line.split("|")]
        assert (cells[3], cells[4]) in expected.positions[object_id], line
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d [+-]\d\d:\d\d:\d\d\.\d", cells[5]), line
    assert "calibrated=false" in ztf_section
    ingest_section = report.split("## Ingest", 1)[1].split("\n## ", 1)[0]
    assert re.search(
        rf"\| ztf \| {expected.packets} \| {expected.alerts} \| {expected.alerts} \| "
        rf"{len(expected.cutouts)} \| {len(expected.unreadable)} \| 0 \| "
        rf"{len(expected.unreadable)} \(UnreadablePacket {len(expected.unreadable)}\) \|",
        ingest_section,
    ), ingest_section
    assert seconds < RUN_TIMEOUT_S


def test_run_images_and_reference_size_are_checked_before_anything_starts(
    tmp_path: Path,
) -> None:
    env = _env(uuid.uuid4().hex)
    endless = _cli("run", "--images", "0", "--data-dir", str(tmp_path), env=env, timeout=60)
    assert endless.returncode == 2
    assert "these sources never end: synthetic, hubble; give --images N" in endless.stderr
    small = _cli("run", "--reference-size", "5", "--data-dir", str(tmp_path), env=env, timeout=60)
    assert small.returncode == 2 and "reference_size (SKYLOOP_REFERENCE_SIZE) = 5" in small.stderr
    assert not (tmp_path / "runs").exists()
