"""The controller's state in one changelog-backed Faust table, and the ring over it.

One table (``controller``, str keys, raw byte values) holds both kinds of key, so their
changelog messages share one topic partition per source and keep their order:

- ``source|<source>`` → :meth:`SourceState.to_bytes` (the head);
- ``ring|<source>|<model>|<block>`` → a block of :data:`BLOCK` consecutive ring slots (slot =
  ``seq % capacity``), each a :meth:`RingEntry.to_bytes` or empty;
- ``ring|<source>|<model>|<block>|<i>`` → slot ``i`` of that block alone (a loose slot), written
  since the block was last written whole; a slot's entry is the one with the higher ``seq`` of
  the block's and the loose slot's.

- ``applied|<topic>|<partition>`` → the highest offset of that input partition the service has
  applied (ASCII digits; ``topic`` with its hot-log epoch, ``scores#2``), written after the heads
  of the batch that reached it: where a restarted worker resumes
  (:mod:`processors.controller.consumer`), whatever offset the consumer group committed.

Beside them, on partition 0: ``rollouts`` (the lifecycle's tracks) and ``learning`` with its
chunks ``learning|<c>`` (:mod:`processors.controller.learning_table`).

The service handles records in batches and, for each source it touched, writes the ring blocks
that changed and then the head (:meth:`TableRing.flush`, then the head), on the source's
partition. A head on the changelog therefore implies every ring entry it counts is there too,
and a restarted worker rebuilds both from the changelog before its agents see a record. Writing
blocks once per batch rather than one slot per record divides the changelog messages (each one a
produce request on the embedded broker, which needs ``producer_max_batch_size=1``) by about the
batch size. A batch that changes fewer than half a block's slots writes them as loose slots
instead, and the block is written whole (its loose slots deleted after it) when all of it would
be loose: a slow source, one image per batch, then writes about two entries per image instead
of a whole block of 16. Measured at ~30 images/s on one source (BENCHMARKS.md): 2.7 KB of ring per
image (each entry written about once: 1,280 float16 features and its ids), 60 bytes of head.
The embedded broker never compacts; the hot log's rotation does
(:mod:`processors.core.compaction`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from processors.controller.state import RingEntry, SourceState
from processors.core.config import Settings
from processors.core.progress import ProgressFile

__all__ = [
    "BLOCK",
    "TABLES",
    "ChangelogTable",
    "DictTable",
    "FaustTable",
    "TableRing",
    "applied_key",
    "changelog_topics",
    "folded",
    "head_key",
    "load_applied",
    "load_head",
    "ring_key",
]

BLOCK = 16
TABLES = ("controller", "lane_windows")
"""The controller app's tables (:func:`processors.controller.app.build_app`)."""
_LEN = struct.Struct("<I")


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelog topics: Faust names them ``<app id>-<table>-changelog``, and the
    app id is the controller's group (``<group_prefix>.stats``)."""
    return [f"{settings.group('stats')}-{name}-changelog" for name in TABLES]


def head_key(source: str) -> str:
    return f"source|{source}"


def applied_key(topic: str, partition: int) -> str:
    """The key of the highest applied offset of one input partition (``topic`` with its epoch)."""
    return f"applied|{topic}|{partition}"


def ring_key(source: str, model: str, block: int, slot: int | None = None) -> str:
    """The key of a ring block, or of one of its slots written alone (a loose slot)."""
    return f"ring|{source}|{model}|{block}" + ("" if slot is None else f"|{slot}")


class ChangelogTable(Protocol):
    """What the service needs of a table: read a key, write one to a given partition."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, partition: int) -> None: ...

    def delete(self, key: str, partition: int) -> None: ...


def key_kind(key: str) -> str:
    """What a ``controller`` table key holds: ``source``, ``ring``, ``rollouts``, ``learning``."""
    return key.split("|", 1)[0]


class FaustTable:
    """A Faust table written with an explicit changelog partition.

    ``table[key] = value`` takes the partition of the event being processed; records handled
    in batches have no single current event, so writes name the partition (the source's, which
    is the partition of every record that changes its state). With a ``progress`` file, every
    changelog record is counted there by ``kind(key)``: ``changelog.<table>.<kind>.records``
    and ``.bytes`` (key and value), which is what the table makes the broker hold.
    """

    def __init__(
        self,
        table: Any,
        progress: ProgressFile | None = None,
        kind: Callable[[str], str] = key_kind,
    ) -> None:
        self.table = table
        self.progress = progress
        self.kind = kind
        self.name = str(getattr(table, "name", "table"))

    def _count(self, key: str, value: bytes | None) -> None:
        if self.progress is not None:
            prefix = f"changelog.{self.name}.{self.kind(key)}"
            self.progress.add(f"{prefix}.records")
            self.progress.add(f"{prefix}.bytes", len(key) + len(value or b""))

    def get(self, key: str) -> bytes | None:
        value = self.table.data.get(key)
        return None if value is None else bytes(value)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)
        self._count(key, value)

    def delete(self, key: str, partition: int) -> None:
        self.table.data.pop(key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")
        self._count(key, None)


class DictTable:
    """A :class:`ChangelogTable` in a dict (tests, offline replays)."""

    def __init__(self, data: MutableMapping[str, bytes] | None = None) -> None:
        self.data: MutableMapping[str, bytes] = data if data is not None else {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.data.pop(key, None)


def _pack(slots: list[bytes | None]) -> bytes:
    return b"".join(_LEN.pack(len(s or b"")) + (s or b"") for s in slots)


def _unpack(data: bytes) -> list[bytes | None]:
    slots: list[bytes | None] = []
    offset = 0
    while offset < len(data):
        (size,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        slots.append(bytes(data[offset : offset + size]) if size else None)
        offset += size
    return slots + [None] * (BLOCK - len(slots))


class TableRing:
    """A :class:`~processors.controller.controller.Ring` over a :class:`ChangelogTable`.

    Writes go to an in-memory copy of the touched blocks until :meth:`flush`; reads see them at
    once. An index of the image ids in each lane's ring (built from the table on first use
    after a restart) makes the controller's duplicate check a dict lookup.
    """

    def __init__(self, table: ChangelogTable) -> None:
        self.table = table
        self._blocks: dict[tuple[str, str, int], list[bytes | None]] = {}
        self._dirty: dict[tuple[str, str, int], set[int]] = {}
        """Per touched block, its slots changed since the last flush."""
        self._loose: dict[tuple[str, str, int], set[int]] = {}
        """Per block, its slots on the table as loose slots (see the module docstring)."""
        self._ids: dict[tuple[str, str], dict[str, int]] = {}

    def _block(self, source: str, model: str, block: int) -> list[bytes | None]:
        key = (source, model, block)
        if key not in self._blocks:
            raw = self.table.get(ring_key(source, model, block))
            slots: list[bytes | None] = _unpack(raw) if raw is not None else [None] * BLOCK
            loose = set()
            for i in range(BLOCK):
                alone = self.table.get(ring_key(source, model, block, i))
                if alone is None:
                    continue
                loose.add(i)
                kept = slots[i]
                if kept is None or _seq(alone) > _seq(kept):
                    slots[i] = alone
            self._blocks[key] = slots
            self._loose[key] = loose
        return self._blocks[key]

    def _slot(self, source: str, model: str, seq: int, capacity: int) -> bytes | None:
        slot = seq % capacity
        return self._block(source, model, slot // BLOCK)[slot % BLOCK]

    def _index(self, source: str, model: str, capacity: int) -> dict[str, int]:
        ids = self._ids.get((source, model))
        if ids is None:
            ids = {}
            for block in range((capacity + BLOCK - 1) // BLOCK):
                for raw in self._block(source, model, block):
                    if raw is not None:
                        entry = RingEntry.from_bytes(raw)
                        ids[entry.image_id] = entry.seq
            self._ids[(source, model)] = ids
        return ids

    def put(self, source: str, model: str, entry: RingEntry, capacity: int) -> None:
        ids = self._index(source, model, capacity)
        slot = entry.seq % capacity
        block = self._block(source, model, slot // BLOCK)
        old = block[slot % BLOCK]
        if old is not None:
            previous = RingEntry.from_bytes(old)
            if ids.get(previous.image_id) == previous.seq:
                del ids[previous.image_id]
        block[slot % BLOCK] = entry.to_bytes()
        self._dirty.setdefault((source, model, slot // BLOCK), set()).add(slot % BLOCK)
        ids[entry.image_id] = entry.seq

    def get(self, source: str, model: str, seq: int, capacity: int) -> RingEntry | None:
        raw = self._slot(source, model, seq, capacity)
        if raw is None:
            return None
        entry = RingEntry.from_bytes(raw)
        return entry if entry.seq == seq else None

    def seq_of(self, source: str, model: str, image_id: str, capacity: int) -> int | None:
        return self._index(source, model, capacity).get(image_id)

    def flush(self, source: str, partition: int) -> int:
        """Write ``source``'s changed slots to the table: as loose slots when fewer than half
        of their block changed and the block is not all loose then, else as the whole block
        followed by the deletion of its loose slots (a stale loose slot left by a crash in
        between loses to the block's newer entry); returns how many records were written."""
        written = 0
        for key in sorted(k for k in self._dirty if k[0] == source):
            changed, loose, slots = self._dirty.pop(key), self._loose[key], self._blocks[key]
            if len(changed) * 2 < BLOCK and len(changed | loose) < BLOCK:
                for i in sorted(changed):
                    entry = slots[i]
                    assert entry is not None  # a changed slot holds what put wrote
                    self.table.put(ring_key(*key, i), entry, partition)
                loose |= changed
                written += len(changed)
                continue
            self.table.put(ring_key(*key), _pack(slots), partition)
            for i in sorted(loose):
                self.table.delete(ring_key(*key, i), partition)
            written += 1 + len(loose)
            loose.clear()
        return written


def folded(data: MutableMapping[str, bytes]) -> dict[str, bytes]:
    """The table ``data`` with every loose slot folded into its block: equal for two tables
    that hold the same ring, whatever batches wrote them (the restart and compaction tests
    compare two runs' tables this way)."""
    ring = TableRing(DictTable(dict(data)))
    out = {key: value for key, value in data.items() if key_kind(key) != "ring"}
    for key in data:
        if key_kind(key) == "ring":
            _, source, model, block, *_slot = key.split("|")
            out[ring_key(source, model, int(block))] = _pack(ring._block(source, model, int(block)))
    return out


def _seq(entry: bytes) -> int:
    return RingEntry.from_bytes(entry).seq


def load_head(table: ChangelogTable, source: str) -> SourceState:
    raw = table.get(head_key(source))
    return SourceState(source) if raw is None else SourceState.from_bytes(raw)


def load_applied(table: ChangelogTable, topic: str, partition: int) -> int | None:
    """The highest offset of ``topic``'s ``partition`` the service applied, if it ever did."""
    raw = table.get(applied_key(topic, partition))
    return None if raw is None else int(raw)
