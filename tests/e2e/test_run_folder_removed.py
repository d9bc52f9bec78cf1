"""A run whose folder is deleted under it stops, says why, and leaves no process behind.

Before, ``skyloop run`` waited for progress files that could no longer appear until its
timeout (an hour past the run's duration), with the broker and every worker alive.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from processors.core.progress import read_progress
from processors.local import latest_run_dir
from tests.e2e.skyloop_run import start_run
from tools.chaos.live import marked_env, processes_with

pytestmark = pytest.mark.e2e


def _wait_for_a_score(run: subprocess.Popen[bytes], data: Path) -> Path:
    """The run folder, once its scorer has scored an image."""
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        run_dir = latest_run_dir(data)
        if run_dir is not None and read_progress(run_dir / "progress", "score").get("scored", 0):
            return run_dir
        time.sleep(0.1)
    raise AssertionError(f"no image scored (run exit code {run.poll()})")


def test_a_deleted_run_folder_stops_the_run_with_a_reason(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = marked_env(marker)
    data = tmp_path / "data"
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        run = start_run(["--duration", "600"], data, env, err)
        try:
            run_dir = _wait_for_a_score(run, data)
            # processes keep writing into it: move it away at once, then delete what is there
            gone = run_dir.rename(tmp_path / "deleted")
            shutil.rmtree(gone, ignore_errors=True)
            returncode = run.wait(timeout=120)
        finally:
            run.kill()
    message = stderr.read_text()
    assert returncode != 0
    assert f"the run folder {run_dir} was removed" in message, message[-2000:]
    deadline = time.monotonic() + 30
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == []
