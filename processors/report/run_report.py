"""The report of one local run folder: opens its chdb (no sink may be running) and writes it."""

from __future__ import annotations

from pathlib import Path

from processors.core.clickhouse import connect
from processors.core.config import Settings
from processors.core.progress import read_progress
from processors.report.daily import generate_report

__all__ = ["write_run_report"]


def write_run_report(run_dir: Path, settings: Settings) -> tuple[Path, dict[str, int]]:
    """Write ``<run_dir>/report/report-<day>.md``; return its path and headline counts.

    The ingest counters (per source: published, quality cuts, failures) come from the run's
    ``progress/ingest.json``, written by the ingest processor when it finished.
    """
    ingest = read_progress(run_dir / "progress", "ingest")
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:
        summary = generate_report(
            client,
            run_dir / "report",
            title=f"skyloop run {run_dir.name}",
            ingest_sources=ingest.get("sources") or None,
        )
    finally:
        client.close()
    counts = {
        "images": summary.images,
        "scores": summary.production_scores,
        "candidates": summary.candidates,
        "dead_letters": summary.dead_letters,
        "control_events": summary.control_events,
    }
    return summary.path, counts
