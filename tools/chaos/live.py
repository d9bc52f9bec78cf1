"""One live ``skyloop run`` under a fault: its processes, its topics read back, its verdict.

:class:`LiveRun` starts ``skyloop run --images N`` in its own data folder with a marker in the
environment (so its processes can be found, and only its), starts a
:class:`~tools.chaos.tap.Tap` on its topics and a :class:`~tools.chaos.monitor.Monitor` of its
workers as soon as the broker is up, and after the run judges it with
:func:`tools.chaos.checker.check`. A helper scorer started by a scenario carries
``SKYLOOP_CHAOS_EXTRA=1`` and is never taken for the run's own scorer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from processors.core.progress import read_progress
from tools.chaos.checker import Verdict, check, load_stored
from tools.chaos.monitor import Monitor
from tools.chaos.tap import Tap

__all__ = [
    "MARKER_VAR",
    "WORKERS",
    "LiveRun",
    "broker_pid",
    "chaos_env",
    "marked_env",
    "processes_with",
    "worker_pid",
]

WORKERS = ("sink", "controller", "detect", "train", "score")
"""The restartable workers of ``skyloop run`` (ingest is not restarted: its death ends a run)."""
EXTRA = b"SKYLOOP_CHAOS_EXTRA=1"
MARKER_VAR = "SKYLOOP_RUN_MARKER"
"""The environment variable that marks a run's process tree (children inherit it)."""


def processes_with(marker: str) -> list[int]:
    """The pids of the live (not zombie) processes whose environment has ``MARKER_VAR=marker``:
    a run started with that marker and every process it started."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            alive = (entry / "stat").read_text().split(") ", 1)[1].split()[0] != "Z"
            if alive and needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):  # gone, not ours, or an unreadable stat
            continue
    return found


def worker_pid(marker: str, name: str) -> int | None:
    """The pid of the live ``skyloop worker NAME`` started under ``marker`` by the run itself."""
    needle = f"worker\0{name}\0".encode()
    for pid in processes_with(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() + b"\0"
            if needle not in cmdline or b"processors.core.guard" in cmdline:
                continue
            if EXTRA in Path(f"/proc/{pid}/environ").read_bytes():
                continue
        except (FileNotFoundError, ProcessLookupError):
            continue
        return pid
    return None


def broker_pid(marker: str) -> int | None:
    """The pid of the run's Tansu broker."""
    for pid in processes_with(marker):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"--storage-engine" in cmdline and b"processors.core.guard" not in cmdline:
            return pid
    return None


def marked_env(marker: str) -> dict[str, str]:
    """This environment without its ``SKYLOOP_`` settings, offline, marked with ``marker``:
    every process of a run started in it inherits the mark (:func:`processes_with`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")}
    env.update({"HF_HUB_OFFLINE": "1", MARKER_VAR: marker})
    return env


def chaos_env(marker: str, durable: bool = False) -> dict[str, str]:
    """:func:`marked_env` with the fault scenarios' small reference and batches."""
    env = marked_env(marker)
    if durable:
        env["SKYLOOP_BROKER_DURABLE"] = "true"
    env.update(SKYLOOP_REFERENCE_SIZE="30", SKYLOOP_BATCH_SIZE="16")
    return env


def _descendants(root: int) -> list[int]:
    """The pids below ``root`` (through ``/proc/PID/task/TID/children``), each listed before
    its own descendants."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


class LiveRun:
    """``skyloop run`` with its tap and monitor; see the module docstring."""

    def __init__(self, work: Path, images: int, *, durable: bool = False) -> None:
        self.work = work
        self.images = images
        self.durable = durable
        self.marker = uuid.uuid4().hex
        self.env = chaos_env(self.marker, durable)
        self.data = work / "data"
        self.stdout = work / "stdout.txt"
        self.stderr = work / "stderr.txt"
        self.run_dir = Path()
        self.stack: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.tap: Tap | None = None
        self.monitor = Monitor(self._pids)

    def start(self) -> LiveRun:
        self.work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "processors.cli", "run", "--images", str(self.images)]
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [*cmd, "--data-dir", str(self.data)], env=self.env, stdout=out, stderr=err
            )
        if not self.wait(lambda: (self.data / "latest").is_file(), 60):
            raise RuntimeError(f"no run folder; see {self.stderr}")
        self.run_dir = Path((self.data / "latest").read_text().strip())
        if not self.wait(lambda: (self.run_dir / "stack.json").is_file(), 60):
            raise RuntimeError(f"no broker; see {self.stderr}")
        self.stack = json.loads((self.run_dir / "stack.json").read_text())
        self.tap = Tap(self.stack["bootstrap"], self.stack["topic_prefix"]).start()
        self.monitor.start()
        return self

    @property
    def progress(self) -> Path:
        return self.run_dir / "progress"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Poll ``predicate`` until true (True), or the run ended or time ran out (False)."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if not self.alive() or time.monotonic() > deadline:
                return bool(predicate())
            time.sleep(0.1)
        return True

    def scored(self) -> int:
        """Distinct images with a production score on ``scores`` so far (survives restarts)."""
        return self.tap.scored() if self.tap is not None else 0

    def pid(self, worker: str) -> int | None:
        """The live pid of one of :data:`WORKERS` or ``broker`` (of this run's process tree)."""
        return self._pids()[worker]

    def _pids(self) -> dict[str, int | None]:
        """Every worker's and the broker's pid, from one walk of the run's process tree (the
        monitor calls this five times a second: a scan of all of /proc each time would cost a
        good part of a core). A worker is its topmost matching process: a child it forks has its
        command line until it execs, and must not be taken for a restart (the walk lists every
        process before its descendants)."""
        found: dict[str, int | None] = dict.fromkeys((*WORKERS, "broker"))
        if self.proc is None:
            return found
        for pid in _descendants(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() + b"\0"
                state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if b"processors.core.guard" in cmdline or state == "Z":
                continue
            if b"--storage-engine" in cmdline and found["broker"] is None:
                found["broker"] = pid
            for worker in WORKERS:
                if f"worker\0{worker}\0".encode() in cmdline and found[worker] is None:
                    found[worker] = pid
        return found

    def ready_since(self, worker: str, old_pid: int, since_wall: float) -> bool:
        """A new process of ``worker`` (not ``old_pid``) wrote ``ready`` after ``since_wall``."""
        from processors.topology import resolve

        pid = self.pid(worker)
        if pid is None or pid == old_pid:
            return False
        mark = resolve(worker).group  # its progress file (the controller's keeps ``stats``)
        try:
            fresh = (self.progress / f"{mark}.json").stat().st_mtime > since_wall
        except FileNotFoundError:
            return False
        return fresh and bool(read_progress(self.progress, mark).get("ready"))

    def finish(self, timeout_s: float) -> int:
        """Wait for the run to end; its exit code."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.tap is not None:
            self.tap.stop()
        self.monitor.stop()

    def verdict(self) -> Verdict:
        """Stop the tap and the monitor and judge the finished run."""
        from processors.core.clickhouse import connect

        assert self.tap is not None
        seen = self.tap.stop()
        windows = self.monitor.stop()
        ingest = read_progress(self.progress, "ingest")
        client = connect(f"chdb://{(self.run_dir / 'clickhouse').resolve()}")
        try:
            stored = load_stored(client)
        finally:
            client.close()
        (self.work / "windows.json").write_text(json.dumps([w.__dict__ for w in windows], indent=1))
        verdict = check(seen, windows, ingest, stored)
        (self.work / "verdict.txt").write_text(f"{verdict}\n")
        return verdict
