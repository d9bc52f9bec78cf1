"""The daily Markdown report: what the pipeline saw, decided and dropped on one UTC day.

:func:`generate_report` writes ``out_dir/report-YYYY-MM-DD.md`` (or ``<stem>.md``: the running
sink names its interim and periodic reports itself) and, beside it, the PNG figures
``report-YYYY-MM-DD-scores.png``, ``-throughput.png``, ``-thresholds.png`` and ``-map50.png``
(when there is data to plot) and thumbnails, with the candidates' boxes drawn, under
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

from processors.core.exceptions import SkyloopError
from processors.report import queries
from processors.report.candidates import candidates_section, ztf_section
from processors.report.corrections import control_events_section, self_correction_section
from processors.report.learning import learning_loop_sections
from processors.report.markdown import utc
from processors.report.overview import (
    dead_letters_section,
    ingest_section,
    models_section,
    sources_section,
    summary_section,
    truth_section,
)
from processors.report.plots import plot_score_histograms, plot_throughput

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
HISTOGRAM_BINS = 40
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


# -- plots -----------------------------------------------------------------------------------


def _histograms(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[bool, list[int]]]:
    out: dict[str, dict[bool, list[int]]] = {}
    for r in rows:
        by_verdict = out.setdefault(
            r["source"], {False: [0] * HISTOGRAM_BINS, True: [0] * HISTOGRAM_BINS}
        )
        by_verdict[bool(r["is_candidate"])][int(r["bin"])] = int(r["n"])
    return out


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
) -> ReportSummary:
    """Write the report of ``day`` (default: today, UTC) and return its headline counts.

    ``ingest_sources``: the ingest processor's per-source counters (published, distinct images,
    quality cuts, failures), when the caller has them (``skyloop run`` does); they are not in
    ClickHouse, so the report adds an Ingest section only with them.

    ``stem`` names the files (default ``report-YYYY-MM-DD``: ``<stem>.md``, ``<stem>-*.png``,
    ``<stem>-thumbs/``); ``note`` is a line shown under the title, e.g. why an interim report
    was written (:mod:`processors.report.schedule`).

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

    plots: list[Path] = []
    hist_rows = _rows(client, queries.SCORE_HISTOGRAM, {**window, "bins": HISTOGRAM_BINS})
    plot_lines = ["## Score distributions", ""]
    if hist_rows:
        thresholds = {
            r["source"]: float(r["mean_threshold"])
            for r in _rows(client, queries.SOURCE_THRESHOLDS, window)
        }
        path = plot_score_histograms(
            _histograms(hist_rows), thresholds, out_dir / f"{stem}-scores.png"
        )
        plots.append(path)
        plot_lines += [
            f"![ensemble score distributions]({path.name})",
            "",
            "Production ensemble scores per source, flagged images in red; the dashed line is "
            "the mean detector threshold over the day"
            + (
                " (" + ", ".join(f"{s}: {t:.3f}" for s, t in sorted(thresholds.items())) + ")."
                if thresholds
                else " (no calibrated scores, so no threshold)."
            ),
        ]
    else:
        plot_lines.append("No production scores this day.")

    throughput: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for r in _rows(client, queries.THROUGHPUT, window):
        throughput[r["source"]].append((utc(r["hour"]), int(r["images"])))
    if throughput:
        path = plot_throughput(
            throughput, (window["start"], window["end"]), out_dir / f"{stem}-throughput.png"
        )
        plots.append(path)
        plot_lines += ["", f"![images per hour]({path.name})"]

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
    learning = learning_loop_sections(partial(_rows, client), window, out_dir / f"{stem}-map50.png")
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
        correction_lines,
        control_events_section(events, int(counts["control_events"])),
        dead_letters_section(_rows(client, queries.DEAD_LETTERS_BY_CLASS, window)),
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
