"""Resuming a local run: after a crash of everything (``skyloop run --resume``), and in-run
after the embedded memory broker died alone.

A run writes its arguments to ``<run>/run.json`` when it starts and ``<run>/finished`` once its
report is written; a run folder with the first and not the second is **unfinished**.
``skyloop run --resume`` continues the newest unfinished run of the data dir in the same folder
(its chdb, artifacts, logs), with the arguments of ``run.json``.

Both cases go the same way (:class:`Stack`), on an empty broker: topics created, the sink
started first (it owns the chdb path and answers SQL), the broker's log rebuilt from ClickHouse
(:func:`processors.resume_log.rebuild`: the control log republished with its event ids, unserved
images re-produced from their pixels, a skip list of what is stored), the other workers
started, then ingest reading its sources again from their start, skipping every image already
stored (by id, or by file path before reading where the source can). Consumer groups start
from the beginning of the new topics. The stop condition then reads ClickHouse, not the
processors' own counters (:class:`~processors.local_restarts.RestartedTruth`, ``forced``).

Invariant: every image stored in ClickHouse before the crash ends stored and scored once
(distinct ids; a rescored image replaces its rows by identity). An ``--images N`` run ingests N
items in all: the new ingest takes N minus the images and source dead letters already stored,
and skipped items do not count. A ``--duration`` run ingests for what was left of it when the
ingest progress was last written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from processors.core.config import Settings
from processors.core.exceptions import SkyloopError
from processors.core.kafka import ensure_topics
from processors.core.progress import read_progress
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor
from processors.local_restarts import RestartedTruth
from processors.resume_log import Stored, rebuild, write_skip_list
from processors.topology import resolve

__all__ = [
    "FINISHED",
    "RUN_FILE",
    "RunArgs",
    "Stack",
    "mark_finished",
    "unfinished_run",
]

RUN_FILE = "run.json"
FINISHED = "finished"
WORKERS = ("sink", "controller", "detect", "train", "score")
"""The workers started before ingest, in this order (names of :mod:`processors.topology`)."""
FIRST = ("score", "controller", "sink")
"""A fresh run's first workers: the scorer, the controller that calibrates its first images,
and the sink (it answers ``skyloop sql`` during the run). Detect and train start once the
scorer is ready, so that its start (torch, the model) does not share the cores with five
imports at once."""


@dataclass(frozen=True)
class RunArgs:
    """What a run was asked to do (``<run>/run.json``), so ``--resume`` needs no repeat."""

    sources: list[str]
    images: int | None
    duration_s: float | None = None
    reference_size: int | None = None
    pid: int = 0
    """The supervisor's pid, so a run still alive is never resumed beside itself."""
    ingest_started_at: float | None = None
    """Wall-clock time (epoch seconds) the first ingest started."""

    def write(self, run_dir: Path) -> None:
        tmp = run_dir / f"{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(run_dir / RUN_FILE)

    @classmethod
    def read(cls, run_dir: Path) -> RunArgs:
        return cls(**json.loads((run_dir / RUN_FILE).read_text()))


def mark_finished(run_dir: Path) -> None:
    """The run's report is written: the run is not resumable any more."""
    (run_dir / FINISHED).write_text(datetime.now(UTC).isoformat() + "\n")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live skyloop process (not a reused pid, where /proc can tell)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"skyloop" in cmdline or b"processors" in cmdline


def unfinished_run(data_dir: Path) -> Path:
    """The newest unfinished run folder of ``data_dir``; SkyloopError saying why there is none."""
    runs = data_dir / "runs"
    found = runs.iterdir() if runs.is_dir() else iter(())
    folders = sorted((p for p in found if p.is_dir()), reverse=True)
    for folder in folders:
        if (folder / FINISHED).exists() or not (folder / RUN_FILE).is_file():
            continue
        args = RunArgs.read(folder)
        if _alive(args.pid):
            raise SkyloopError(
                f"nothing to resume: the run in {folder} is still running (pid {args.pid})"
            )
        return folder.resolve()
    raise SkyloopError(
        f"nothing to resume in {data_dir}: "
        + (
            f"all {len(folders)} runs under {runs} finished (or predate resumable runs)"
            if folders
            else f"no runs under {runs}"
        )
        + "; start one with `skyloop run`"
    )


class Stack:
    """Starts (or starts again) the workers and ingest of a run, rebuilding a lost log first.

    ``resumed``: the broker's log is gone (a memory broker), so it is rebuilt before the
    workers start. ``continued``: this process continues an unfinished run folder
    (``--resume``). Either way the stop condition reads ClickHouse from the start.
    """

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        broker: EmbeddedBroker,
        sup: Supervisor,
        truth: RestartedTruth,
        args: RunArgs,
        out: TextIO,
        *,
        resumed: bool = False,
        continued: bool = False,
        env_for: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.progress = run_dir / "progress"
        self.broker = broker
        self.sup = sup
        self.truth = truth
        self.args = args
        self.out = out
        self.resumed = resumed
        self.continued = continued
        self.env_for = env_for or (lambda _name: {})
        """A child's own environment (its metrics port), by worker name."""
        self.stored: Stored | None = None
        self.recoveries = 0
        """Times the memory broker died during this process and the run was rebuilt."""

    # -- starting ------------------------------------------------------------------------
    def _ready(self, names: tuple[str, ...], timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(read_progress(self.progress, resolve(w).group).get("ready") for w in names):
            self.heal_broker()  # a broker dead before the workers are ready is no less dead
            for child in self.sup.heal():
                self.out.write(f"\nskyloop: restarted {child.name}; log {child.log_path}\n")
            if time.monotonic() > deadline:
                raise SkyloopError(f"timed out after {timeout_s:.0f}s waiting for {names}")
            time.sleep(0.2)

    def start_workers(self, wait: bool = True) -> None:
        """Start every worker; on a lost log the sink first, then the log rebuilt, then the rest.

        A continued run (``--resume``) gets a skip list either way: a durable broker kept its
        log, but ingest still reads its sources from their start. ``wait=False`` (a fresh run
        only: its ingest needs nothing from the workers, the broker keeps what it publishes)
        starts only the :data:`FIRST` workers and returns without waiting; :meth:`wait_ready`
        starts the others and waits.
        """
        if self.resumed or self.continued:
            self.note_ingest_time()
            # what the dead processes left would read as live: stale counts, a stale endpoint;
            # their in-flight records (core/quarantine.py) name offsets of a log that is gone
            # when it is rebuilt, and stay when a durable broker kept it
            for stale in self.progress.glob("*.json") if self.progress.is_dir() else ():
                if self.resumed or not stale.name.endswith(".inflight.json"):
                    stale.unlink()
            (self.run_dir / "sink.json").unlink(missing_ok=True)
            self.truth.forced = True
        if not self.resumed:
            early = not wait and not self.continued
            for name in FIRST if early else WORKERS:
                self.sup.start(name, name, env=self.env_for(name))
            if early:
                return
            self._ready(WORKERS)
            if self.continued:
                self.stored = self.truth.stored = write_skip_list(self.run_dir)
            return
        self.sup.start("sink", "sink", env=self.env_for("sink"))
        self._ready(("sink",))
        self.out.write("skyloop: rebuilding the broker's log from ClickHouse...\n")
        r = rebuild(self.settings, self.broker.bootstrap_servers, self.run_dir)
        self.stored = self.truth.stored = r.stored
        self.out.write(
            f"skyloop: control log rebuilt ({r.events} events, state {r.fingerprint[:12]}), "
            f"{r.reproduced} stored images re-produced for scoring, {r.stored.images} images "
            f"and {r.stored.dead_letters} source dead letters already stored are skipped\n"
        )
        rest = tuple(w for w in WORKERS if w != "sink")
        for name in rest:
            self.sup.start(name, name, env=self.env_for(name))
        self._ready(rest)

    def wait_ready(self) -> None:
        """Start the workers :meth:`start_workers` left for later once the scorer is ready (at
        once if the wait is interrupted, so that a Ctrl-C drains as usual), then wait until
        every worker is ready (restarting those that die meanwhile)."""
        try:
            self._ready(("score",))
        finally:
            for name in WORKERS:
                if name not in self.sup.children:
                    self.sup.start(name, name, env=self.env_for(name))
        self._ready(WORKERS)

    def start_ingest(self) -> None:
        """Start ingest with what is left of the run's images or duration (module docstring)."""
        args = self.args
        if args.ingest_started_at is None:
            self.args = args = RunArgs(**{**asdict(args), "ingest_started_at": time.time()})
            args.write(self.run_dir)
        images, duration_s = args.images, args.duration_s
        skip: list[str] = []
        if self.stored is not None:
            skip = ["--skip", str(self.stored.skip_file)]
            if images is not None:
                images -= self.stored.images + self.stored.dead_letters
            if duration_s is not None:
                duration_s -= self._ingested_for(args.ingest_started_at or time.time())
        if (images is not None and images <= 0) or (duration_s is not None and duration_s <= 0):
            self._nothing_to_ingest()
            return
        self.sup.start(
            "ingest",
            "ingest",
            *(["--images", str(images)] if images is not None else []),
            *(["--duration", f"{duration_s}s"] if duration_s is not None else []),
            *[a for s in args.sources for a in ("--source", s)],
            *skip,
            restart=False,
            env=self.env_for("ingest"),
        )

    def _ingested_for(self, started_at: float) -> float:
        """Seconds the earlier ingest ran: until its progress file was last written."""
        marker = self.run_dir / "resume" / "ingested_until"
        if marker.is_file():
            return float(marker.read_text()) - started_at
        return 0.0

    def _nothing_to_ingest(self) -> None:
        self.progress.mkdir(parents=True, exist_ok=True)
        (self.progress / "ingest.json").write_text(
            json.dumps({"done": True, "published": 0, "images": 0, "dead_letters": 0})
        )

    def note_ingest_time(self) -> None:
        """Remember until when the current ingest ran (for a ``--duration`` run's remainder)."""
        path = self.progress / "ingest.json"
        if path.is_file() and self.args.duration_s is not None:
            marker = self.run_dir / "resume" / "ingested_until"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(path.stat().st_mtime))

    def count_stored_as_ingested(self) -> None:
        """Add what was stored before this ingest (and skipped by it) to its counters.

        The run's ledger then counts every item of the run once: the distinct images and
        source failures stored before the resume, which this ingest did not publish again,
        plus what it published (``report/ledger.py`` reads ``progress/ingest.json``).
        """
        path = self.progress / "ingest.json"
        if self.stored is None or not path.is_file():
            return
        counts = self.stored.with_ingested(json.loads(path.read_text()))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts, sort_keys=True))
        tmp.replace(path)

    # -- the memory broker died ----------------------------------------------------------
    def heal_broker(self) -> None:
        """Bring a dead broker back: a durable one on its storage; a memory one empty, with
        every process started again on the log rebuilt from ClickHouse."""
        if self.broker.alive:
            return
        if self.broker.storage_dir is not None:
            self.broker.restart()
            self.out.write(
                f"\nskyloop: restarted the embedded broker on {self.broker.bootstrap_servers}\n"
            )
            return
        self.out.write(
            "\nskyloop: the embedded broker died and its log was in memory: restarting it, "
            "every processor with it, on the log rebuilt from ClickHouse\n"
        )
        ingesting = "ingest" in self.sup.children  # not yet, while the workers start
        self.sup.stop_all(timeout_s=10)
        self.broker.restart(empty=True)
        ensure_topics(self.settings, self.broker.bootstrap_servers)
        self.recoveries += 1
        self.resumed = True
        self.start_workers()
        if ingesting:
            self.start_ingest()
