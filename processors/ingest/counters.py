"""Counters a source keeps about itself (``stats.snapshot()``), safe to read from any thread.

Keys are flat: a total and its parts share a prefix (``failed`` and ``failed.<error_class>``,
``errors`` and ``errors.<class>``), which is how :func:`~processors.ingest.processor.
describe_source` and the report break a total down.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["SourceCounters"]


class SourceCounters:
    """Monotonic named counts, cumulative over every iteration of the source that owns them."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(names, 0))

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def add_detail(self, total: str, detail: str, n: int = 1) -> None:
        """Count ``n`` in ``total`` and in ``total.detail``."""
        with self._lock:
            self._counts[total] += n
            self._counts[f"{total}.{detail}"] += n

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
