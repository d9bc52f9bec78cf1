"""Small JSON progress files, one per processor, that the local supervisor reads.

Writes are atomic (temp file + rename), so a reader never sees half a file. They are a local
convenience for ``skyloop run`` (progress bar and stop condition, the report's pipeline health),
not a source of truth. Every write also records the writing process under ``process``:
``pid``, ``started_at`` and ``written_at`` (Unix seconds: when this progress file was opened,
i.e. the process started or was restarted, and of this write), ``rss_bytes`` (resident memory
now, from ``/proc/self/statm``; absent where there is no such file) and ``peak_rss_bytes``
(the process's peak resident memory, ``getrusage``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ProgressFile", "process_stats", "read_progress"]


class ProgressFile:
    def __init__(self, directory: Path | None, name: str, min_interval_s: float = 0.2) -> None:
        self.path = directory / f"{name}.json" if directory else None
        self.min_interval_s = min_interval_s
        self.counts: dict[str, Any] = {}
        self._last = 0.0
        self._started = time.time()

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = int(self.counts.get(key, 0)) + n

    def set(self, key: str, value: Any) -> None:
        self.counts[key] = value

    def write(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        self.counts["process"] = process_stats(self._started)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.counts, sort_keys=True))
        tmp.replace(self.path)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def process_stats(started_at: float) -> dict[str, Any]:
    """This process's id, start and current time (Unix seconds) and memory, as recorded."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    stats: dict[str, Any] = {
        "pid": os.getpid(),
        "started_at": round(started_at, 3),
        "written_at": round(time.time(), 3),
        "peak_rss_bytes": int(peak),
    }
    rss = _rss_bytes()
    if rss is not None:
        stats["rss_bytes"] = rss
        # the kernel updates the peak lazily: it may lag the resident size read just now
        stats["peak_rss_bytes"] = max(stats["peak_rss_bytes"], rss)
    return stats


def read_progress(directory: Path, name: str) -> dict[str, Any]:
    try:
        return dict(json.loads((directory / f"{name}.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
