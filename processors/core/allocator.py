"""Keep a model process's large allocations in its heap instead of mapping them per batch.

glibc serves an allocation above its mmap threshold (at most 32 MB, whatever it adapts to) with
a fresh ``mmap`` and returns it with ``munmap`` when freed. A CNN's activations for a batch of
32 cutouts at 224 px are tens of MB each, so every forward pass maps, faults in (zeroing each
4 KB page) and unmaps about half a GB: measured on 2 AVX2 cores, 2.1 million page faults and
6-7 s of kernel time per 480 images, the model at 57 images/s. With the threshold and the trim
threshold raised to :data:`KEEP_BELOW_BYTES` those buffers are reused from the heap: no page
faults, 105-114 images/s (BENCHMARKS.md, "The allocator").

The cost: a process keeps the memory of its largest batch resident (its peak, which it reaches
every batch anyway) instead of returning it between batches. Only processes that run models
call :func:`keep_large_allocations` (the backbone, the detector). Elsewhere than glibc (macOS,
musl) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["KEEP_BELOW_BYTES", "keep_large_allocations"]

log = logging.getLogger(__name__)

KEEP_BELOW_BYTES = 256 * 1024 * 1024
"""Allocations below this size come from the heap, and freed memory below it stays there."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: list[bool] = []


def keep_large_allocations(limit_bytes: int = KEEP_BELOW_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to ``limit_bytes`` for this process; True when
    they are in effect. Idempotent: the first call decides, later calls return its answer."""
    if _applied:
        return _applied[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            ok = (
                mallopt(_M_MMAP_THRESHOLD, limit_bytes) == 1
                and mallopt(_M_TRIM_THRESHOLD, limit_bytes) == 1
            )
        except (OSError, AttributeError):
            ok = False
    if not ok:
        log.info("allocator: large allocations stay mapped per use (no glibc mallopt here)")
    _applied.append(ok)
    return ok
