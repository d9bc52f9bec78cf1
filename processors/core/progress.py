"""Small JSON progress files, one per processor, that the local supervisor reads.

Writes are atomic (temp file + rename), so a reader never sees half a file. They are a local
convenience for ``skyloop run`` (progress bar and stop condition), not a source of truth.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["ProgressFile", "read_progress"]


class ProgressFile:
    def __init__(self, directory: Path | None, name: str, min_interval_s: float = 0.2) -> None:
        self.path = directory / f"{name}.json" if directory else None
        self.min_interval_s = min_interval_s
        self.counts: dict[str, Any] = {}
        self._last = 0.0

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.counts, sort_keys=True))
        tmp.replace(self.path)


def read_progress(directory: Path, name: str) -> dict[str, Any]:
    try:
        return dict(json.loads((directory / f"{name}.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
