"""The learning loop's dataset in the controller's table: a small head and append-only chunks.

Why: the dataset holds up to ``dataset_max_samples`` (4,096) pseudo-labels of ~140 bytes; as one
table value it was written whole after every batch of candidates (up to ~570 KB a write, the
changelog's largest writer once the dataset fills). Here sample ``i`` (the ``i``-th ever added,
:attr:`~processors.controller.learning.LearningState.added`) lives in chunk ``i // CHUNK``:

- ``learning`` → the state without its samples (JSON, with ``added`` and ``kept``, the number of
  samples kept: the last ``kept`` of the ``added``);
- ``learning|<c>`` → the samples of chunk ``c`` that were kept when it was written (JSON:
  ``from``, the index of its first sample, and ``samples``, pairs): a chunk is written while it
  fills and then never again (its front is trimmed only on load, by ``kept``).

:meth:`LearningTable.save` writes the chunks that gained samples since the last save, then the
head, then deletes the chunks wholly before the first kept sample; all on partition 0. A head on
the changelog therefore implies every chunk it counts is there; a chunk past the head's
``added`` (a crash before the head) is ignored on load and written again, the same, by the
replay. The keys and values depend only on the sequence of samples, never on batching.
"""

from __future__ import annotations

import json

from processors.controller.learning import LearningState
from processors.controller.tables import ChangelogTable

__all__ = ["CHUNK", "HEAD_KEY", "LearningTable", "chunk_key"]

CHUNK = 16
HEAD_KEY = "learning"


def chunk_key(chunk: int) -> str:
    return f"{HEAD_KEY}|{chunk}"


class LearningTable:
    """Loads and saves a :class:`LearningState` in a :class:`ChangelogTable` (module
    docstring). ``partition`` is the changelog partition of every key (0)."""

    def __init__(self, table: ChangelogTable, partition: int = 0) -> None:
        self.table = table
        self.partition = partition
        self._added = 0  # state.added at the last save (or load)
        self._first = 0  # the first kept sample's index then

    def load(self) -> LearningState:
        raw = self.table.get(HEAD_KEY)
        if raw is None:
            return LearningState()
        head = json.loads(raw)
        if "samples" in head:  # one value, as written before chunks: saved whole next time
            state = LearningState.from_bytes(raw)
            self._added = self._first = state.added - len(state.samples)
            return state
        kept = int(head.pop("kept"))
        added = int(head["added"])
        first = added - kept
        samples: list[tuple[str, str]] = []
        for chunk in range(first // CHUNK, (added - 1) // CHUNK + 1 if added else 0):
            value = json.loads(self.table.get(chunk_key(chunk)) or b'{"from":0,"samples":[]}')
            for index, (image_id, sample_id) in enumerate(value["samples"], value["from"]):
                if first <= index < added:
                    samples.append((str(image_id), str(sample_id)))
        if len(samples) != kept:
            raise ValueError(f"learning table: {len(samples)} samples of {kept} found")
        self._added, self._first = added, first
        return LearningState(samples=samples, **head)

    def save(self, state: LearningState) -> None:
        added, kept = state.added, len(state.samples)
        first = added - kept
        if added > self._added:
            for chunk in range(max(self._added, first) // CHUNK, (added - 1) // CHUNK + 1):
                lo = max(chunk * CHUNK, first)
                part = state.samples[lo - first : (chunk + 1) * CHUNK - first]
                value = {"from": lo, "samples": [list(pair) for pair in part]}
                self.table.put(chunk_key(chunk), _json(value), self.partition)
        self.table.put(HEAD_KEY, _json({**state.head(), "kept": kept}), self.partition)
        for chunk in range(self._first // CHUNK, first // CHUNK):
            self.table.delete(chunk_key(chunk), self.partition)
        self._added, self._first = added, first


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
