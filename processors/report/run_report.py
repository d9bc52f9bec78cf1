"""The report of one local run folder: opens its chdb (no sink may be running) and writes it,
ending with the run's ledger line (:mod:`processors.report.ledger`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.core.clickhouse import HELD_WAIT_S, connect
from processors.core.config import Settings
from processors.core.progress import read_progress
from processors.report.learning_readiness import LearningNeeds
from processors.report.ledger import Ledger, compute_ledger

__all__ = ["RunReport", "preload", "read_processes", "report_run", "write_run_report"]


@dataclass(frozen=True)
class RunReport:
    path: Path
    counts: dict[str, int]
    ledger: Ledger | None
    """None for a folder without ingest counters (a worker's data dir): nothing to balance."""


def preload() -> threading.Thread:
    """Import what :func:`report_run` needs beyond this module (matplotlib, astropy, the chdb
    engine: about 2 s of one core) on a daemon thread, so that a run's report does not wait for
    them. It opens nothing and writes nothing; calling it again costs a thread (imports are
    cached)."""

    def load() -> None:
        import astropy_healpix  # noqa: F401  (the sky coverage's cells)
        import chdb  # noqa: F401

        import processors.report.daily  # noqa: F401  (matplotlib)

    thread = threading.Thread(target=load, name="report-preload", daemon=True)
    thread.start()
    return thread


def read_processes(progress: Path) -> dict[str, dict[str, Any]]:
    """Every process's progress file in ``progress`` by name (in-flight markers left out):
    what the report's Pipeline health reads for uptime and memory per process."""
    names = sorted(p.stem for p in progress.glob("*.json") if not p.stem.endswith(".inflight"))
    return {name: read_progress(progress, name) for name in names}


def report_run(run_dir: Path, settings: Settings, *, finished: bool) -> RunReport:
    """Write ``<run_dir>/report/report-<day>.md``, its last line the ledger; return its path,
    headline counts and ledger.

    The ingest counters (per source: published, quality cuts, failures) come from the run's
    ``progress/ingest.json``, written by the ingest processor when it finished. ``finished``:
    the run reached its stop condition (see :func:`~processors.report.ledger.compute_ledger`).
    """
    ingest = read_progress(run_dir / "progress", "ingest")
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}", wait_s=HELD_WAIT_S)
    try:
        from processors.report.daily import generate_report  # matplotlib, when a report is due

        summary = generate_report(
            client,
            run_dir / "report",
            title=f"skyloop run {run_dir.name}",
            ingest_sources=ingest.get("sources") or None,
            flag_window=settings.drift.window,
            learning_needs=LearningNeeds.of(settings),
            processes=read_processes(run_dir / "progress"),
        )
        ledger = compute_ledger(client, ingest, finished=finished) if ingest else None
    finally:
        client.close()
    if ledger is not None:
        with summary.path.open("a") as report:
            report.write(f"\n{ledger.line()}\n")
    counts = {
        "images": summary.images,
        "scores": summary.production_scores,
        "candidates": summary.candidates,
        "dead_letters": summary.dead_letters,
        "control_events": summary.control_events,
    }
    return RunReport(summary.path, counts, ledger)


def write_run_report(run_dir: Path, settings: Settings) -> tuple[Path, dict[str, int]]:
    """:func:`report_run` of a run folder whose end is unknown (what is open is in flight)."""
    report = report_run(run_dir, settings, finished=False)
    return report.path, report.counts
