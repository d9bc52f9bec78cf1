"""Faults during `skyloop run`: a processor killed with SIGKILL is restarted, nothing is lost.

The run is judged by the chaos checker (tools/chaos/checker.py), which reads every record back
from the topics: "none twice" means no copy that the kill does not explain and no image served
twice, counted before ClickHouse's identity deduplicates anything.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.progress import read_progress
from tools.chaos.live import LiveRun, processes_with
from tools.chaos.scenarios import RECOVERY_TARGET_S

pytestmark = pytest.mark.e2e

IMAGES = 200


def test_kill_9_of_the_scorer_mid_run_is_healed_and_loses_nothing(tmp_path: Path) -> None:
    run = LiveRun(tmp_path, IMAGES)
    try:
        run.start()
        # mid-stream: past the calibration windows, well before the end
        assert run.wait(lambda: run.scored() >= 64, 400), "scoring never reached 64"
        pid = run.pid("score")
        assert pid is not None
        t0, wall0 = time.monotonic(), time.time()
        os.kill(pid, signal.SIGKILL)
        assert run.wait(lambda: run.ready_since("score", pid, wall0), 300), "never recovered"
        recover_s = time.monotonic() - t0
        code = run.finish(600)
    finally:
        run.close()
    stdout, stderr = run.stdout.read_text(), run.stderr.read_text()
    assert code == 0, stderr[-3000:]
    assert "restarts: score 1" in stdout
    assert "restarted score" in stderr
    assert not processes_with(run.marker), "processes outlived skyloop run"
    assert recover_s <= RECOVERY_TARGET_S, f"recovery took {recover_s:.1f} s"

    verdict = run.verdict()
    assert run.monitor.restarts.get("score") == 1
    assert verdict.images_in == verdict.images_out == IMAGES
    # none lost, none twice: counted on the topics, before any deduplication
    assert verdict.clean, verdict.details
    assert verdict.duplicates == 0 and verdict.losses == 0 and verdict.served_twice == 0
    client = connect(f"chdb://{run.run_dir / 'clickhouse'}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        assert one("SELECT count() FROM dead_letters FINAL") == 0
        candidates = one("SELECT count() FROM scores FINAL WHERE is_candidate")
        assert one("SELECT count() FROM candidates FINAL") == candidates
    finally:
        client.close()
    log = (run.run_dir / "logs" / "score.log").read_text()
    assert "exited with code -9; restarting" in log
    assert json.loads((run.run_dir / "progress" / "score.json").read_text())["ready"] is True
    assert read_progress(run.progress, "score").get("scored", 0) > 0
