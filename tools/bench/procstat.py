"""What the pipeline's processes cost, read from ``/proc`` (Linux): CPU seconds and RSS.

:class:`CpuSampler` follows every descendant of a process (the workers of ``skyloop run``, the
broker, the trainer's training subprocess) and adds up the CPU seconds each name used, so a
bench can say where the cores went. A process's CPU time is read while it lives; the last
reading of a process that has ended counts, so a sampler that reads every half second misses at
most the last half second of a short-lived process.
"""

from __future__ import annotations

import os
import re
import threading
from collections import defaultdict
from pathlib import Path

__all__ = ["CpuSampler", "children", "cpu_seconds", "machine_busy_seconds", "rss_mb"]

_TICK = os.sysconf("SC_CLK_TCK")


def _name(pid: int) -> str:
    words = [
        c.decode(errors="replace")
        for c in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if c
    ]
    if "worker" in words:
        return words[words.index("worker") + 1]
    if "processors.train.train_worker" in words or any("train_worker" in w for w in words):
        return "training"
    return Path(words[0]).name if words else "?"


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children(pid: int, recursive: bool = False) -> dict[int, str]:
    """Children of ``pid`` (all descendants with ``recursive``): {pid: short name}."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = _parent(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue
    wanted, found = {pid}, {}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in wanted and child not in found:
                try:
                    found[child] = _name(child)
                except (FileNotFoundError, ProcessLookupError):
                    continue
                if recursive:
                    wanted.add(child)
                    grew = True
    return found


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / _TICK


class CpuSampler:
    """Reads the CPU seconds of every descendant of ``root`` every ``every_s`` in a thread.

    Use as a context manager; :meth:`by_name` then gives CPU seconds per process name (a
    restarted worker's lives add up) and :attr:`machine_busy_s` the whole machine's busy CPU
    seconds over the same time, so ``machine_busy_s - sum(by_name())`` is other work's.
    """

    def __init__(self, root: int | None = None, every_s: float = 0.5) -> None:
        self.root = os.getpid() if root is None else root
        self.every_s = every_s
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._busy0 = 0.0
        self.machine_busy_s = 0.0

    def __enter__(self) -> CpuSampler:
        self._busy0 = machine_busy_seconds()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.machine_busy_s = machine_busy_seconds() - self._busy0

    def _sample(self) -> None:
        for pid, name in children(self.root, recursive=True).items():
            used = cpu_seconds(pid)
            if used:
                # an exiting process has no command line left: keep the name it had
                known = self._last.get(pid, (name, 0.0))[0]
                self._last[pid] = (known if name == "?" else name, used)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def by_name(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for name, used in self._last.values():
            totals[name] += used
        return dict(totals)
