"""Resume after a crash of everything, and a memory broker that dies alone (processors.resume).

A real ``skyloop run`` over a folder of small PNGs: every process of it is stopped and killed
with SIGKILL mid-run (no process gets to clean up), then ``skyloop run --resume`` continues the
same run folder: every image stored and scored once (FINAL), the control log folded to the
state ClickHouse held before the crash (fingerprint), files already stored not read again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from processors.core.progress import read_progress
from tools.chaos.live import MARKER_VAR, broker_pid, processes_with

pytestmark = pytest.mark.e2e

IMAGES = 240


def _folder(path: Path, n: int) -> Path:
    """``n`` distinct 24x24 grey PNGs: sky noise, every 40th with a bright streak."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        pixels = rng.normal(100, 8, (24, 24))
        if i % 40 == 39:
            pixels[i % 24, :] += 120
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path / f"{i:04d}.png")
    return path


def _env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    # a short ingest lead leaves images ingested but not yet scored when the kill comes
    env[MARKER_VAR] = marker  # how tools.chaos.live finds the run's processes
    env.update(
        HF_HUB_OFFLINE="1",
        SKYLOOP_INGEST_MAX_LAG="48",
        SKYLOOP_BATCH_SIZE="16",
    )
    return env


def _kill_everything(marker: str) -> int:
    """SIGSTOP then SIGKILL every process of the run (the tree started under ``marker``)."""
    pids = processes_with(marker)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + 20
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(pids)


def _run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "processors.cli", "run", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


# chdb lets a process open one directory for its whole life, and this test process meets one
# run folder per parametrized case: every read of a run's ClickHouse happens in a child process.
_CHILD = """
import json, sys
from processors.core.clickhouse import connect
client = connect("chdb://" + sys.argv[1])
try:
    result = client.query(sys.argv[2])
    columns, rows = list(result.column_names), [list(r) for r in result.result_rows]
finally:
    client.close()
print(json.dumps({"columns": columns, "rows": rows}, default=str))
"""


def _query(run_dir: Path, sql: str) -> tuple[list[str], list[list[Any]]]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run_dir / "clickhouse"), sql],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    return answer["columns"], answer["rows"]


def _rows(run_dir: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    return [tuple(row) for row in _query(run_dir, sql)[1]]


_FINGERPRINT = """
import sys
from processors.core.clickhouse import connect
from processors.core.codec import default_codec
from processors.core.control import replay
from processors.resume_log import EVENTS_SQL, events_from_rows
client = connect("chdb://" + sys.argv[1])
try:
    result = client.query(EVENTS_SQL)
    rows = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
finally:
    client.close()
codec, name = default_codec(), "skyloop.ControlEvent"
events = [codec.decode(codec.encode(e, name), name) for e in events_from_rows(rows)]
print(len(rows), replay(enumerate(events)).fingerprint())
"""


def _stored_fingerprint(run_dir: Path) -> tuple[int, str]:
    """The stored control log's length and fold fingerprint, each event decoded as the workers
    decode it from the topic."""
    out = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT, str(run_dir / "clickhouse")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    count, fingerprint = out.stdout.strip().splitlines()[-1].split()
    return int(count), fingerprint


_COUNTS = """
SELECT
  (SELECT count() FROM images FINAL),
  (SELECT uniqExact(image_id) FROM scores FINAL WHERE role = 'production'),
  (SELECT count() FROM scores FINAL WHERE role = 'production'),
  (SELECT count() FROM (SELECT image_id FROM scores FINAL WHERE role = 'production'
                        GROUP BY image_id HAVING count() > 1))
"""


@pytest.mark.parametrize("broker", ["memory", "durable"])
def test_resume_after_the_whole_run_was_killed(tmp_path: Path, broker: str) -> None:
    """A memory broker's log is rebuilt from ClickHouse; a durable one kept its log (and the
    run its shared artifacts), and ingest skips what is stored either way."""
    folder = _folder(tmp_path / "images", IMAGES)
    data = tmp_path / "data"
    marker = uuid.uuid4().hex
    env = {**_env(marker), "SKYLOOP_BROKER_DURABLE": str(broker == "durable").lower()}
    args = ["--source", f"dir:{folder}", "--reference-size", "20", "--data-dir", str(data)]
    proc = _run(args, env, tmp_path / "first.txt")
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "first.txt").read_text()[-3000:]
            latest = data / "latest"
            if latest.is_file():
                progress = Path(latest.read_text().strip()) / "progress"
                if read_progress(progress, "sink").get("scores", 0) >= 60:
                    break
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.3)
        assert _kill_everything(marker) >= 7  # skyloop, broker, 5 workers, ingest (+ guards)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    run_dir = Path((data / "latest").read_text().strip())
    stored, scored, _, _ = _rows(run_dir, _COUNTS)[0]
    assert 0 < scored < IMAGES, "the kill came too late to test anything"
    events, fingerprint = _stored_fingerprint(run_dir)
    assert events > 0  # the source was calibrated before the crash
    assert not (run_dir / "finished").exists()

    resumed = _run(["--resume", "--data-dir", str(data)], env, tmp_path / "second.txt")
    out, _ = resumed.communicate(timeout=600)
    err = (tmp_path / "second.txt").read_text()
    assert resumed.returncode == 0, err[-3000:] + out[-3000:]
    assert f"run folder {run_dir} (resumed)" in err
    if broker == "memory":
        assert f"state {fingerprint[:12]}" in err, err  # the control log folds as it did
    images, distinct, rows, twice = _rows(run_dir, _COUNTS)[0]
    assert (images, distinct, rows, twice) == (IMAGES, IMAGES, IMAGES, 0), (stored, scored)
    # files already stored were not read again; what was not stored was read once
    ingest = read_progress(run_dir / "progress", "ingest")
    dir_counts = ingest["sources"]["dir"]
    assert dir_counts["skipped_stored"] + dir_counts["files"] == IMAGES, dir_counts
    assert dir_counts["skipped_stored"] >= stored
    assert ingest["skipped_stored"] + ingest["published"] == IMAGES  # each item counted once
    assert (run_dir / "finished").is_file()
    assert f"images {IMAGES}, scored {IMAGES}" in out, out
    assert f"ledger: ingested {IMAGES} = scored {IMAGES} + cut 0" in out, out
    assert "NOT BALANCED" not in out
    # the control state the resumed run started from is a prefix of the log it ended with
    after, _ = _stored_fingerprint(run_dir)
    assert after >= events

    # nothing is left to resume now
    again = subprocess.run(
        [sys.executable, "-m", "processors.cli", "run", "--resume", "--data-dir", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode != 0
    assert "nothing to resume" in again.stderr and "finished" in again.stderr


def test_resume_with_nothing_to_resume_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "processors.cli", "run", "--resume", "--data-dir", str(tmp_path)],
        env=_env(uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert f"nothing to resume in {tmp_path}: no runs under" in done.stderr, done.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "processors.cli", "run", "--resume", "--images", "5"],
        env=_env(uuid.uuid4().hex),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "drop --images" in refused.stderr, refused.stderr


def test_memory_broker_death_mid_run_is_recovered(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "images", IMAGES)
    data = tmp_path / "data"
    marker = uuid.uuid4().hex
    args = ["--source", f"dir:{folder}", "--reference-size", "20", "--data-dir", str(data)]
    proc = _run(args, _env(marker), tmp_path / "run.txt")
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "run.txt").read_text()[-3000:]
            latest = data / "latest"
            if latest.is_file():
                progress = Path(latest.read_text().strip()) / "progress"
                if read_progress(progress, "sink").get("scores", 0) >= 60:
                    break
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.3)
        pid = broker_pid(marker)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "run.txt").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "the embedded broker died" in err
    assert "rebuilt from ClickHouse 1" in out, out
    assert f"ledger: ingested {IMAGES} = scored {IMAGES} + cut 0" in out, out
    run_dir = Path((data / "latest").read_text().strip())
    assert _rows(run_dir, _COUNTS)[0] == (IMAGES, IMAGES, IMAGES, 0)
