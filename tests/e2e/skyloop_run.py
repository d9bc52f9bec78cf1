"""Start ``skyloop run`` as a user would, in a process tree marked for the tests to find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO


def run_to_end(args: list[str], data: Path, env: dict[str, str], marker: str) -> str:
    """``skyloop run ARGS --data-dir DATA`` in ``env`` (marked ``marker``), to its end: checks
    that it exits 0 and leaves no process behind; returns its standard output."""
    from tools.chaos.live import processes_with

    done = subprocess.run(
        [sys.executable, "-m", "processors.cli", "run", *args, "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not processes_with(marker), "processes outlived skyloop run"
    return done.stdout


def start_run(
    args: list[str], data: Path, env: dict[str, str], stderr: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``skyloop run ARGS --data-dir DATA`` in ``env`` (:func:`tools.chaos.live.marked_env`);
    its standard output discarded, its standard error to ``stderr``."""
    return subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "run", *args, "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
