"""Start ``skyloop run`` as a user would, in a process tree marked for the tests to find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO


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
