"""The local run's stop condition: an item a stage quarantined counts as handled."""

from __future__ import annotations

from pathlib import Path

from processors.core.progress import ProgressFile
from processors.local import _done, _quarantined


def test_an_item_the_sink_quarantined_counts_as_handled(tmp_path: Path) -> None:
    ingest = {"done": True, "images": 10}
    sink = {"images": 9, "scores": 10, "candidates": 0, "candidate_scores": 0}
    controller = {"consumed": 10}
    assert not _done(ingest, sink, controller)  # one image never stored: still waiting
    progress = ProgressFile(tmp_path, "sink")
    progress.add("quarantined.images.raw")
    progress.write(force=True)
    held = _quarantined(tmp_path)
    assert held["images"] == 1 and held["candidates"] == 0
    assert _done(ingest, sink, controller, None, held)
