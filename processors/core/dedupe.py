"""A bounded set of recently seen ids, for counting distinct items over an endless stream.

:class:`RecentIds` remembers the last ``capacity`` distinct ids (least recently seen forgotten
first) and counts every id it did not remember when it was added. Over a stream whose
duplicates arrive close together (redeliveries after a restart, one alert re-serialized in two
schema versions) the count is exact; an id that comes back after ``capacity`` other distinct
ids is counted again. Memory is bounded by ``capacity`` whatever the run's length, which is what
a run of days needs.

Example:
    >>> seen = RecentIds(capacity=2)
    >>> [seen.add(x) for x in "aabca"], len(seen), seen.count
    ([True, False, True, True, True], 2, 4)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["RecentIds"]


class RecentIds:
    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.capacity = capacity
        self.count = 0
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, item: Hashable) -> bool:
        """Remember ``item``; True (and counted) when it was not remembered."""
        if item in self._ids:
            self._ids.move_to_end(item)
            return False
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        self.count += 1
        return True

    def __contains__(self, item: Hashable) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
