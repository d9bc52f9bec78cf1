"""``skyloop run``: the whole pipeline on the embedded local stack, until N images are through.

Order: start the broker → create topics → start sink, controller, detect, train, score (child
processes, ``skyloop worker NAME``; :mod:`processors.topology`)
→ wait until each is ready → ingest N items (or, with N = None, until the sources end: a
finite source such as a ZTF packet folder; or until ``duration_s`` has passed) → wait until
every stage has handled every item (read from the processors' progress files) → stop the
children → stop the broker → write the report from ClickHouse. Each run gets its own folder
``<data_dir>/runs/<UTC time>/`` (nothing of an earlier run is overwritten); ``<data_dir>/latest``
names the newest, for ``skyloop sql``; while the broker runs, ``<run>/stack.json`` names it, for
``skyloop control``, with the run's query token (mode 0600; :mod:`processors.core.query_token`)
and each worker's Prometheus port (``"metrics"``; also as ``<run>/prometheus-targets.json``,
:mod:`processors.core.metrics_targets`). With ``alert_webhook_url`` set, pauses and rollbacks
are posted there (:mod:`processors.core.alerts`). The summary ends with the run's ledger
(:mod:`processors.report.ledger`).

A processor that dies (a crash, ``kill -9``) is restarted with back-off, up to a bound
(:class:`~processors.core.supervisor.RestartPolicy`), and the run goes on: it resumes from its
group's committed offsets, and what it redoes is absorbed by idempotent keys. A restarted
processor's progress file starts from zero, so the stop condition then reads the truth instead:
a restarted sink's counts from its ClickHouse tables (through its query endpoint), a restarted
controller's position from its group's committed offsets against the sink's. Ingest is not
restarted (a new ingest would not know where the old one stopped): its death ends the run.
``RunResult.restarts`` counts the restarts per processor.

A run writes its arguments to ``<run>/run.json`` at start and ``<run>/finished`` after its
report; ``resume`` continues an unfinished run folder after a crash of everything, and a memory
broker that dies during a run is started again empty, the run's log rebuilt from ClickHouse
(:mod:`processors.resume`, which also starts the workers and ingest).

Ctrl-C (SIGINT or SIGTERM) stops ingestion, lets every stage finish what was ingested, writes
the report and returns with ``interrupted`` set; a second one aborts at once. The children run
in their own process groups, so a terminal's Ctrl-C reaches only this supervisor, which stops
them in order; none outlives it. A run whose folder is deleted under it raises
:class:`SkyloopError` saying so (its logs and warehouse are gone) and stops every process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from pydantic import SecretStr

from processors.core.alerts import start_run_alerts
from processors.core.config import Settings
from processors.core.exceptions import SkyloopError
from processors.core.kafka import ensure_topics
from processors.core.metrics_targets import assign_ports, clear_targets, write_targets
from processors.core.progress import read_progress
from processors.core.query_token import TOKEN_ENV, new_token, write_private
from processors.core.retention import HotLog
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor, interrupt_on_sigterm
from processors.core.unblocked_out import UnblockedOut
from processors.local_hotlog import hot_log
from processors.local_restarts import RestartedTruth
from processors.local_revisions import close_revisions
from processors.resume import RUN_FILE, WORKERS, RunArgs, Stack, mark_finished
from processors.run_progress import Counts, RunProgress, Totals
from processors.topology import resolve

if TYPE_CHECKING:
    from processors.report.ledger import Ledger

__all__ = ["WORKERS", "RunResult", "latest_run_dir", "run_local"]


def _progress(progress: Path, worker: str) -> dict[str, Any]:
    """A worker's progress file, which is named by its group (the controller's is ``stats``)."""
    return read_progress(progress, resolve(worker).group)


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report_path: Path
    seconds: float
    ingest_seconds: float
    """From the start of ingest until every stage handled every item (workers' start-up
    included when the run ingested while they started)."""
    counts: dict[str, int]
    ingest: dict[str, Any]
    """The ingest processor's final progress: totals and per-source counters (cuts, failures)."""
    interrupted: bool = False
    restarts: dict[str, int] = field(default_factory=dict)
    """Restarts per processor (those never restarted omitted)."""
    ledger: Ledger | None = None
    """Every ingested item accounted for (:mod:`processors.report.ledger`); the summary's last
    line, and the report's."""


def latest_run_dir(data_dir: Path) -> Path | None:
    marker = data_dir / "latest"
    if marker.is_file():
        path = Path(marker.read_text().strip())
        return path if path.is_dir() else None
    return None


def _done(
    ingest: dict[str, Any],
    sink: dict[str, Any],
    controller: dict[str, Any],
    train: dict[str, Any] | None = None,
    quarantined: dict[str, int] | None = None,
) -> bool:
    """Every stage has handled every item; ``quarantined`` (:func:`_quarantined`): items a stage
    dead-lettered as poison (ARCHITECTURE.md, "Guarantees"), handled without an output."""
    if not ingest.get("done"):
        return False
    held = quarantined or {}
    emitters = (controller, train or {})  # the controller's and the trainer's events
    events = sum(v for p in emitters for k, v in p.items() if k.startswith("events."))
    # The sink counts distinct ids, so compare with ingest's distinct counts: a source may
    # deliver the same cutout twice (a ZTF alert re-serialized in another schema version).
    return bool(
        sink.get("images", 0) + held.get("images", 0)
        >= ingest.get("images", ingest.get("published", 0))
        and sink.get("dlq_source", 0)
        >= ingest.get("dead_letter_keys", ingest.get("dead_letters", 0))
        and sink.get("scores", 0) + sink.get("dlq_images", 0) + held.get("scores", 0)
        >= sink.get("images", 0)
        and sink.get("candidates", 0) + held.get("candidates", 0)
        >= sink.get("candidates_expected", sink.get("candidate_scores", 0))
        and sink.get("control_events", 0) + held.get("control_events", 0) >= events
        and controller.get("consumed", 0) >= sink.get("scores", 0)
        and not controller.get("held")  # consumed past a hole, not yet applied (InOrder)
        and sink.get("revisions", 0) >= controller.get("revisions", 0)
    )


def _revisions_waiting(progress: Path) -> list[str]:
    """The sources whose drift revision waits for a score under its recalibration."""
    return list(_progress(progress, "controller").get("revisions_waiting") or [])


def _drained(truth: RestartedTruth, progress: Path) -> bool:
    """The stop condition with ingest taken as done: a hot-log rotation's drain."""
    ingest, sink, controller = (_progress(progress, n) for n in ("ingest", "sink", "controller"))
    sink = truth.sink(sink)
    return _done(
        {**truth.ingest(ingest), "done": True},
        sink,
        truth.controller(controller, sink),
        _progress(progress, "train"),
        _quarantined(progress),
    )


def _quarantined(progress: Path) -> dict[str, int]:
    """Items the sink or detect dead-lettered as poison, by the count they are missing from (the
    scorer's go to ``dlq_images`` already). Read from the progress file of the process that did
    it; a later restart of that process forgets them."""
    sink, detect = _progress(progress, "sink"), _progress(progress, "detect")

    def n(p: dict[str, Any], topic: str) -> int:
        return int(p.get(f"quarantined.{topic}", 0))

    return {
        "images": n(sink, "images.raw"),
        "scores": n(sink, "scores"),
        "candidates": n(sink, "candidates") + n(detect, "scores") + n(detect, "scores.revised"),
        "control_events": n(sink, "control.events"),
    }


def _counts(
    totals: Totals, ingest: dict[str, Any], score: dict[str, Any], sink: dict[str, Any]
) -> Counts:
    """One reading of the run for its progress display (:mod:`processors.run_progress`)."""
    return Counts(
        ingest=ingest.get("published", 0) + ingest.get("dead_letters", 0),
        published=ingest.get("published", 0),
        score=totals.add("score", int(score.get("consumed", 0))),
        store=sink.get("scores", 0) + sink.get("dlq_images", 0),
        candidates=sink.get("candidates", 0),
        dead_letters=sink.get("dlq_source", 0) + sink.get("dlq_images", 0),
        control_events=sink.get("control_events", 0),
        paused=bool(ingest.get("paused")),
    )


def run_local(
    settings: Settings,
    sources: list[str],
    images: int | None,
    *,
    duration_s: float | None = None,
    timeout_s: float = 3600.0,
    out: TextIO = sys.stderr,
    resume: Path | None = None,
    overlap_start: bool = True,
) -> RunResult:
    """Run the pipeline end to end; raises SkyloopError (with the failing log's tail) on failure.

    ``images``: items to ingest, or None to ingest until the sources end (the caller makes sure
    they are finite) or ``duration_s`` passes. ``resume``: an unfinished run folder to continue
    (:mod:`processors.resume`), with the arguments it was started with. ``overlap_start``: a
    fresh run ingests while its workers start (False: once they are all ready, as a benchmark
    that times the pipeline from the start of ingest needs).

    What the run writes to ``out`` never blocks it (:class:`UnblockedOut`): a caller that reads
    ``out`` late or never cannot stall the loop that heals workers and rotates the hot log.
    """
    unblocked = UnblockedOut(out)
    try:
        return _run(
            settings,
            sources,
            images,
            duration_s,
            timeout_s,
            cast(TextIO, unblocked),  # a text stream in all but name (io.TextIOBase)
            resume,
            overlap_start,
        )
    finally:
        unblocked.close()


def _run(
    settings: Settings,
    sources: list[str],
    images: int | None,
    duration_s: float | None,
    timeout_s: float,
    out: TextIO,
    resume: Path | None,
    overlap_start: bool,
) -> RunResult:
    started = time.monotonic()
    interrupt_on_sigterm()
    if resume is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_dir = (settings.data_dir / "runs" / stamp).resolve()
    else:
        run_dir = resume.resolve()
    logs = run_dir / "logs"
    progress = run_dir / "progress"
    logs.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "latest").write_text(str(run_dir))
    out.write(f"skyloop: run folder {run_dir}{' (resumed)' if resume else ''}\n")
    # -- resume: the run's arguments, so `--resume` needs no repeat (processors.resume)
    run_args = RunArgs(
        list(sources), images, duration_s, settings.calibration.reference_size, os.getpid()
    )
    if resume is not None:
        run_args = dataclasses.replace(RunArgs.read(run_dir), pid=os.getpid())
    run_args.write(run_dir)
    interrupted = False
    truth: RestartedTruth | None = None
    restarts: dict[str, int] = {}
    durable = settings.data_dir.resolve() / "broker" if settings.broker.durable else None
    if durable is not None:
        # control events name calibration artifacts by id: with a log that outlives the run,
        # the store must too, so every run of this data dir shares one
        shared = (settings.data_dir / "artifacts").resolve()
        shared.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "artifacts").exists():  # a resumed run has it already
            (run_dir / "artifacts").symlink_to(shared, target_is_directory=True)
    lost_log = resume is not None and durable is None  # a durable broker kept its log
    with EmbeddedBroker(log_path=logs / "broker.log", storage_dir=durable) as broker:
        ensure_topics(settings, broker.bootstrap_servers)
        stack = run_dir / "stack.json"
        # every worker's /metrics on its own loopback port (processors.core.metrics_targets)
        ports = assign_ports([*WORKERS, "ingest"])
        token = new_token()  # the sink's query endpoint answers only requests that carry it
        write_private(
            stack,
            {
                "bootstrap": broker.bootstrap_servers,
                "topic_prefix": settings.kafka.topic_prefix,
                "metrics": ports,
                "query_token": token,
            },
        )
        write_targets(run_dir, settings.data_dir, ports)
        env = {
            "SKYLOOP_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SKYLOOP_DATA_DIR": str(run_dir),
            "SKYLOOP_PROGRESS_DIR": str(progress),
            "SKYLOOP_TOPIC_PREFIX": settings.kafka.topic_prefix,
            "SKYLOOP_GROUP_PREFIX": settings.kafka.group_prefix,
            "HF_HUB_OFFLINE": "1",
            TOKEN_ENV: token,
        }
        # every setting under its flat name; lists and mappings as JSON (what pydantic-settings
        # parses from the environment)
        for key, value in settings.flat_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            env.setdefault(f"SKYLOOP_{key.upper()}", text)
        stop_alerts = start_run_alerts(settings, broker.bootstrap_servers, run_dir.as_uri())
        try:
            with Supervisor(logs, env) as sup:
                truth = RestartedTruth(settings, broker.bootstrap_servers, run_dir, sup)
                truth.broker = broker
                out.write("skyloop: starting processors (model load, consumer-group joins)...\n")
                stack_ = Stack(
                    settings,
                    run_dir,
                    broker,
                    sup,
                    truth,
                    run_args,
                    out,
                    resumed=lost_log,
                    continued=resume is not None,
                    env_for=lambda name: _metrics_env(ports, name),
                )
                # a fresh run ingests while the workers start (load models, join groups): the
                # broker holds the images, so the first is scored as soon as the scorer is up
                early = overlap_start and not (lost_log or resume is not None)
                stack_.start_workers(wait=not early)
                ingest_started = time.monotonic()
                stack_.start_ingest()
                drained = partial(_drained, truth, progress)  # the memory log: rotated
                waiting = partial(_revisions_waiting, progress)
                hotlog = None if durable else hot_log(settings, broker, sup, progress, out, drained)
                view = RunProgress(out, images)
                try:
                    if early:  # a Ctrl-C meanwhile drains like any other
                        stack_.wait_ready()
                    _follow(stack_, progress, view, duration_s, started, timeout_s, logs, hotlog)
                except KeyboardInterrupt:
                    interrupted = True
                    view.close()
                    out.write(
                        "\nskyloop: stopping ingestion; every stage finishes what was ingested "
                        "(Ctrl-C again to abort)\n"
                    )
                    sup.stop("ingest")
                    view = RunProgress(out, images)
                    _follow(stack_, progress, view, None, started, timeout_s, logs, hotlog)
                finally:
                    view.close()
                # a drift near the input's end: its revision would wait for ever
                close_revisions(settings, broker.bootstrap_servers, waiting, drained, out)
                ingest_seconds = time.monotonic() - ingest_started
                stack_.count_stored_as_ingested()
                out.write("\nskyloop: all stages done; stopping processors\n")
                sup.stop_all()
                restarts = sup.restarts
                if stack_.recoveries:
                    restarts["rebuilt from ClickHouse"] = stack_.recoveries
                if broker.restarts:
                    restarts["broker"] = broker.restarts
        finally:
            stack.unlink(missing_ok=True)
            clear_targets(run_dir, settings.data_dir)
            if stop_alerts is not None:
                stop_alerts()
            if truth is not None:
                truth.close()
    from processors.report.run_report import report_run

    # the run reached its stop condition: every stage handled every ingested item
    report = report_run(run_dir, settings, finished=True)
    mark_finished(run_dir)
    return RunResult(
        run_dir,
        report.path,
        time.monotonic() - started,
        ingest_seconds,
        report.counts,
        _progress(progress, "ingest"),
        interrupted,
        restarts,
        report.ledger,
    )


def _follow(
    stack_: Stack,
    progress: Path,
    view: RunProgress,
    duration_s: float | None,
    started: float,
    timeout_s: float,
    logs: Path,
    hotlog: HotLog | None = None,
) -> None:
    """Show progress on ``view`` until every stage has handled every ingested item (and, with
    ``hotlog``, rotate the memory broker's data topics when they are due).

    Raises :class:`SkyloopError` when the run folder is gone (deleted under the run; its
    ``run.json`` tells, since a worker's progress write makes the path itself again, empty):
    its logs and warehouse are lost, so the caller's supervisor and broker stop every process
    instead of waiting out ``timeout_s``."""
    sup, truth = stack_.sup, stack_.truth
    ingest_started = time.monotonic()
    totals = Totals()
    preloading = False
    while True:
        if not (progress.parent / RUN_FILE).is_file():
            raise SkyloopError(
                f"the run folder {progress.parent} was removed while the run was going; "
                "stopping every processor"
            )
        ingest, sink, controller = (
            _progress(progress, n) for n in ("ingest", "sink", "controller")
        )
        sink = truth.sink(sink)
        now = time.monotonic()
        remaining = None if duration_s is None else duration_s - (now - ingest_started)
        counts = _counts(totals, ingest, _progress(progress, "score"), sink)
        view.show(now, now - started, counts, remaining)
        if not preloading and counts.score > 0:
            # the report's imports, once the start's own imports are past (the first score)
            from processors.report.run_report import preload

            preload()
            preloading = True
        train = _progress(progress, "train")
        ingest = truth.ingest(ingest)
        if _done(ingest, sink, truth.controller(controller, sink), train, _quarantined(progress)):
            return
        stack_.heal_broker()  # before the processors: its death is theirs too
        _check(sup, view.out)
        if hotlog is not None:
            ingest_child = sup.children.get("ingest")
            hotlog.tick(ingest, ingest_child is not None and ingest_child.proc.poll() is None)
        if now - started > timeout_s:
            raise SkyloopError(f"run did not finish within {timeout_s:.0f}s; logs in {logs}")
        time.sleep(0.5)


def _metrics_env(ports: dict[str, int], worker: str) -> dict[str, str]:
    """A child's own metrics port (its restarts keep it, so stack.json stays right)."""
    return {"SKYLOOP_METRICS_PORT": str(ports[worker])}


def _check(sup: Supervisor, out: TextIO) -> None:
    """Restart dead processors (raises ProcessorFailed past the restart bound)."""
    for child in sup.heal():
        out.write(
            f"\nskyloop: restarted {child.name} (restart {child.restarts}); log {child.log_path}\n"
        )
