"""Faults during `skyloop run`: a processor killed with SIGKILL is restarted, nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.progress import read_progress
from tests.e2e.test_pipeline import _env, _processes_with

pytestmark = pytest.mark.e2e

IMAGES = 200


def worker_pid(marker: str, name: str) -> int | None:
    """The pid of the live ``skyloop worker NAME`` of the run marked ``marker``."""
    needle = f"worker\0{name}\0".encode()
    for pid in _processes_with(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() + b"\0"
        except FileNotFoundError:
            continue
        if needle in cmdline and b"processors.core.guard" not in cmdline:
            return pid
    return None


def _wait(predicate: object, timeout_s: float, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"skyloop run ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_kill_9_of_the_scorer_mid_run_is_healed_and_loses_nothing(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = _env(marker, SKYLOOP_REFERENCE_SIZE="30", SKYLOOP_BATCH_SIZE="16")
    data = tmp_path / "data"
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "processors.cli",
            "run",
            "--images",
            str(IMAGES),
            "--data-dir",
            str(data),
        ],
        env=env,
        stdout=out,
        stderr=err,
        text=True,
    )
    try:
        _wait(lambda: (data / "latest").is_file(), 60, "the run folder", proc)
        run_dir = Path((data / "latest").read_text().strip())
        progress = run_dir / "progress"
        # mid-stream: past the calibration windows, well before the end
        _wait(lambda: read_progress(progress, "score").get("scored", 0) >= 64, 400, "64", proc)
        pid = worker_pid(marker, "score")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        err.close()
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "restarts: score 1" in stdout
    assert "restarted score" in stderr
    assert not _processes_with(marker), "processes outlived skyloop run"

    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        assert one("SELECT count() FROM images FINAL") == IMAGES
        # every image has exactly one production score under FINAL: none lost, none twice
        production = "SELECT image_id FROM scores FINAL WHERE role = 'production'"
        assert one(f"SELECT count() FROM ({production})") == IMAGES
        assert one(f"SELECT uniqExact(image_id) FROM ({production})") == IMAGES
        assert one(f"SELECT count() FROM images WHERE image_id NOT IN ({production})") == 0
        assert one("SELECT count() FROM dead_letters FINAL") == 0
        candidates = one("SELECT count() FROM scores FINAL WHERE is_candidate")
        assert one("SELECT count() FROM candidates FINAL") == candidates
    finally:
        client.close()
    log = (run_dir / "logs" / "score.log").read_text()
    assert "exited with code -9; restarting" in log
    assert json.loads((run_dir / "progress" / "score.json").read_text())["ready"] is True
