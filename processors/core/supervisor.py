"""Runs processors as child OS processes, restarts those that die, and stops them cleanly.

Each child runs ``python -m processors.cli worker NAME`` with its output appended to
``logs/NAME.log``, in a session of its own: a terminal's Ctrl-C reaches the supervisor only,
which decides the order of the shutdown. Each child also gets SIGTERM from the kernel if the
supervisor dies, even by SIGKILL (:mod:`processors.core.guard`). :meth:`Supervisor.stop_all`
sends SIGTERM, waits, then SIGKILLs stragglers, so no child outlives the supervisor (also when
it is interrupted: use it as a context manager).

Self-healing: :meth:`Supervisor.heal` restarts a child that exited non-zero (a crash, an
uncaught error, ``kill -9``) with the same arguments, after a back-off that doubles with each
restart of that child (:class:`RestartPolicy`). A restarted processor resumes from its consumer
group's committed offsets and rebuilds its state from ``control.events`` (ARCHITECTURE.md,
"Event model"), so nothing is lost; what it redoes is absorbed by idempotent keys
(ARCHITECTURE.md, "Guarantees"). A child that exits 0 finished its job and is left alone, as is
one stopped through :meth:`stop`. Past the bound
on restarts in a window, :meth:`heal` raises :class:`ProcessorFailed` and the run ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

from processors.core.exceptions import SkyloopError

__all__ = [
    "RESTART_EXIT",
    "Child",
    "ProcessorFailed",
    "RestartPolicy",
    "Supervisor",
    "guarded",
    "interrupt_on_sigterm",
    "terminate",
]


RESTART_EXIT = "SKYLOOP_RESTART_EXIT"
"""Set for a restarted child: its predecessor's exit code (negative: the signal, -9 SIGKILL)."""


class ProcessorFailed(SkyloopError):
    """A processor died more often than the restart policy allows; the message has its log."""


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


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead processor: back-off doubling per restart, a bound per window.

    The n-th restart (n = 1, 2, ...) of a child within ``window_s`` waits
    ``min(base_s * 2 ** (n - 1), max_s)``; a death past ``max_restarts`` in the window gives up.

    >>> policy = RestartPolicy(max_restarts=3, base_s=0.5, max_s=2.0, window_s=60.0)
    >>> [policy.delay([0.0] * n, now=1.0) for n in range(4)]
    [0.5, 1.0, 2.0, None]
    >>> policy.delay([0.0, 0.0, 0.0], now=100.0)  # the earlier restarts left the window
    0.5
    """

    max_restarts: int = 5
    base_s: float = 0.5
    max_s: float = 10.0
    window_s: float = 300.0

    def delay(self, restarts_at: list[float], now: float) -> float | None:
        """Seconds to wait before restarting, given earlier restart times; None: give up."""
        recent = [t for t in restarts_at if now - t < self.window_s]
        if len(recent) >= self.max_restarts:
            return None
        return float(min(self.base_s * 2 ** len(recent), self.max_s))


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    args: tuple[str, ...] = ()
    restarts_at: list[float] = field(default_factory=list)
    restart_due: float | None = None
    """When a scheduled restart is due (monotonic), None when none is scheduled."""
    stopped: bool = False
    """Stopped on purpose: never restarted."""
    restart: bool = True
    """False for a child whose death must end the run (it cannot resume where it was)."""
    env: dict[str, str] = field(default_factory=dict)
    """This child's own environment on top of the supervisor's (kept across restarts)."""
    recycled: int = 0
    """Times it was stopped and started again on purpose (:meth:`Supervisor.recycle`)."""

    @property
    def restarts(self) -> int:
        return len(self.restarts_at)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Supervisor:
    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        policy: RestartPolicy | None = None,
        on_restart: Callable[[Child], None] | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.env = env
        self.policy = policy or RestartPolicy()
        self.on_restart = on_restart
        self.children: dict[str, Child] = {}

    def _spawn(
        self,
        name: str,
        args: tuple[str, ...],
        env: dict[str, str] | None = None,
        last_exit: int | None = None,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start the child; a restarted one learns how its predecessor ended (its exit code,
        negative for a signal) in ``SKYLOOP_RESTART_EXIT``, for its quarantine's dead letters."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        restart = {} if last_exit is None else {RESTART_EXIT: str(last_exit)}
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                guarded([sys.executable, "-m", "processors.cli", "worker", *args]),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, **(env or {}), **restart},
                start_new_session=True,
            )
        return proc, log_path

    def start(
        self, name: str, *args: str, restart: bool = True, env: dict[str, str] | None = None
    ) -> Child:
        proc, log_path = self._spawn(name, args, env)
        child = Child(name, proc, log_path, tuple(args), restart=restart, env=dict(env or {}))
        self.children[name] = child
        return child

    def failed(self) -> list[Child]:
        """Children that exited with a non-zero code (and were not stopped on purpose)."""
        return [
            c for c in self.children.values() if not c.stopped and c.proc.poll() not in (None, 0)
        ]

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per child name, for the run summary (children never restarted omitted)."""
        return {c.name: c.restarts for c in self.children.values() if c.restarts}

    def heal(self, now: float | None = None) -> list[Child]:
        """Schedule a restart of each newly dead child, and restart those whose back-off is over.

        Returns the children restarted by this call. Raises :class:`ProcessorFailed` for a
        child that died more often than :attr:`policy` allows (its log tail in the message).
        """
        now = time.monotonic() if now is None else now
        restarted = []
        for child in self.failed():
            if child.restart_due is None:
                delay = self.policy.delay(child.restarts_at, now) if child.restart else None
                if delay is None:
                    why = (
                        f"after {child.restarts} restarts within {self.policy.window_s:.0f}s"
                        if child.restart
                        else "(not restartable)"
                    )
                    raise ProcessorFailed(
                        f"processor {child.name} exited with code {child.proc.returncode} "
                        f"{why}; last lines of {child.log_path}:\n{child.tail()}"
                    )
                child.restart_due = now + delay
                with open(child.log_path, "ab") as log:
                    log.write(
                        f"\n--- supervisor: {child.name} exited with code "
                        f"{child.proc.returncode}; restarting in {delay:.1f}s ---\n".encode()
                    )
            if child.restart_due is not None and now >= child.restart_due:
                child.proc, child.log_path = self._spawn(
                    child.name, child.args, child.env, child.proc.returncode
                )
                child.restarts_at.append(now)
                child.restart_due = None
                restarted.append(child)
                if self.on_restart is not None:
                    self.on_restart(child)
        return restarted

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        child = self.children.get(name)
        if child is None:
            return None
        child.stopped = True
        return terminate(child.proc, timeout_s)

    def recycle(
        self, name: str, between: Callable[[], None] | None = None, timeout_s: float = 20.0
    ) -> Child:
        """Stop a child on purpose, run ``between``, and start it again with the same arguments
        (not a restart: no back-off, and the restart bound does not count it)."""
        child = self.children[name]
        terminate(child.proc, timeout_s)
        if between is not None:
            between()
        child.proc, child.log_path = self._spawn(child.name, child.args, child.env)
        child.recycled += 1
        return child

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every live child, wait up to ``timeout_s`` in total, then SIGKILL the rest."""
        for child in self.children.values():
            child.stopped = True
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


def interrupt_on_sigterm() -> None:
    """SIGINT and SIGTERM unwind as KeyboardInterrupt, so the run drains and cleans up.

    Both are (re)installed and unblocked explicitly: a process may inherit SIGINT ignored or
    blocked from whatever started it (a shell's background job, a parent's thread mask), and
    then the first Ctrl-C would do nothing.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
