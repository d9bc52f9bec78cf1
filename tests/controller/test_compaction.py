"""The controller's changelogs compacted while it is down (what a hot-log rotation does), on
the embedded broker with the real worker: afterwards each changelog holds one record per live
key, the tables it rebuilds are unchanged, and the worker started on them goes on exactly as a
worker that was never stopped (same control events, same tables at the end).
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from processors.controller.tables import changelog_topics
from processors.core.compaction import compact_in_child, latest_per_key
from processors.core.records import ScoreRecord
from tests.controller.stats_run import Outcome, Run

pytestmark = pytest.mark.e2e


def test_latest_per_key_keeps_the_last_value_and_drops_deleted_keys() -> None:
    log = [(b"a", b"1", None), (b"b", b"2", None), (b"a", b"3", None), (b"c", b"4", None)]
    assert latest_per_key([*log, (b"b", None, None)]) == [(b"a", b"3", None), (b"c", b"4", None)]
    # the fault this guards against: first value kept instead of the last
    assert latest_per_key(log) != [(b"a", b"1", None), (b"b", b"2", None), (b"c", b"4", None)]


def _applied_at_least(run: Run, n: int) -> bool:
    return run.applied() >= n


def test_compaction_between_stops_keeps_the_tables_and_the_decisions(
    kafka_bootstrap: str,
    tmp_path: Path,
    records: list[ScoreRecord],
    clean_run: Outcome,
) -> None:
    compacted = Run(kafka_bootstrap, tmp_path, records)
    topics = changelog_topics(compacted.settings)
    results = []
    try:
        # stopped twice (inside the first reference window, then after the drift), compacted
        # each time while down, as a rotation does
        for applied in (300, 400):  # each process counts its own: 700 in all, past the drift
            compacted.start()
            compacted.wait(partial(_applied_at_least, compacted, applied), f"{applied} scores")
            compacted.stop()
            (compacted.data / "progress" / "stats.json").unlink(missing_ok=True)
            before = compacted.read_all(topics)
            results.extend(compact_in_child(compacted.settings, kafka_bootstrap, topics))
            after = compacted.read_all(topics)
            for topic in topics:
                kept = after[topic]
                keys = Counter(key for key, _ in kept)
                assert all(n == 1 for n in keys.values()), f"{topic}: a key twice"
                assert all(value is not None for _, value in kept), f"{topic}: a tombstone kept"
                assert Run.fold(kept) == Run.fold(before[topic]), f"{topic} changed"
        compacted.start()
        compacted.wait(compacted.finished, "the compacted run to apply every score")
        compacted.stop()
    finally:
        compacted.stop()

    outcome = compacted.outcome()
    assert not clean_run.gaps and not outcome.gaps, "records skipped"
    controller = [r for r in results if r.topic == topics[0]]
    assert controller and all(r.records_after < r.records_before for r in controller)
    ids = [e["event_id"] for e in outcome.events]
    assert len(ids) == len(set(ids)), "an event was emitted twice"
    assert ids == [e["event_id"] for e in clean_run.events]
    assert outcome.controller_state == clean_run.controller_state
    assert outcome.lane_windows == clean_run.lane_windows
