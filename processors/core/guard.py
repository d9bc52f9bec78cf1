"""``python -m processors.core.guard PARENT_PID PROGRAM [ARGS...]``: run PROGRAM, tied to PARENT.

Asks Linux (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to send SIGTERM when the process that started
it dies, then becomes PROGRAM (``execvp``; the request survives it). If the parent is already
gone (its pid is no longer our parent), exits at once instead. The supervisor and the embedded
broker start their children through it, so a supervisor killed with SIGKILL, which cannot stop
them itself, leaves nothing behind. Done here rather than in ``preexec_fn``, which is unsafe in
a process with threads. Elsewhere than Linux the request is skipped and PROGRAM runs as is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print(
            "usage: python -m processors.core.guard PARENT_PID PROGRAM [ARGS...]", file=sys.stderr
        )
        return 2
    parent, program = int(argv[0]), argv[1:]
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before the request took effect
        return 1
    os.execvp(program[0], program)
    return 127  # not reached: execvp replaced this process or raised


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
