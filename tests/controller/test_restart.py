"""The stats/controller worker killed mid-stream (kill -9) and restarted, against a clean run.

Real parts only: the score stream is made by the real scoring decisions (decide + OODEnsemble)
on synthetic features with a drift, produced to the embedded broker; ``skyloop worker stats``
runs as a child process (Faust, changelog-backed tables); its tables are read back from their
changelog topics, as a restarted worker restores them. Expected: the killed-and-restarted
worker ends with tables equal to the clean run's, its first reference window survives the kill
(the first calibration is the clean run's, same id and same artifact), and no control event is
emitted twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processors.core.records import ScoreRecord
from tests.controller.stats_run import Outcome, Run

pytestmark = pytest.mark.e2e


def test_a_killed_worker_restores_its_tables_and_emits_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path, records: list[ScoreRecord], clean_run: Outcome
) -> None:
    killed = Run(kafka_bootstrap, tmp_path, records)
    try:
        killed.start()  # killed inside the first reference window, then after the drift
        killed.wait(lambda: killed.applied() >= 40, "the first 40 scores")
        killed.kill()
        killed.start()
        killed.wait(lambda: killed.applied_since_restart(400), "400 more scores after the restart")
        killed.kill()
        killed.start()
        killed.wait(killed.finished, "the restarted run to apply every score")
        killed.stop()
    finally:
        killed.stop()

    # Faust's own folder is the run's, not "<app id>-data" in whatever directory it started in
    assert (clean_run.data / "controller").is_dir()
    after = killed.outcome()
    assert not clean_run.gaps and not after.gaps, "records skipped"
    clean_events, killed_events = clean_run.events, after.events
    ids = [e["event_id"] for e in killed_events]
    assert len(ids) == len(set(ids)), "an event was emitted twice"

    def described(events: list[dict[str, Any]]) -> list[str]:
        return [f"{e['type']} {e['params'].get('reason')} {e['event_id'][:8]}" for e in events]

    if ids != [e["event_id"] for e in clean_events]:
        print("killed:", *described(killed_events), sep="\n  ")
        print("clean:", *described(clean_events), sep="\n  ")
    assert ids == [e["event_id"] for e in clean_events]
    kinds = [e["type"] for e in clean_events]
    assert kinds[0] == "calibration.updated" and "drift.detected" in kinds
    first = killed_events[0]  # built from the reference window the kill interrupted
    assert first["params"]["reason"] == "initial"
    assert first["params"]["artifact_id"] == clean_events[0]["params"]["artifact_id"]
    assert after.controller_state == clean_run.controller_state
    assert after.lane_windows == clean_run.lane_windows
    # the drift's revision: the same decisions revised, however often a restart produced them
    assert "decisions.revised" in kinds
    assert clean_run.revisions and after.revisions == clean_run.revisions
