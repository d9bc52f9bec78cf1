"""A drift near the end of a finite run is revised before the run ends.

A drift's revision waits for the first score made under its recalibration; when the input
ends before one comes (the recalibration is emitted while the controller reads the last
batches), ``skyloop run`` asks for it (``revision.requested``) once every stage is done, so
the stored catalogue is corrected anyway. Before, such a drift's decisions stayed as served.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.progress import read_progress
from tests.e2e.skyloop_run import run_to_end
from tools.chaos.live import marked_env

pytestmark = pytest.mark.e2e

IMAGES, ONSET = 520, 424  # a flood 96 images before the end: recalibrated on 64 of them


def test_a_drift_at_the_end_of_the_input_is_revised_before_the_run_ends(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    data = tmp_path / "data"
    args = ["--source", f"synthetic?drifts={ONSET}:crowded", "--images", str(IMAGES)]
    stdout = run_to_end(args, data, marked_env(marker), marker)
    run_dir = Path(re.search(r"^\s*data: (.+)$", stdout, re.M).group(1))  # type: ignore[union-attr]
    assert read_progress(run_dir / "progress", "stats").get("revisions_waiting") == []
    client = connect(f"chdb://{run_dir / 'clickhouse'}")
    try:
        events = client.query(
            "SELECT event_id, type, issued_by, reason, caused_by, evidence FROM control_events "
            "FINAL ORDER BY kafka_offset"
        ).result_rows
        revised = client.query(
            "SELECT revision, count(), countIf(was_candidate), countIf(is_candidate) "
            "FROM score_revisions FINAL GROUP BY revision ORDER BY revision"
        ).result_rows
    finally:
        client.close()
    drift_calibrations = [e for e in events if e[1] == "calibration.updated" and e[3] == "drift"]
    assert drift_calibrations, [e[1:4] for e in events]
    revisions = [e for e in events if e[1] == "decisions.revised"]
    # every drift's recalibration has its revision, stored, whichever way it came due
    for calibration in drift_calibrations:
        made = [e for e in revisions if e[4][0] == calibration[0]]
        assert len(made) == 1, [e[1:4] for e in events]
    requests = [e for e in events if e[1] == "revision.requested"]
    assert all(e[2] == "skyloop run" for e in requests)
    by_request = [e for e in revisions if set(e[4]) & {r[0] for r in requests}]
    if requests:  # the input ended before a score under the recalibration: the run asked
        assert by_request, [e[1:4] for e in events]
    images = {number: count for number, count, _before, _after in revised}
    for event in revisions:
        assert images[int(event[5]["revision"])] >= event[5]["images"] > 0
    # the flood's decisions, corrected in the stored catalogue
    first = revised[0]
    assert first[2] > 2 * first[3], revised
