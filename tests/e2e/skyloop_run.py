"""Start ``skyloop run`` as a user would, in a process tree marked for the tests to find."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from tools.chaos.live import MARKER_VAR


def run_env(marker: str) -> dict[str, str]:
    """This environment without its ``SKYLOOP_`` settings, offline, marked with ``marker``
    (every process of the run inherits it: :func:`tools.chaos.live.processes_with`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({"HF_HUB_OFFLINE": "1", MARKER_VAR: marker})
    return env


def start_run(
    args: list[str], data: Path, env: dict[str, str], stderr: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``skyloop run ARGS --data-dir DATA`` in ``env`` (:func:`run_env`); its standard output
    discarded, its standard error to ``stderr``."""
    return subprocess.Popen(
        [sys.executable, "-m", "processors.cli", "run", *args, "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
