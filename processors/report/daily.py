"""The daily Markdown report: what the pipeline saw, decided and dropped on one UTC day.

:func:`generate_report` writes ``out_dir/report-YYYY-MM-DD.md`` (or ``<stem>.md``: the running
sink names its interim and periodic reports itself) and, beside it, the PNG figures
``report-YYYY-MM-DD-decisions.png``, ``-throughput.png``, ``-flag-rate.png``, ``-rate.png``,
``-thresholds.png`` and ``-map50.png`` (when there is data to plot) and thumbnails, with the
candidates' boxes drawn, under
``report-YYYY-MM-DD-thumbs/``. It only reads ClickHouse, with the queries of
:mod:`processors.report.queries` and :mod:`processors.report.learning_queries` (``FINAL``, so
every figure counts distinct records). The sections are rendered by
:mod:`processors.report.overview`, :mod:`processors.report.candidates`,
:mod:`processors.report.learning` and :mod:`processors.report.corrections`, all with the one
set of Markdown helpers of :mod:`processors.report.markdown`. Running it again for the same day
rewrites the same files; an empty database gives a report that says so. Figures are labelled in
UTC.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from processors.core.config.sections_scoring import DriftSettings
from processors.core.exceptions import SkyloopError
from processors.report import pictures, queries
from processors.report.candidates import candidates_section, ztf_section
from processors.report.corrections import control_events_section, self_correction_section
from processors.report.learning import learning_loop_sections
from processors.report.learning_readiness import LearningNeeds
from processors.report.markdown import utc
from processors.report.overview import (
    dead_letters_section,
    ingest_section,
    models_section,
    sources_section,
    summary_section,
    truth_section,
)
from processors.report.plots import plot_throughput

__all__ = [
    "DEFAULT_TITLE",
    "ReportError",
    "ReportSummary",
    "generate_report",
    "main",
    "write_report",
]

log = logging.getLogger(__name__)

DEFAULT_TITLE = "skyloop daily report"
DEFAULT_FLAG_WINDOW = int(DriftSettings.model_fields["window"].default)
MAX_CONTROL_EVENTS = 200
MAX_ZTF_OBJECTS = 50


class ReportError(SkyloopError):
    """The report cannot be built, e.g. the warehouse has no skyloop tables (run migrations)."""


@dataclass(frozen=True)
class ReportSummary:
    """Headline counts of one report (distinct records in the day's window) and its files."""

    day: date
    path: Path
    images: int
    scores: int
    production_scores: int
    flagged: int
    candidates: int
    control_events: int
    dead_letters: int
    sources: int
    plots: tuple[Path, ...] = ()
    thumbnails: tuple[Path, ...] = ()

    def headline(self) -> str:
        """One line for a terminal."""
        return (
            f"{self.day.isoformat()}: {self.images} images, {self.production_scores} scored "
            f"({self.scores} score rows), {self.flagged} flagged, {self.candidates} candidates, "
            f"{self.control_events} control events, {self.dead_letters} dead letters "
            f"-> {self.path}"
        )

    def __str__(self) -> str:
        return self.headline()


# -- queries ---------------------------------------------------------------------------------


def _rows(
    client: Client,
    sql: str,
    params: Mapping[str, Any],
    column_formats: dict[str, str | dict[str, str]] | None = None,
) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=dict(params), column_formats=column_formats)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _check_tables(client: Client) -> None:
    present = {
        row["name"]
        for row in _rows(client, queries.TABLES_PRESENT, {"tables": list(queries.TABLES)})
    }
    missing = [name for name in queries.TABLES if name not in present]
    if missing:
        raise ReportError(
            f"database {client.database or 'default'!r} lacks tables {', '.join(missing)}; "
            "apply the migrations of infra/clickhouse first (processors.sink.migrations)"
        )


# -- entry points ----------------------------------------------------------------------------


def _window(day: date) -> dict[str, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return {"start": start, "end": start + timedelta(days=1)}


def generate_report(
    client: Client,
    out_dir: Path,
    *,
    day: date | None = None,
    title: str = DEFAULT_TITLE,
    top_candidates: int = 12,
    ingest_sources: Mapping[str, Mapping[str, int]] | None = None,
    stem: str | None = None,
    note: str | None = None,
    flag_window: int = DEFAULT_FLAG_WINDOW,
    processes: Mapping[str, Mapping[str, Any]] | None = None,
    learning_needs: LearningNeeds | None = None,
) -> ReportSummary:
    """Write the report of ``day`` (default: today, UTC) and return its headline counts.

    ``ingest_sources``: the ingest processor's per-source counters (published, distinct images,
    quality cuts, failures), when the caller has them (``skyloop run`` does); they are not in
    ClickHouse, so the report adds an Ingest section only with them.

    ``stem`` names the files (default ``report-YYYY-MM-DD``: ``<stem>.md``, ``<stem>-*.png``,
    ``<stem>-thumbs/``); ``note`` is a line shown under the title, e.g. why an interim report
    was written (:mod:`processors.report.schedule`). ``flag_window``: images per flag-rate
    window (``settings.drift.window``); ``processes``: the run's progress files by process
    name, for uptime and memory per process (else the health section says it lacks them);
    ``learning_needs``: the settings that decide a retrain, for the paragraph on how far the
    dataset is from one.

    The window is ``[day 00:00, day+1 00:00)`` UTC, applied to each table's own event time
    (see :mod:`processors.report.queries`). Raises :class:`ReportError` when the database lacks
    the skyloop tables. Reads only; files are (re)written under ``out_dir``.
    """
    day = day or datetime.now(UTC).date()
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_tables(client)
    window = _window(day)
    stem = stem or f"report-{day.isoformat()}"
    counts = _rows(client, queries.SUMMARY, window)[0]
    per_source = _rows(client, queries.PER_SOURCE, window)

    query = partial(_rows, client)
    plots: list[Path] = []
    plot_lines, decisions_png = pictures.decisions_section(
        query, window, out_dir / f"{stem}-decisions.png"
    )
    (out_dir / f"{stem}-scores.png").unlink(missing_ok=True)  # the figure it replaced
    if decisions_png is not None:
        plots.append(decisions_png)

    throughput: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for r in _rows(client, queries.THROUGHPUT, window):
        throughput[r["source"]].append((utc(r["hour"]), int(r["images"])))
    if throughput:
        path = plot_throughput(
            throughput,
            (window["start"], window["end"]),
            out_dir / f"{stem}-throughput.png",
            now=datetime.now(UTC),
        )
        plots.append(path)
        plot_lines += ["", "### Images per hour", "", f"![images per hour]({path.name})"]
    glance_lines, flag_png = pictures.flag_rate_section(
        query, window, flag_window, out_dir / f"{stem}-flag-rate.png"
    )
    health_lines, rate_png = pictures.health(query, window, out_dir / f"{stem}-rate.png", processes)
    plots += [p for p in (flag_png, rate_png) if p is not None]

    thumbs_dir = out_dir / f"{stem}-thumbs"
    for stale in thumbs_dir.glob("*.png") if thumbs_dir.is_dir() else []:
        stale.unlink()
    top = _rows(
        client,
        queries.TOP_CANDIDATES,
        {**window, "limit": top_candidates},
        column_formats={"pixels": "bytes"},
    )
    candidate_lines, thumbnails = candidates_section(top, thumbs_dir, thumbs_dir.name)
    events = _rows(client, queries.CONTROL_EVENTS, {**window, "limit": MAX_CONTROL_EVENTS})
    correction_lines, thresholds_png = self_correction_section(
        partial(_rows, client), window, out_dir / f"{stem}-thresholds.png"
    )
    if thresholds_png is not None:
        plots.append(thresholds_png)
    learning = learning_loop_sections(
        partial(_rows, client), window, out_dir / f"{stem}-map50.png", needs=learning_needs
    )
    if learning.figure is not None:
        plots.append(learning.figure)

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = [
        f"# {title} — {day.isoformat()}",
        "",
        *([f"> {note}", ""] if note else []),
        f"Window: {day.isoformat()} 00:00 to {(day + timedelta(days=1)).isoformat()} 00:00 UTC, "
        "each record by its own time (images: fetched_at, scores: scored_at, candidates: "
        "detected_at, control events and dead letters: at). Counts are distinct records. "
        f"Generated {generated} UTC from database `{client.database or 'default'}`.",
        "",
        *summary_section(counts),
        "",
        *sources_section(per_source),
        "",
    ]
    if ingest_sources:
        lines += [*ingest_section(ingest_sources), ""]
    for section in (
        models_section(_rows(client, queries.MODELS, window)),
        plot_lines,
        truth_section(
            _rows(client, queries.TRUTH_METRICS, window),
            _rows(client, queries.TRUTH_BY_KIND, window),
        ),
        candidate_lines,
        learning.crossmatches,
        ztf_section(_rows(client, queries.ZTF_OBJECTS, {**window, "limit": MAX_ZTF_OBJECTS})),
        learning.learning_loop,
        glance_lines,
        correction_lines,
        control_events_section(events, int(counts["control_events"])),
        dead_letters_section(_rows(client, queries.DEAD_LETTERS_BY_CLASS, window)),
        pictures.sky(query, window),
        health_lines,
    ):
        if section:
            lines += [*section, ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    summary = ReportSummary(
        day=day,
        path=path,
        images=int(counts["images"]),
        scores=int(counts["scores"]),
        production_scores=int(counts["production_scores"]),
        flagged=int(counts["flagged"]),
        candidates=int(counts["candidates"]),
        control_events=int(counts["control_events"]),
        dead_letters=int(counts["dead_letters"]),
        sources=sum(1 for r in per_source if r["source"]),
        plots=tuple(plots),
        thumbnails=tuple(thumbnails),
    )
    log.info("report written: %s", summary.headline())
    return summary


def write_report(
    client: Client,
    out_dir: Path,
    *,
    day: date | None = None,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Write the report of ``day`` (see :func:`generate_report`) and return the Markdown path."""
    return generate_report(client, out_dir, day=day, title=title).path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m processors.report.daily --dsn DSN --out DIR [--day YYYY-MM-DD]``."""
    from processors.core.clickhouse import connect

    parser = argparse.ArgumentParser(description=DEFAULT_TITLE)
    parser.add_argument("--dsn", required=True, help="chdb:///path or http(s)://... DSN")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--day", type=date.fromisoformat, default=None, help="UTC day")
    parser.add_argument("--title", default=DEFAULT_TITLE)
    args = parser.parse_args(argv)
    client = connect(args.dsn)
    try:
        summary = generate_report(client, args.out, day=args.day, title=args.title)
    finally:
        client.close()
    print(summary.headline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
