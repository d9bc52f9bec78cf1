"""``skyloop run``: the whole pipeline on the embedded local stack, until N images are through.

Order: start the broker → create topics → start sink, stats, detect, score (child processes)
→ wait until each is ready → ingest N items (or, with N = None, until the sources end: a
finite source such as a ZTF packet folder) → wait until every stage has handled every item
(read from the processors' progress files) → stop the children → stop the broker → write the
report from ClickHouse. Each run gets its own folder ``<data_dir>/runs/<UTC time>/`` (nothing of
an earlier run is overwritten); ``<data_dir>/latest`` names the newest, for ``skyloop sql``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from processors.core.config import Settings
from processors.core.exceptions import SkyloopError
from processors.core.kafka import ensure_topics
from processors.core.progress import read_progress
from processors.core.stack import EmbeddedBroker
from processors.core.supervisor import Supervisor

__all__ = ["RunResult", "latest_run_dir", "run_local"]

WORKERS = ("sink", "stats", "detect", "score")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    report_path: Path
    seconds: float
    ingest_seconds: float
    counts: dict[str, int]
    ingest: dict[str, Any]
    """The ingest processor's final progress: totals and per-source counters (cuts, failures)."""


def latest_run_dir(data_dir: Path) -> Path | None:
    marker = data_dir / "latest"
    if marker.is_file():
        path = Path(marker.read_text().strip())
        return path if path.is_dir() else None
    return None


def _done(ingest: dict[str, Any], sink: dict[str, Any], stats: dict[str, Any]) -> bool:
    if not ingest.get("done"):
        return False
    events = sum(v for k, v in stats.items() if k.startswith("events."))
    # The sink counts distinct ids, so compare with ingest's distinct counts: a source may
    # deliver the same cutout twice (a ZTF alert re-serialized in another schema version).
    return bool(
        sink.get("images", 0) >= ingest.get("images", ingest.get("published", 0))
        and sink.get("dlq_source", 0)
        >= ingest.get("dead_letter_keys", ingest.get("dead_letters", 0))
        and sink.get("scores", 0) + sink.get("dlq_images", 0) >= sink.get("images", 0)
        and sink.get("candidates", 0) >= sink.get("candidate_scores", 0)
        and sink.get("control_events", 0) >= events
        and stats.get("consumed", 0) >= sink.get("scores", 0)
    )


def _line(n: int | None, ingest: dict[str, Any], sink: dict[str, Any], elapsed: float) -> str:
    of_n = f"/{n}" if n is not None else ""
    return (
        f"\r[{elapsed:6.1f}s] ingested {ingest.get('published', 0) + ingest.get('dead_letters', 0)}"
        f"{of_n}"
        f"  scored {sink.get('scores', 0)}  candidates {sink.get('candidates', 0)}"
        f"  dead letters {sink.get('dlq_source', 0) + sink.get('dlq_images', 0)}"
        f"  control events {sink.get('control_events', 0)}   "
    )


def run_local(
    settings: Settings,
    sources: list[str],
    images: int | None,
    *,
    timeout_s: float = 3600.0,
    out: TextIO = sys.stderr,
) -> RunResult:
    """Run the pipeline end to end; raises SkyloopError (with the failing log's tail) on failure.

    ``images``: items to ingest, or None to ingest until the sources end (the caller makes sure
    they are finite).
    """
    started = time.monotonic()
    _sigterm_as_interrupt()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (settings.data_dir / "runs" / stamp).resolve()
    logs = run_dir / "logs"
    progress = run_dir / "progress"
    logs.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "latest").write_text(str(run_dir))
    out.write(f"skyloop: run folder {run_dir}\n")
    with EmbeddedBroker(log_path=logs / "broker.log") as broker:
        ensure_topics(settings, broker.bootstrap_servers)
        env = {
            "SKYLOOP_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SKYLOOP_DATA_DIR": str(run_dir),
            "SKYLOOP_PROGRESS_DIR": str(progress),
            "SKYLOOP_TOPIC_PREFIX": settings.topic_prefix,
            "SKYLOOP_GROUP_PREFIX": settings.group_prefix,
            "HF_HUB_OFFLINE": "1",
        }
        for key, value in settings.model_dump(exclude_none=True).items():
            env.setdefault(f"SKYLOOP_{key.upper()}", str(value))
        with Supervisor(logs, env) as sup:
            for name in WORKERS:
                sup.start(name, name)
            out.write("skyloop: starting processors (model load, consumer-group joins)...\n")
            _wait(
                lambda: (
                    all(read_progress(progress, w).get("ready") for w in WORKERS if w != "stats")
                    and read_progress(progress, "stats").get("ready")
                ),
                sup,
                timeout_s=300,
                what="processors to start",
            )
            ingest_started = last_line = time.monotonic()
            sup.start(
                "ingest",
                "ingest",
                *(["--images", str(images)] if images is not None else []),
                *[a for s in sources for a in ("--source", s)],
            )
            while True:
                ingest, sink, stats = (
                    read_progress(progress, n) for n in ("ingest", "sink", "stats")
                )
                now = time.monotonic()
                if out.isatty():
                    out.write(_line(images, ingest, sink, now - started))
                    out.flush()
                elif now - last_line >= 5:
                    out.write(_line(images, ingest, sink, now - started).strip("\r ") + "\n")
                    last_line = now
                if _done(ingest, sink, stats):
                    break
                _check(sup)
                if time.monotonic() - started > timeout_s:
                    raise SkyloopError(
                        f"run did not finish within {timeout_s:.0f}s; logs in {logs}"
                    )
                time.sleep(0.5)
            ingest_seconds = time.monotonic() - ingest_started
            out.write("\nskyloop: all stages done; stopping processors\n")
            sup.stop_all()
    from processors.report.run_report import write_run_report

    report_path, counts = write_run_report(run_dir, settings)
    return RunResult(
        run_dir,
        report_path,
        time.monotonic() - started,
        ingest_seconds,
        counts,
        read_progress(progress, "ingest"),
    )


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so the supervisor and broker context managers clean up."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _check(sup: Supervisor) -> None:
    failed = sup.failed()
    if failed:
        child = failed[0]
        raise SkyloopError(
            f"processor {child.name} exited with code {child.proc.returncode}; "
            f"last lines of {child.log_path}:\n{child.tail()}"
        )


def _wait(predicate: Any, sup: Supervisor, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        _check(sup)
        if time.monotonic() > deadline:
            raise SkyloopError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)
