"""The durable broker's hot log, through ``skyloop run``: bounded on disk, and its epoch carried
to the next run on the same data folder (processors.core.durable_epoch)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from processors.core.progress import read_progress
from processors.core.retention import read_signal
from tools.chaos.live import MARKER_VAR, processes_with

pytestmark = pytest.mark.e2e


def _run(data: Path, images: int, marker: str) -> tuple[str, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update(
        {
            MARKER_VAR: marker,
            "HF_HUB_OFFLINE": "1",
            "SKYLOOP_BROKER_DURABLE": "true",
            "SKYLOOP_LOG_RETENTION_BYTES": str(4 * 2**20),  # a rotation within the run
            "SKYLOOP_REFERENCE_SIZE": "30",
            "SKYLOOP_INGEST_MAX_LAG": "100",  # a short drain
        }
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "processors.cli",
            "run",
            "--images",
            str(images),
            "--data-dir",
            str(data),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not processes_with(marker), "processes outlived skyloop run"
    return done.stdout + done.stderr, Path((data / "latest").read_text().strip())


def _ledger(output: str) -> tuple[int, int]:
    found = re.search(
        r"^ledger: ingested (\d+) = scored (\d+) \+ cut 0 \+ dead letters 0", output, re.M
    )
    assert found, output[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_a_durable_run_rotates_and_the_next_run_goes_on_in_its_epoch(tmp_path: Path) -> None:
    data, marker = tmp_path / "data", uuid.uuid4().hex
    first, first_dir = _run(data, 300, marker)
    assert _ledger(first) == (300, 300)
    rotations = re.findall(r"^hot log: rotated epoch (\d+)", first, re.M)
    assert rotations, "no rotation within the bound"
    epoch = int(rotations[-1])
    state = json.loads((data / "broker-state" / "hotlog.json").read_text())
    assert state == {"epoch": epoch, "phase": "open"}

    # a new run on the folder: its topics are epoch `epoch`'s, whose offsets began at 0 again;
    # started at epoch 0 instead, its controller took every score for one it had applied
    second, second_dir = _run(data, 60, marker)
    assert second_dir != first_dir
    assert _ledger(second) == (60, 60)
    assert read_signal(second_dir / "progress")[0] >= epoch
    controller = read_progress(second_dir / "progress", "stats")
    assert controller.get("applied") == 60 and not controller.get("gaps")
