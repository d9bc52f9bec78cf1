"""The controller's state in one changelog-backed Faust table, and the ring over it.

One table (``controller``, str keys, raw byte values) holds both kinds of key, so their
changelog messages share one topic partition per source and keep their order:

- ``source|<source>`` → :meth:`SourceState.to_bytes` (the head, written last for each record);
- ``ring|<source>|<model>|<slot>`` → :meth:`RingEntry.to_bytes` (one key per ring slot, so a
  new image rewrites one slot, never a growing value).

A head on the changelog therefore implies every ring entry written before it is there too, and
a restarted worker rebuilds both from the changelog before its agents see a record.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from processors.control.state import RingEntry, SourceState

__all__ = ["TableRing", "head_key", "ring_key"]


def head_key(source: str) -> str:
    return f"source|{source}"


def ring_key(source: str, model: str, slot: int) -> str:
    return f"ring|{source}|{model}|{slot}"


class TableRing:
    """A :class:`~processors.control.controller.Ring` over a Faust table (or any mapping).

    Keeps an index of the image ids in each lane's ring (built from the table on first use
    after a restart) so the controller's duplicate check costs a dict lookup.
    """

    def __init__(self, table: MutableMapping[str, Any]) -> None:
        self.table = table
        self._ids: dict[tuple[str, str], dict[str, int]] = {}

    def _index(self, source: str, model: str, capacity: int) -> dict[str, int]:
        ids = self._ids.get((source, model))
        if ids is None:
            ids = {}
            for slot in range(capacity):
                raw = self.table.get(ring_key(source, model, slot))
                if raw is not None:
                    entry = RingEntry.from_bytes(raw)
                    ids[entry.image_id] = entry.seq
            self._ids[(source, model)] = ids
        return ids

    def put(self, source: str, model: str, entry: RingEntry, capacity: int) -> None:
        ids = self._index(source, model, capacity)
        key = ring_key(source, model, entry.seq % capacity)
        raw = self.table.get(key)
        if raw is not None:
            old = RingEntry.from_bytes(raw)
            if ids.get(old.image_id) == old.seq:
                del ids[old.image_id]
        self.table[key] = entry.to_bytes()
        ids[entry.image_id] = entry.seq

    def get(self, source: str, model: str, seq: int, capacity: int) -> RingEntry | None:
        raw = self.table.get(ring_key(source, model, seq % capacity))
        if raw is None:
            return None
        entry = RingEntry.from_bytes(raw)
        return entry if entry.seq == seq else None

    def seq_of(self, source: str, model: str, image_id: str, capacity: int) -> int | None:
        return self._index(source, model, capacity).get(image_id)


def load_head(table: MutableMapping[str, Any], source: str) -> SourceState:
    raw = table.get(head_key(source))
    return SourceState(source) if raw is None else SourceState.from_bytes(raw)
