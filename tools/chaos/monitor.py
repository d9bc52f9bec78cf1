"""Disruption windows of a run, as observed: every change of a worker's process, and the faults.

A :class:`Monitor` samples the pids of a run's workers (and its broker) every 0.2 s. When a
worker's pid changes or vanishes (killed by a fault, crashed, or restarted by the supervisor
after a failed commit), it records a :class:`~tools.chaos.checker.Window` from the last moment
the old process was seen alive until the new one is seen, plus :data:`GRACE_S`. Scenarios add
the windows that no pid shows (a SIGSTOP pause, a scorer joining or leaving the group) with
:meth:`Monitor.add`. The checker explains redelivered copies with these windows only: a copy
that no window explains is a duplicate (:mod:`tools.chaos.checker`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tools.chaos.checker import Window

__all__ = ["GRACE_S", "Monitor"]

GRACE_S = 30.0
"""How long after a disruption a worker may still produce the copies it causes (a restarted
processor joins its group and redoes its uncommitted batch within seconds)."""


class Monitor:
    def __init__(self, pids: Callable[[], dict[str, int | None]], period_s: float = 0.2) -> None:
        self._pids = pids
        self._period_s = period_s
        self._lock = threading.Lock()
        self._windows: list[Window] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self.restarts: dict[str, int] = {}

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> list[Window]:
        self._stop.set()
        self._thread.join(5)
        return self.windows()

    def add(self, worker: str, start: float, end: float, what: str) -> None:
        """A disruption the pids do not show (``end`` without the grace)."""
        with self._lock:
            self._windows.append(Window(worker, start, end + GRACE_S, what))

    def windows(self) -> list[Window]:
        with self._lock:
            return list(self._windows)

    def _run(self) -> None:
        last: dict[str, tuple[int, float]] = {}  # worker -> (pid, last seen alive)
        gone: dict[str, float] = {}  # worker -> when its old process was last seen
        while not self._stop.is_set():
            now = time.time()
            for worker, pid in self._pids().items():
                before = last.get(worker)
                if pid is None:
                    if before is not None and worker not in gone:
                        gone[worker] = before[1]
                    continue
                if before is not None and before[0] != pid:
                    start = gone.pop(worker, before[1])
                    self.add(worker, start, now, f"{worker} pid {before[0]} -> {pid}")
                    self.restarts[worker] = self.restarts.get(worker, 0) + 1
                elif worker in gone:
                    # seen again with the same pid (a sample raced the process table)
                    gone.pop(worker)
                last[worker] = (pid, now)
            self._stop.wait(self._period_s)
