"""The ``poison-crash`` fault: a valid record that kills its consumer every time it is processed.

``skyloop run --images N`` starts with ``SKYLOOP_FAULTS=score:kill:images.raw/3/K`` (the
fault hook, :mod:`processors.core.faults`; partition 3 holds the ``synthetic`` source, K =
N // 8): each time the scorer processes that image, alone or in a batch, it SIGKILLs itself, as
a segfault or the OOM killer would. The supervisor restarts it; the quarantine (ARCHITECTURE.md,
"Guarantees") dead-letters the image at the scorer's ``batch.poison_attempts``-th death and the
run goes on. Passing means: the run ended normally (exit 0); exactly that image is
dead-lettered by the scorer (``WorkerDiedError``, origin ``images.raw/3/K``) and has no score;
every other ingested image is stored once and has a production score; nothing else was
dead-lettered by the scorer. Images out counts the scored images plus the quarantined one, so a
clean row has images out = images in. Seconds to recover: from the scorer's first death until
its restarted successor reports the quarantine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from processors.core.progress import read_progress
from tools.chaos.live import MARKER_VAR
from tools.chaos.scenarios import Outcome, worker_pid

__all__ = ["FAULT", "poison_crash"]

FAULT = "poison-crash"
PARTITION = 3  # crc32("synthetic") % 4


def _until(predicate: Callable[[], bool], timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def poison_crash(images: int, work: Path, timeout_s: float = 900.0) -> Outcome:
    """Run ``skyloop run`` with one image that kills the scorer; count from its ClickHouse."""
    offset = max(1, images // 8)
    marker = uuid.uuid4().hex
    data = work / "data"
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env[MARKER_VAR] = marker
    env.update(
        SKYLOOP_REFERENCE_SIZE="30",
        SKYLOOP_BATCH_SIZE="16",
        SKYLOOP_FAULTS=f"score:kill:images.raw/{PARTITION}/{offset}",
        HF_HUB_OFFLINE="1",
    )
    argv = [sys.executable, "-m", "processors.cli", "run", "--images", str(images)]
    with (work / "stdout.txt").open("wb") as out, (work / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen([*argv, "--data-dir", str(data)], env=env, stdout=out, stderr=err)
    recover_s: float | None = None
    try:
        if not _until(lambda: (data / "latest").is_file(), 60, proc):
            raise RuntimeError(f"no run folder; see {work / 'stderr.txt'}")
        run_dir = Path((data / "latest").read_text().strip())
        first: list[int | None] = [None]

        def scorer_started() -> bool:
            first[0] = worker_pid(marker, "score")
            return first[0] is not None

        progress = run_dir / "progress"
        died = _until(scorer_started, 300, proc) and _until(
            lambda: worker_pid(marker, "score") != first[0], timeout_s, proc
        )
        t0 = time.monotonic()
        if died and _until(
            lambda: bool(read_progress(progress, "score").get("quarantined")), 300, proc
        ):
            recover_s = time.monotonic() - t0
        proc.wait(timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _count(run_dir, offset, proc.returncode, recover_s, work / "stdout.txt")


def _count(run_dir: Path, offset: int, code: int, recover_s: float | None, stdout: Path) -> Outcome:
    from processors.core.clickhouse import connect

    ingested = int(read_progress(run_dir / "progress", "ingest").get("images", 0))
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        by_scorer = "FROM dead_letters FINAL WHERE processor = 'score'"
        poison = (
            f"{by_scorer} AND original_topic = 'images.raw' AND original_partition = {PARTITION} "
            f"AND original_offset = {offset} AND error_class = 'WorkerDiedError'"
        )
        quarantined = one(f"SELECT count() {poison}")
        other_letters = one(f"SELECT count() {by_scorer}") - quarantined
        poison_ids = f"SELECT assumeNotNull(key) {poison}"
        production = "SELECT image_id FROM scores FINAL WHERE role = 'production'"
        stored = one("SELECT count() FROM images FINAL")
        scored = one(f"SELECT uniqExact(image_id) FROM ({production})")
        poison_scored = one(f"SELECT count() FROM ({production}) WHERE image_id IN ({poison_ids})")
        duplicates = stored - one("SELECT uniqExact(image_id) FROM images FINAL") + poison_scored
        unaccounted = one(
            f"SELECT count() FROM images FINAL WHERE image_id NOT IN ({production}) "
            f"AND image_id NOT IN ({poison_ids})"
        )
        losses = unaccounted + max(ingested - stored, 0) + other_letters
        redelivered = one("SELECT count() FROM scores") - one("SELECT count() FROM scores FINAL")
    finally:
        client.close()
    notes = f"{quarantined} quarantined at images.raw/{PARTITION}/{offset}"
    restarts = [line.strip() for line in stdout.read_text().splitlines() if "restarts:" in line]
    if restarts:
        notes += f", {restarts[0]}"
    if quarantined != 1:
        losses = max(losses, 1)  # the poison image must be accounted for by its dead letter
    out = scored + quarantined
    return Outcome(FAULT, ingested, out, duplicates, losses, redelivered, recover_s, code, notes)
