"""The controller handles each input partition's records in offset order
(:mod:`processors.controller.ordering`, step 0 of :mod:`processors.controller.service`).

The fault it closes, seen in a run whose hot log rotated: offset 131 of a partition was handed
over before 130, and 130, arriving after it, was skipped as a redelivery.
"""

from __future__ import annotations

from pathlib import Path

from processors.controller.ordering import InOrder, Record
from processors.controller.service import ControlService
from processors.controller.tables import DictTable
from processors.core.config import Settings
from processors.core.progress import ProgressFile
from tests.controller.test_resume_offsets import _scores


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _records(partition: int, *offsets: int) -> list[Record]:
    return [(partition, offset, str(offset).encode()) for offset in offsets]


def _offsets(records: list[Record]) -> list[int]:
    return [offset for _partition, offset, _value in records]


def test_a_record_past_a_hole_waits_for_it_and_redeliveries_pass() -> None:
    order = InOrder(lambda stream, partition: 129 if partition == 1 else None)
    ready, accepted = order.admit("scores", _records(1, 131, 132))
    assert (ready, accepted) == ([], []) and order.held() == 2
    ready, _ = order.admit("scores", _records(1, 130, 131, 133) + _records(0, 7, 8))
    assert _offsets(ready) == [130, 131, 132, 131, 133, 7, 8]  # 131 again: a redelivery
    assert order.held() == 0
    ready, _ = order.admit("scores", _records(1, 120))
    assert _offsets(ready) == [120]  # below the next offset: the service's guard skips it
    assert order.holes == 1  # the one before 131; a redelivery opens none


def test_a_hole_that_stays_open_is_rewound_once_then_accepted_as_a_gap() -> None:
    clock = Clock()
    order = InOrder(lambda stream, partition: 9, wait_s=5.0, clock=clock)
    order.admit("scores#1", _records(2, 12, 13))
    clock.now = 4.9
    assert order.rewinds() == [] and order.overdue() == []
    clock.now = 5.0
    (rewind,) = order.rewinds()
    assert (rewind.stream, rewind.partition, rewind.offset) == ("scores#1", 2, 10)
    assert order.rewinds() == []  # once
    ready, _ = order.admit("scores#1", _records(2, 13, 14))  # refetched from past the hole
    assert ready == []
    clock.now = 9.9
    assert order.overdue() == []
    clock.now = 10.0
    (hole,) = order.overdue()
    assert (hole.expected, hole.missing, _offsets(hole.records)) == (10, 2, [12, 13, 14])
    ready, _ = order.admit("scores#1", _records(2, 15))
    assert _offsets(ready) == [15] and order.held() == 0


def test_a_hole_filled_after_its_rewind_releases_everything_in_order() -> None:
    clock = Clock()
    order = InOrder(lambda stream, partition: 9, wait_s=1.0, clock=clock)
    order.admit("scores", _records(0, 11, 12))
    clock.now = 1.0
    assert len(order.rewinds()) == 1
    ready, _ = order.admit("scores", _records(0, 10, 11, 12, 13))
    assert _offsets(ready) == [10, 11, 12, 11, 12, 13]
    clock.now = 5.0
    assert order.overdue() == [] and order.rewinds() == []


def test_a_partition_with_records_at_the_broker_and_none_arriving_is_sought_again() -> None:
    """A consumer that stops fetching one partition (seen once after every worker was killed)
    would stall the controller for good: the partition is sought to its next offset."""
    clock = Clock()
    order = InOrder(lambda stream, partition: 31, wait_s=5.0, clock=clock)
    order.admit("scores", _records(3, 32))
    order.admit("scores", _records(1, 7))
    ends = {("scores", 3): 80, ("scores", 1): 8, ("scores", 0): 0}
    clock.now = 19.9
    assert order.stalled(ends) == []
    clock.now = 20.0
    (stall,) = order.stalled(ends)  # partition 1 is at its end and 0 is empty: not stalled
    assert (stall.stream, stall.partition, stall.offset) == ("scores", 3, 33)
    assert order.stalled(ends) == []  # again only after another stall_s
    clock.now = 30.0
    order.admit("scores", _records(3, 33))  # records come again
    clock.now = 45.0
    assert order.stalled(ends) == []
    clock.now = 50.0
    assert [s.offset for s in order.stalled(ends)] == [34]


def test_too_many_records_behind_a_hole_accept_it_at_once() -> None:
    order = InOrder(lambda stream, partition: None, max_held=3)
    order.admit("scores", _records(0, 0))
    ready, (hole,) = order.admit("scores", _records(0, 2, 3, 4, 5))
    assert _offsets(ready) == [2, 3, 4, 5] and (hole.expected, hole.missing) == (1, 1)


def test_the_service_folds_every_score_of_a_partition_handed_over_out_of_order(
    settings: Settings, tmp_path: Path
) -> None:
    values = _scores(tmp_path, 40)
    records = [(1, offset, value) for offset, value in enumerate(values)]

    def service() -> ControlService:
        return ControlService(
            settings, "unused:9092", ProgressFile(None, "stats"), DictTable(), DictTable()
        )

    in_order = service()
    in_order.on_scores(records)
    shuffled = service()
    shuffled.on_scores(records[:10])
    shuffled.on_scores([records[11], records[12]])  # 10 comes late, as after a pause
    shuffled.on_scores(records[10:])
    assert shuffled.progress.counts["applied"] == 40
    assert shuffled.progress.counts["redelivered"] == 2
    assert "gaps" not in shuffled.progress.counts
    source = in_order.head(next(iter(in_order._heads))).to_bytes()
    assert shuffled.head(next(iter(shuffled._heads))).to_bytes() == source
