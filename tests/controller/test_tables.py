"""The controller's ring over its changelog table: what a flush writes, and what a restarted
worker reads back (blocks, loose slots, and a crash between the two)."""

from __future__ import annotations

import random

import numpy as np

from processors.controller.state import RingEntry
from processors.controller.tables import BLOCK, DictTable, TableRing, ring_key

CAPACITY = 1024
FEATURES = np.zeros(1280, dtype="<f2").tobytes()  # a real ring entry's size: ~2.6 KB


class CountingTable(DictTable):
    """A dict table that counts what it would send to the changelog."""

    def __init__(self) -> None:
        super().__init__()
        self.records = 0
        self.bytes = 0

    def put(self, key: str, value: bytes, partition: int) -> None:
        super().put(key, value, partition)
        self.records += 1
        self.bytes += len(key) + len(value)

    def delete(self, key: str, partition: int) -> None:
        super().delete(key, partition)
        self.records += 1
        self.bytes += len(key)


def _entry(seq: int) -> RingEntry:
    return RingEntry(seq, f"img-{seq}", FEATURES, -8.0, 0.1, False, "cal-1")


def _fill(table: DictTable, batches: list[int]) -> TableRing:
    """Put entries 0, 1, ... in batches of the given sizes, flushing after each batch."""
    ring, seq = TableRing(table), 0
    for size in batches:
        for _ in range(size):
            ring.put("src", "m1", _entry(seq), CAPACITY)
            seq += 1
        ring.flush("src", partition=0)
    return ring


def _restored(table: DictTable, last_seq: int) -> list[RingEntry | None]:
    """What a restarted worker reads: a fresh ring over a copy of the table."""
    fresh = TableRing(DictTable(dict(table.data)))
    return [
        fresh.get("src", "m1", seq, CAPACITY)
        for seq in range(max(last_seq - CAPACITY + 1, 0), last_seq + 1)
    ]


def test_a_slow_source_writes_about_two_entries_per_image_not_a_block() -> None:
    table = CountingTable()
    _fill(table, [1] * 2000)  # one image per batch, the ring wrapping around twice
    entry_bytes = len(_entry(0).to_bytes())
    per_image = table.bytes / 2000
    assert per_image < 2.2 * entry_bytes, per_image / entry_bytes  # a whole block: ~16
    restored = _restored(table, 1999)
    assert [e.seq if e else None for e in restored] == list(range(2000 - CAPACITY, 2000))


def test_a_fast_source_writes_whole_blocks() -> None:
    table = CountingTable()
    _fill(table, [64] * 20)
    assert table.records == 20 * 64 // BLOCK  # each block once per batch, no loose slots
    assert not [k for k in table.data if k.count("|") == 4]


def test_any_mix_of_batch_sizes_restores_the_same_ring() -> None:
    rng = random.Random(7)
    for _ in range(5):
        table = DictTable()
        batches = [rng.choice([1, 1, 2, 3, 5, 8, 13, 40]) for _ in range(300)]
        ring = _fill(table, batches)
        last = sum(batches) - 1
        expected = [
            ring.get("src", "m1", seq, CAPACITY)
            for seq in range(max(last - CAPACITY + 1, 0), last + 1)
        ]
        assert _restored(table, last) == expected
        assert ring.seq_of("src", "m1", f"img-{last}", CAPACITY) == last


def test_a_loose_slot_left_by_a_crash_loses_to_the_newer_block() -> None:
    table = DictTable()
    _fill(table, [1] * 3)  # slots 0-2 written loose
    stale = table.data[ring_key("src", "m1", 0, 2)]
    ring = _fill(table, [1] * 3 + [BLOCK])  # ... then the block whole, its loose slots deleted
    assert ring_key("src", "m1", 0, 2) not in table.data
    # a crash between the block's write and the deletions leaves a loose slot behind
    table.data[ring_key("src", "m1", 0, 2)] = stale
    fresh = TableRing(DictTable(dict(table.data)))
    assert fresh.get("src", "m1", 2, CAPACITY) == ring.get("src", "m1", 2, CAPACITY)
    # and once the ring has wrapped, the newer entry in the slot wins too
    newer = _entry(2 + CAPACITY)
    fresh.put("src", "m1", newer, CAPACITY)
    fresh.flush("src", 0)
    again = TableRing(DictTable(dict(fresh.table.data)))  # type: ignore[attr-defined]
    assert again.get("src", "m1", 2 + CAPACITY, CAPACITY) == newer
