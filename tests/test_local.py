"""The local run's stop condition: an item a stage quarantined counts as handled; a resumed
run counts what was stored before it."""

from __future__ import annotations

from pathlib import Path

from processors.core.config import load_settings
from processors.core.progress import ProgressFile
from processors.core.supervisor import Supervisor
from processors.local import _done, _quarantined
from processors.local_restarts import RestartedTruth
from processors.resume_log import Stored


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


def test_a_resumed_run_waits_for_what_its_ingest_published_beyond_what_was_stored(
    tmp_path: Path,
) -> None:
    """After a resume the sink's counts come from ClickHouse (the 160 images stored before the
    crash included) while ingest counts only what it published (80 more): the run is done
    when all 240 are stored and scored, not when 208 are (a failure seen under load)."""
    truth = RestartedTruth(load_settings(), "127.0.0.1:1", tmp_path, Supervisor(tmp_path, {}))
    truth.stored = Stored(images=160, dead_letters=0, skip_file=tmp_path / "skip")
    ingest = truth.ingest({"done": True, "images": 80})
    controller = {"consumed": 240}
    early = {"images": 208, "scores": 208, "candidates": 0, "candidate_scores": 0}
    assert not _done(ingest, early, controller)
    assert _done(ingest, {**early, "images": 240, "scores": 240}, controller)
    assert truth.ingest(ingest) == ingest  # counted once, as the ledger's file is


def test_a_controller_holding_scores_behind_a_hole_is_not_done() -> None:
    """Its records are consumed but not applied (the controller keeps a partition's order): a
    run that ended then would leave their decisions unmade."""
    ingest = {"done": True, "images": 10}
    sink = {"images": 10, "scores": 10, "candidates": 0, "candidate_scores": 0}
    assert not _done(ingest, sink, {"consumed": 10, "held": 3})
    assert _done(ingest, sink, {"consumed": 10, "held": 0})
