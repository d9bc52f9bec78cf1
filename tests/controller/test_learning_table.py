"""The learning dataset in the controller's table: chunks written once, the state restored."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from processors.controller.learning import LearningLoop, LearningState
from processors.controller.learning_table import CHUNK, HEAD_KEY, LearningTable, chunk_key
from processors.controller.tables import DictTable
from processors.policies.retrain import RetrainTrigger

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class Counting(DictTable):
    """A dict table that also counts the bytes written, as the changelog would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def put(self, key: str, value: bytes, partition: int) -> None:
        super().put(key, value, partition)
        self.written += len(key) + len(value)


@pytest.mark.parametrize("max_samples,batch", [(4096, 3), (100, 7), (16, 40)])
def test_saved_in_batches_the_dataset_restores_whole(max_samples: int, batch: int) -> None:
    table = Counting()
    loop = LearningLoop(RetrainTrigger(min_samples=50, cooldown_s=0), max_samples=max_samples)
    store = LearningTable(table)
    for i in range(700):
        loop.add(f"img-{i}", f"{i:064x}", T0 + timedelta(seconds=i))
        if i % batch == batch - 1:
            store.save(loop.state)
    store.save(loop.state)
    restored = LearningTable(table).load()
    assert restored == loop.state
    assert len(restored.samples) == min(700, max_samples)
    # the chunks wholly before the first kept sample are deleted: the table stays bounded
    chunks = [k for k in table.data if k.startswith(f"{HEAD_KEY}|")]
    assert len(chunks) <= max_samples // CHUNK + 2
    assert chunk_key(0) not in table.data or max_samples >= 700


def test_a_save_writes_the_new_samples_not_the_whole_dataset() -> None:
    table = Counting()
    loop = LearningLoop(RetrainTrigger(min_samples=10**6), max_samples=4096)
    store = LearningTable(table)
    for i in range(4000):
        loop.add(f"img-{i}", f"{i:064x}", T0)
        store.save(loop.state)  # one candidate per batch: the worst case
    whole = len(loop.state.to_bytes())
    # one value: every save wrote the whole dataset (~4000 * whole / 2 = 600 MB in all); chunks:
    # each sample's bytes about CHUNK / 2 times, whatever the dataset's size (3.5 MB)
    assert whole > 300_000
    assert table.written < 4000 * 1_500


def test_a_dataset_written_as_one_value_is_read_and_then_saved_in_chunks() -> None:
    table = DictTable()
    old = LearningState(samples=[(f"img-{i}", f"{i:064x}") for i in range(100)], new_samples=5)
    legacy = json.dumps({**asdict(old), "added": None}).replace('"added": null, ', "").encode()
    assert b"added" not in legacy
    table.put(HEAD_KEY, legacy, 0)
    store = LearningTable(table)
    state = store.load()
    assert state.samples == old.samples and state.added == 100
    store.save(state)
    assert LearningTable(table).load() == state
    assert b'"samples"' not in (table.get(HEAD_KEY) or b"")


def test_a_chunk_past_the_head_from_a_crash_is_ignored() -> None:
    table = DictTable()
    loop = LearningLoop(RetrainTrigger(min_samples=10**6))
    store = LearningTable(table)
    for i in range(10):
        loop.add(f"img-{i}", f"{i:064x}", T0)
    store.save(loop.state)
    saved = LearningTable(table).load()
    head = table.get(HEAD_KEY)
    for i in range(10, 20):
        loop.add(f"img-{i}", f"{i:064x}", T0)
    store.save(loop.state)
    assert head is not None
    table.put(HEAD_KEY, head, 0)  # the crash: chunks written, head not
    assert LearningTable(table).load() == saved


def test_the_head_is_every_field_but_the_samples_and_shares_nothing() -> None:
    state = LearningState(
        samples=[("img-1", "a" * 64)], added=3, requests=["2026-12-01T00:00:00+00:00"]
    )
    head = state.head()
    assert head == {k: v for k, v in asdict(state).items() if k != "samples"}
    head["requests"].append("later")  # type: ignore[attr-defined]
    assert state.requests == ["2026-12-01T00:00:00+00:00"]
