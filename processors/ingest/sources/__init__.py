"""Image sources: the base class, spec options, the registry of spec names, the watch loop.

``from processors.ingest.sources import Interleaved, source_from_spec`` is the entry point
callers use; both are loaded on first use, so the families (which import
:mod:`processors.ingest.sources.base` and friends) never import the registry back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from processors.ingest.interleaved import Interleaved
    from processors.ingest.sources.registry import source_from_spec

__all__ = ["Interleaved", "source_from_spec"]


def __getattr__(name: str) -> Any:
    if name == "Interleaved":
        from processors.ingest.interleaved import Interleaved

        return Interleaved
    if name == "source_from_spec":
        from processors.ingest.sources.registry import source_from_spec

        return source_from_spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
