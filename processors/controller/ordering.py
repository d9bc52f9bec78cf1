"""Hand the controller its input records in offset order, per partition (:class:`InOrder`).

Why: Faust can hand an agent a partition's records out of order. After a pause (a hot-log
rotation stops the flow), the events already in an agent's ``take_events`` buffer are kept and
the rest are fetched again from the seek position: a controller was handed offset 131 of a
partition, then 130. Its guard against redelivery (a record at or below the last offset applied
is skipped) then skipped 130 for good, and one score missing from a lane changes every later
decision.

:class:`InOrder` sits in front of the service's guard. Per input partition it knows the next
offset it expects (one past the highest applied, from the table after a restart):

- the expected record is handed over, then every held record that follows it without a hole;
- a record below the expected one is handed over as it is (a redelivery: the guard skips it);
- a record past the expected one is held, not applied, until the hole before it fills;
- a hole that stays open for ``wait_s`` asks for a rewind of the partition to the expected
  offset (once): the app seeks its consumer there, and the missing records come again;
- a hole still open ``wait_s`` after the rewind, or more than ``max_held`` records held behind
  it, is accepted: the held records are handed over, and the hole is reported as a gap (records
  never seen; deleted by retention before they were read is the expected cause).

The first record of a partition never applied sets where it starts (a resume there begins at
the partition's earliest retained offset). Invariants: every record is handed over at most once
per arrival; records of one partition leave in offset order except redeliveries; held records
are in memory only, so a crash loses nothing (the table never applied them, and a restart
resumes before them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["InOrder", "Record", "Release", "Rewind"]

Record = tuple[int, int, bytes]
"""``(partition, offset, value)``, as the agents hand them over."""


@dataclass(frozen=True)
class Rewind:
    """Seek ``stream``'s ``partition`` back to ``offset``: records from there never arrived."""

    stream: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Release:
    """Records held behind a hole that was accepted: ``missing`` offsets before them skipped."""

    stream: str
    partition: int
    missing: int
    expected: int
    records: list[Record]


@dataclass
class _Partition:
    next: int | None  # the offset expected next; None before the first record
    held: dict[int, Record] = field(default_factory=dict)
    since: float = 0.0  # when the open hole was first seen (or last rewound)
    rewound: bool = False
    arrived: float | None = None  # when its last record arrived (or it was last sought)


class InOrder:
    """See the module docstring. ``applied(stream, partition)`` is the table's highest
    applied offset (None when never applied); it is read once per partition."""

    def __init__(
        self,
        applied: Callable[[str, int], int | None],
        *,
        wait_s: float = 5.0,
        max_held: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._applied = applied
        self.wait_s = wait_s
        self.max_held = max_held
        self._clock = clock
        self._partitions: dict[tuple[str, int], _Partition] = {}
        self.stall_s = 4 * wait_s
        self.holes = 0
        """Holes opened so far: records handed over past the one expected (the worker's
        progress shows it: how often Faust delivers a partition out of order)."""

    def _state(self, stream: str, partition: int) -> _Partition:
        key = (stream, partition)
        if key not in self._partitions:
            applied = self._applied(stream, partition)
            self._partitions[key] = _Partition(None if applied is None else applied + 1)
        return self._partitions[key]

    def admit(self, stream: str, batch: Sequence[Record]) -> tuple[list[Record], list[Release]]:
        """The records of ``batch`` to apply now, in order, and the holes accepted because too
        many records wait behind them (their records are in the first list too, in place)."""
        ready: list[Record] = []
        released: list[Release] = []
        now = self._clock()
        for record in batch:
            partition, offset, _value = record
            state = self._state(stream, partition)
            state.arrived = now
            if state.next is None or offset == state.next:
                ready.append(record)
                state.next = offset + 1
                self._drain(state, ready, now)
            elif offset < state.next:
                ready.append(record)  # a redelivery: the service's guard skips it
            else:
                if not state.held:
                    state.since, state.rewound = now, False
                    self.holes += 1
                state.held.setdefault(offset, record)
                if len(state.held) > self.max_held:
                    released.append(self._accept(stream, partition, state, ready, now))
        return ready, released

    def rewinds(self) -> list[Rewind]:
        """Holes open for ``wait_s`` and not yet rewound: seek these partitions back (once)."""
        now, due = self._clock(), []
        for (stream, partition), state in self._partitions.items():
            if state.held and not state.rewound and now - state.since >= self.wait_s:
                assert state.next is not None
                state.rewound, state.since = True, now
                due.append(Rewind(stream, partition, state.next))
        return due

    def stalled(self, highwaters: Mapping[tuple[str, int], int]) -> list[Rewind]:
        """Partitions whose broker holds records past the next offset (``highwaters``: the end
        offsets the consumer last saw) but that handed over nothing for ``stall_s``: seek them
        to the next offset (again every ``stall_s`` while it lasts). Seen once in a test that
        kills every worker: a restarted controller's consumer stopped fetching one partition
        for good, with no error, and the run never ended."""
        now, due = self._clock(), []
        for (stream, partition), end in highwaters.items():
            state = self._state(stream, partition)
            if state.arrived is None:
                state.arrived = now  # first seen now: it gets its time
            start = state.next or 0
            if end > start and not state.held and now - state.arrived >= self.stall_s:
                state.arrived = now
                due.append(Rewind(stream, partition, start))
        return due

    def overdue(self) -> list[Release]:
        """Holes still open ``wait_s`` after their rewind: accepted, their records released."""
        now, released = self._clock(), []
        for (stream, partition), state in self._partitions.items():
            if state.held and state.rewound and now - state.since >= self.wait_s:
                ready: list[Record] = []
                released.append(self._accept(stream, partition, state, ready, now))
        return released

    def held(self) -> int:
        """Records waiting behind holes, over every partition."""
        return sum(len(state.held) for state in self._partitions.values())

    def _accept(
        self, stream: str, partition: int, state: _Partition, ready: list[Record], now: float
    ) -> Release:
        assert state.next is not None
        expected, first = state.next, min(state.held)
        state.next = first
        start = len(ready)
        self._drain(state, ready, now)
        return Release(stream, partition, first - expected, expected, ready[start:])

    @staticmethod
    def _drain(state: _Partition, ready: list[Record], now: float) -> None:
        """Hand over the held records that now follow without a hole; a hole further on, if
        any, waits afresh."""
        assert state.next is not None
        moved = False
        while state.next in state.held:
            ready.append(state.held.pop(state.next))
            state.next += 1
            moved = True
        if moved or not state.held:
            state.since, state.rewound = now, False
