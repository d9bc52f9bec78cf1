"""One fault injected into a real ``skyloop run``, and what it cost.

Each scenario starts ``skyloop run --images N`` in its own data folder, waits until the scorer
is past a third of the images (mid-stream, mid-batch), injects its fault, lets the run finish
and then counts, from the run's ClickHouse tables:

- images in: distinct images ingest published; images out: distinct images with a production
  score under FINAL;
- duplicates: rows of ``images``, ``scores`` and ``candidates`` under FINAL beyond one per
  identity (must be 0);
- losses: ingested images with no production score, or not stored at all (must be 0);
- redelivered: score rows before FINAL beyond one per identity (at-least-once, absorbed; a
  lower bound, since ClickHouse's background merges may already have collapsed some);
- seconds to recover: from the fault until the restarted processor is ready again (kills), or
  until the surviving scorer scores again (rebalance).

Faults: ``kill-score``, ``kill-detect``, ``kill-sink``, ``kill-stats`` (SIGKILL; ``stats`` is the
controller worker's former name, kept for the fault table), ``poison``
(undecodable bytes on every topic: each must end as a dead letter or a logged skip, the run
unharmed), ``rebalance`` (a second scorer joins the group mid-run, then is killed),
``kill-broker`` (SIGKILL of the durable embedded broker, ``broker_durable``: the run starts it
again on its storage and every client reconnects; recovery is until the scorer scores again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from processors.core.progress import read_progress
from processors.topology import resolve

__all__ = ["FAULTS", "Outcome", "run_scenario", "worker_pid"]

FAULTS = (
    "kill-score",
    "kill-detect",
    "kill-sink",
    "kill-stats",
    "kill-broker",
    "poison",
    "rebalance",
    "poison-crash",  # tools/chaos/poison_crash.py
)
POISON = b"\x00not avro: chaos"


@dataclass(frozen=True)
class Outcome:
    fault: str
    images_in: int
    images_out: int
    duplicates: int
    losses: int
    redelivered: int
    recover_s: float | None
    exit_code: int
    notes: str = ""

    @property
    def clean(self) -> bool:
        return (
            self.exit_code == 0
            and self.duplicates == 0
            and self.losses == 0
            and self.images_out == self.images_in
        )


def _processes_with(marker: str) -> list[int]:
    needle = f"SKYLOOP_CHAOS_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            alive = (entry / "stat").read_text().split(") ", 1)[1].split()[0] != "Z"
            if alive and needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def worker_pid(marker: str, name: str) -> int | None:
    """The pid of the live ``skyloop worker NAME`` started under ``marker``."""
    needle = f"worker\0{name}\0".encode()
    for pid in _processes_with(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() + b"\0"
        except FileNotFoundError:
            continue
        if needle in cmdline and b"processors.core.guard" not in cmdline:
            return pid
    return None


def broker_pid(marker: str) -> int | None:
    """The pid of the run's Tansu broker."""
    for pid in _processes_with(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"--storage-engine" in cmdline and b"processors.core.guard" not in cmdline:
            return pid
    return None


def _env(marker: str, durable: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    if durable:
        env["SKYLOOP_BROKER_DURABLE"] = "true"
    env.update(
        SKYLOOP_CHAOS_MARKER=marker,
        SKYLOOP_REFERENCE_SIZE="30",
        SKYLOOP_BATCH_SIZE="16",
        HF_HUB_OFFLINE="1",
    )
    return env


def _wait(predicate: object, timeout_s: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _recovered(
    marker: str,
    name: str,
    progress_name: str,
    old_pid: int,
    progress: Path,
    since_wall: float,
    proc: subprocess.Popen[bytes],
) -> bool:
    pid = worker_pid(marker, name)
    if pid is None or pid == old_pid:
        return False
    path = progress / f"{progress_name}.json"
    try:
        fresh = path.stat().st_mtime > since_wall
    except FileNotFoundError:
        return False
    return fresh and bool(read_progress(progress, progress_name).get("ready"))


def _poison(run_dir: Path) -> int:
    from confluent_kafka import Producer

    from processors.core.records import TOPICS

    stack = json.loads((run_dir / "stack.json").read_text())
    producer = Producer({"bootstrap.servers": stack["bootstrap"], "linger.ms": 0})
    for base in TOPICS:
        producer.produce(
            f"{stack['topic_prefix']}{base}",
            key=f"chaos-{base}".encode(),
            value=POISON,
            partition=0,
        )
    producer.flush(30)
    return len(TOPICS)


def _extra_scorer(run_dir: Path, marker: str, logs: Path) -> subprocess.Popen[bytes]:
    stack = json.loads((run_dir / "stack.json").read_text())
    env = {
        **_env(marker),
        "SKYLOOP_BOOTSTRAP_SERVERS": stack["bootstrap"],
        "SKYLOOP_TOPIC_PREFIX": stack["topic_prefix"],
        "SKYLOOP_DATA_DIR": str(run_dir),
        "SKYLOOP_PROGRESS_DIR": str(run_dir / "chaos-progress"),
    }
    with open(logs, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "processors.cli", "worker", "score"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_scenario(fault: str, images: int, work: Path, timeout_s: float = 900.0) -> Outcome:
    """Run ``skyloop run`` with ``fault`` injected; see the module docstring for the counts."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; accepted: {', '.join(FAULTS)}")
    if fault == "poison-crash":
        from tools.chaos.poison_crash import poison_crash

        return poison_crash(images, work, timeout_s)
    marker = uuid.uuid4().hex
    data = work / "data"
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"
    work.mkdir(parents=True, exist_ok=True)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
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
            env=_env(marker, durable=fault == "kill-broker"),
            stdout=out,
            stderr=err,
        )
    recover_s: float | None = None
    notes = ""
    extra: subprocess.Popen[bytes] | None = None
    try:
        if not _wait(lambda: (data / "latest").is_file(), 60, proc):
            raise RuntimeError(f"no run folder; see {err_path}")
        run_dir = Path((data / "latest").read_text().strip())
        progress = run_dir / "progress"

        def scored() -> int:
            return int(read_progress(progress, "score").get("scored", 0))

        _wait(lambda: scored() >= images // 3, timeout_s, proc)
        t0, wall0 = time.monotonic(), time.time()
        if fault == "kill-broker":
            pid = broker_pid(marker)
            if pid is None:
                raise RuntimeError("no live broker to kill")
            before, scorer = scored(), worker_pid(marker, "score")

            def scoring_again() -> bool:
                # a scorer restarted meanwhile (its deliveries failed) counts from zero
                same = worker_pid(marker, "score") == scorer
                return scored() > (before if same else 0) + 16

            os.kill(pid, signal.SIGKILL)
            if _wait(scoring_again, 300, proc):
                recover_s = time.monotonic() - t0
            notes = "durable broker"
        elif fault.startswith("kill-"):
            spec = resolve(fault.removeprefix("kill-"))
            name = spec.name
            pid = worker_pid(marker, name)
            if pid is None:
                raise RuntimeError(f"no live {name} worker to kill")
            os.kill(pid, signal.SIGKILL)
            mark = spec.group  # its progress file (the controller's keeps its former name)
            if _wait(lambda: _recovered(marker, name, mark, pid, progress, wall0, proc), 300, proc):
                recover_s = time.monotonic() - t0
        elif fault == "poison":
            notes = f"{_poison(run_dir)} poison messages"
        elif fault == "rebalance":
            extra = _extra_scorer(run_dir, marker, run_dir / "logs" / "score-extra.log")
            joined = _wait(
                lambda: read_progress(run_dir / "chaos-progress", "score").get("scored", 0) > 0,
                120,
                proc,
            )
            notes = "second scorer scored" if joined else "second scorer got no partition"
            before = scored()
            t0 = time.monotonic()
            extra.send_signal(signal.SIGKILL)
            extra.wait(30)
            if _wait(lambda: scored() > before, 300, proc):
                recover_s = time.monotonic() - t0
        proc.wait(timeout_s)
    finally:
        for p in (proc, extra):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return _count(fault, run_dir, proc.returncode, recover_s, notes, out_path)


def _count(
    fault: str, run_dir: Path, code: int, recover_s: float | None, notes: str, stdout: Path
) -> Outcome:
    from processors.core.clickhouse import connect

    ingested = int(read_progress(run_dir / "progress", "ingest").get("images", 0))
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        production = "SELECT image_id FROM scores FINAL WHERE role = 'production'"
        stored = one("SELECT count() FROM images FINAL")
        out = one(f"SELECT uniqExact(image_id) FROM ({production})")
        duplicates = (
            stored
            - one("SELECT uniqExact(image_id) FROM images FINAL")
            + one("SELECT count() FROM scores FINAL")
            - one("SELECT uniqExact(image_id, model_version, role) FROM scores FINAL")
            + one("SELECT count() FROM candidates FINAL")
            - one("SELECT uniqExact(image_id, model_version) FROM candidates FINAL")
        )
        unscored = one(f"SELECT count() FROM images FINAL WHERE image_id NOT IN ({production})")
        losses = unscored + max(ingested - stored, 0)
        redelivered = one("SELECT count() FROM scores") - one("SELECT count() FROM scores FINAL")
        if fault == "poison":
            topics = one(
                "SELECT uniqExact(original_topic) FROM dead_letters FINAL "
                "WHERE position(raw, 'chaos') > 0"
            )
            notes += f", dead letters for {topics} topics"
    finally:
        client.close()
    restarts = [line.strip() for line in stdout.read_text().splitlines() if "restarts:" in line]
    if restarts:
        notes = ", ".join(filter(None, [notes, restarts[0]]))
    return Outcome(fault, ingested, out, duplicates, losses, redelivered, recover_s, code, notes)
