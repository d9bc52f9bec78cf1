"""Runs processors as child OS processes and stops them cleanly.

Each child runs ``python -m processors.cli worker NAME`` with its output in ``logs/NAME.log``,
in a session of its own: a terminal's Ctrl-C reaches the supervisor only, which decides the
order of the shutdown. Each child also gets SIGTERM from the kernel if the supervisor dies, even
by SIGKILL (:mod:`processors.core.guard`). :meth:`Supervisor.stop_all` sends SIGTERM, waits,
then SIGKILLs stragglers, so no child outlives the supervisor (also when it is interrupted: use
it as a context manager).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["Child", "Supervisor", "guarded", "terminate"]


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run through :mod:`processors.core.guard`: it dies with the process starting it."""
    return [sys.executable, "-m", "processors.core.guard", str(os.getpid()), *argv]


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL it; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Supervisor:
    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.children: dict[str, Child] = {}

    def start(self, name: str, *args: str) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                guarded([sys.executable, "-m", "processors.cli", "worker", *args]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children[name] = child
        return child

    def failed(self) -> list[Child]:
        """Children that exited with a non-zero code."""
        return [c for c in self.children.values() if c.proc.poll() not in (None, 0)]

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        child = self.children.get(name)
        return None if child is None else terminate(child.proc, timeout_s)

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every live child, wait up to ``timeout_s`` in total, then SIGKILL the rest."""
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in self.children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
