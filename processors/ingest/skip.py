"""Skipping what a resumed run already stored (``skyloop worker ingest --skip FILE``).

The file (written by :mod:`processors.resume_log`) has one ``id <sha256 hex>`` line per stored
image and one ``key <source>\\t<key>`` line per stored file path or source dead letter. A source
that can skip cheaply (a folder, by relative path: :attr:`FolderSource.skip_keys`) does not
read those files again; every other item whose image id is stored is dropped before it is
published; both are counted (``skipped_stored`` in the ingest progress), never scored
again. Memory: about 100 bytes per stored image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from processors.ingest.sources.base import BaseSource, ImageSource, source_parts
from processors.ingest.sources.items import RawImage, SourceItem, image_id_for

__all__ = ["StoredSkip"]


class StoredSkip:
    """The stored ids and keys of a run; :meth:`filter` drops items already stored."""

    def __init__(self, ids: set[bytes], keys: dict[str, set[str]]) -> None:
        self.ids = ids
        self.keys = keys
        self.skipped = 0

    @classmethod
    def read(cls, path: Path) -> StoredSkip:
        ids: set[bytes] = set()
        keys: dict[str, set[str]] = {}
        with open(path) as lines:
            for line in lines:
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "id":
                    ids.add(bytes.fromhex(rest))
                elif kind == "key":
                    source, _, key = rest.partition("\t")
                    keys.setdefault(source, set()).add(key)
        return cls(ids, keys)

    def attach(self, source: ImageSource) -> None:
        """Give each leaf source that skips by key (``skip_keys``) its stored keys."""
        for part in source_parts(source):
            if hasattr(part, "skip_keys"):
                part.skip_keys = frozenset(self.keys.get(part.name, ()))

    def total(self, source: ImageSource) -> int:
        """Items skipped in all: by id here, plus those its sources skipped by key unread.

        Each is an item ingested (and stored) before the resume, so a resumed run's ingested
        items are ``published + dead_letters + total``, every item of the source once.
        """
        by_key = sum(
            part.stats.snapshot().get("skipped_stored", 0)
            for part in source_parts(source)
            if isinstance(part, BaseSource) and hasattr(part, "skip_keys") and part.stats
        )
        return self.skipped + by_key

    def stored(self, item: SourceItem) -> bool:
        if isinstance(item, RawImage):
            return bytes.fromhex(image_id_for(item.source, item.pixels)) in self.ids
        return item.key in self.keys.get(item.source, ())

    def filter(self, items: Iterator[SourceItem]) -> Iterator[SourceItem]:
        """``items`` without those already stored (closing it closes ``items`` too)."""
        try:
            for item in items:
                if self.stored(item):
                    self.skipped += 1
                    continue
                yield item
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
