"""`skyloop run` end to end through the embedded broker and chdb, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.progress import read_progress
from tests.e2e.skyloop_run import run_to_end
from tools.chaos.live import MARKER_VAR, processes_with

pytestmark = pytest.mark.e2e

IMAGES = 160


def _env(marker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({MARKER_VAR: marker, "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def _skyloop(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "processors.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def test_run_passes_every_image_through_every_stage(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = _env(marker, SKYLOOP_REFERENCE_SIZE="30", SKYLOOP_BATCH_SIZE="16")
    data = tmp_path / "data"
    stdout = run_to_end(["--images", str(IMAGES)], data, env, marker)
    report_path = Path(re.search(r"^report: (.+)$", stdout, re.M).group(1))  # type: ignore[union-attr]
    run_dir = Path((data / "latest").read_text().strip())

    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        assert one("SELECT count() FROM images FINAL") == IMAGES
        assert one("SELECT uniqExact(source) FROM images FINAL") == 2
        assert one("SELECT count() FROM scores FINAL WHERE role = 'production'") == IMAGES
        # every image scored exactly once (no duplicates even before FINAL here)
        assert one("SELECT count() FROM scores") == IMAGES
        candidates = one("SELECT count() FROM scores FINAL WHERE is_candidate")
        assert one("SELECT count() FROM candidates FINAL") == candidates
        assert one("SELECT count() FROM dead_letters FINAL") == 0
        # each source filled its 30-image window and was calibrated from it first ("initial"),
        # then refined on a window twice as large while it stayed stable
        calibrations = client.query(
            "SELECT subject, groupArray(reason) FROM "
            "(SELECT subject, reason FROM control_events FINAL "
            " WHERE type = 'calibration.updated' ORDER BY kafka_offset) GROUP BY subject"
        ).result_rows
        assert len(calibrations) == 2
        for _subject, reasons in calibrations:
            assert reasons[0] == "initial" and set(reasons[1:]) <= {"refine", "drift"}
        total_calibrations = sum(len(reasons) for _s, reasons in calibrations)
        calibrated = one("SELECT count() FROM scores FINAL WHERE calibrated")
        assert 0 < calibrated <= IMAGES - 2 * 30
        # uncalibrated images are never candidates; calibrated ones carry the thresholds used
        assert one("SELECT count() FROM scores FINAL WHERE is_candidate AND NOT calibrated") == 0
        assert one("SELECT min(length(thresholds)) FROM scores FINAL WHERE calibrated") == 3
        assert one("SELECT min(control_offset) FROM scores FINAL WHERE calibrated") >= 0
    finally:
        client.close()

    report = report_path.read_text()
    assert f"| Images scored (production) | {IMAGES} | {IMAGES} |" in report
    assert f"| Candidates (detector output) | {candidates} | {candidates} |" in report
    # the user's query tools answer from the same data
    env_q = _env(marker)
    out = _skyloop(
        "sql", "SELECT count() FROM scores", "--data-dir", str(data), "--format", "tsv", env=env_q
    )
    assert out.splitlines()[1] == str(IMAGES)
    events = _skyloop("events", "--data-dir", str(data), env=env_q)
    assert events.count("calibration.updated") == total_calibrations


def test_ctrl_c_drains_what_was_ingested_reports_and_stops_every_process(
    tmp_path: Path,
) -> None:
    marker = uuid.uuid4().hex
    data = tmp_path / "data"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "processors.cli",
                "run",
                "--images",
                "100000",
                "--data-dir",
                str(data),
            ],
            # a short ingest lead keeps the drain after Ctrl-C short
            env=_env(marker, SKYLOOP_REFERENCE_SIZE="20", SKYLOOP_INGEST_MAX_LAG="200"),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, stderr_path.read_text()[-3000:]
            latest = data / "latest"
            if latest.is_file():
                progress = Path(latest.read_text().strip()) / "progress"
                if read_progress(progress, "sink").get("scores", 0) >= 20:
                    break
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.5)
        assert len(processes_with(marker)) >= 6  # skyloop, broker, 4 workers, ingest
        signals = [
            line.strip()
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
        ]
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 240 s after SIGINT; {signals}\n{stderr_path.read_text()[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    err = stderr_path.read_text()
    assert proc.returncode == 130, f"{signals}\n{err[-3000:]}"
    assert "stopping ingestion" in err and "interrupted" in err
    # what was ingested went through every stage, and the run still reported
    report = Path(re.search(r"^report: (.+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert report.is_file()
    ingest = read_progress(progress, "ingest")
    sink = read_progress(progress, "sink")
    assert ingest["done"] and sink["images"] == ingest["images"] > 0
    assert sink["scores"] == sink["images"]
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_with(marker), "stray processes after Ctrl-C"
    out = _skyloop(
        "sql",
        "SELECT count() FROM images FINAL",
        "--data-dir",
        str(data),
        "--format",
        "tsv",
        env=_env(uuid.uuid4().hex),
    )
    assert int(out.splitlines()[1]) >= 20
