"""Pipeline health: processing rate over the day (a figure), uptime and memory per process.

Two sources, each figure from where it is recorded, none estimated:

- ClickHouse (every report): images ingested (``images.fetched_at``) and scored (production
  ``scores.scored_at``) per bin over the day's active span, the span from the first to the
  last production score, and the share of its bins in which images were scored. The bin is
  the smallest of :data:`BINS_S` that gives at most :data:`MAX_BINS` bins over the span.
- The processes' progress files (when the caller has them: ``skyloop run``'s report does), whose
  every write records the process (:mod:`processors.core.progress`): pid, start, last write,
  resident memory then and at peak. Uptime is last write - start of the process that wrote
  the file last: a restarted process opens a new file, so its uptime counts from the restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from processors.report.markdown import number, percent, table, utc, when

__all__ = ["BINS_S", "MAX_BINS", "health_section", "plot_processing_rate", "rate_bin_s"]

BINS_S = (5, 10, 30, 60, 300, 600, 1800, 3600)
MAX_BINS = 60


def rate_bin_s(first: datetime, last: datetime) -> int:
    """The bin (seconds) for a span: the smallest of :data:`BINS_S` giving <= MAX_BINS bins.

    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> rate_bin_s(t, t + timedelta(seconds=40)), rate_bin_s(t, t + timedelta(hours=24))
    (5, 1800)
    """
    span = max((last - first).total_seconds(), 0.0)
    for bin_s in BINS_S:
        if span / bin_s <= MAX_BINS:
            return bin_s
    return BINS_S[-1]


def plot_processing_rate(
    series: Mapping[str, Sequence[tuple[datetime, int]]], bin_s: int, path: Path
) -> Path | None:
    """Images per second per stage (``ingested``, ``scored``) in ``bin_s`` bins, as steps on a
    UTC time axis; a bin without images is drawn at 0. None (nothing written) without points."""
    drawn = {stage: sorted(points) for stage, points in series.items() if points}
    if not drawn:
        return None
    first = min(p[0][0] for p in drawn.values())
    last = max(p[-1][0] for p in drawn.values()) + timedelta(seconds=bin_s)
    step = timedelta(seconds=bin_s)
    fig = Figure(figsize=(9.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for stage in sorted(drawn):
        counts = dict(drawn[stage])
        edges = [first + i * step for i in range(int((last - first) / step) + 1)]
        ax.plot(
            date2num(edges),
            [counts.get(t, 0) / bin_s for t in edges[:-1]] + [counts.get(edges[-2], 0) / bin_s],
            drawstyle="steps-post",
            label=f"{stage} ({sum(counts.values())} images)",
        )
    ax.set_xlim(float(date2num(first)), float(date2num(last)))
    ax.set_ylim(bottom=0.0)
    locator = AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel(f"time (UTC), bins of {bin_s} s")
    ax.set_ylabel("images / s")
    ax.legend(fontsize=7)
    fig.savefig(path, format="png")
    return path


def _mib(value: Any) -> str | None:
    return None if value is None else number(int(value) / 2**20, 0)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _process_lines(processes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    recorded = {
        name: p["process"] for name, p in processes.items() if isinstance(p.get("process"), dict)
    }
    if not recorded:
        return ["No process recorded its memory and uptime (progress files without `process`)."]
    rows = []
    for name in sorted(recorded):
        proc, counts = recorded[name], processes[name]
        started, written = float(proc["started_at"]), float(proc["written_at"])
        rows.append(
            (
                name,
                proc.get("pid"),
                when(datetime.fromtimestamp(started, UTC)),
                when(datetime.fromtimestamp(written, UTC)),
                _duration(written - started),
                _mib(proc.get("rss_bytes")),
                _mib(proc.get("peak_rss_bytes")),
                counts.get("consumed"),
                counts.get("produced"),
            )
        )
    return [
        *table(
            [
                "Process",
                "pid",
                "Started (UTC)",
                "Last update (UTC)",
                "Up at last update",
                "RSS at last update (MiB)",
                "Peak RSS (MiB)",
                "Consumed",
                "Produced",
            ],
            rows,
        ),
        "",
        "From each process's progress file, as it last wrote it: up is last update - start "
        "(a restarted process counts from its restart; a process writes when its counters "
        "change, so an idle one, e.g. train without a retrain, shows less than it ran); RSS is "
        "resident memory at the last update, peak RSS the most the process held (getrusage). "
        "Memory of processes that share pages (forked children, mapped model files) is "
        "counted in each.",
    ]


def health_section(
    rate_rows: Sequence[Mapping[str, Any]],
    activity: Mapping[str, Any],
    bin_s: int,
    figure: Path,
    processes: Mapping[str, Mapping[str, Any]] | None,
) -> tuple[list[str], Path | None]:
    """The *Pipeline health* section and the processing-rate figure (``<stem>-rate.png``),
    written only when the day has images; else removed. ``rate_rows``: rows of
    :data:`~processors.report.picture_queries.PROCESSING_RATE` at ``bin_s``; ``activity``: the
    row of :data:`~processors.report.picture_queries.ACTIVITY`; ``processes``: progress
    files by process name, or None when the caller has none."""
    lines = ["## Pipeline health", ""]
    series: dict[str, list[tuple[datetime, int]]] = {}
    for r in rate_rows:
        series.setdefault(str(r["stage"]), []).append((utc(r["t"]), int(r["n"])))
    figure.unlink(missing_ok=True)
    written = plot_processing_rate(series, bin_s, figure)
    if written is not None:
        lines += [f"![images per second, ingested and scored]({written.name})", ""]
    scored = int(activity.get("n") or 0)
    if scored and activity.get("first_at") is not None:
        first, last = utc(activity["first_at"]), utc(activity["last_at"])
        span = (last - first).total_seconds()
        busy = len(series.get("scored", []))
        # bins are aligned to the epoch (toStartOfInterval): count those the span touches
        total_bins = int(last.timestamp() // bin_s - first.timestamp() // bin_s) + 1
        lines += [
            f"Scoring ran from {when(first)} to {when(last)} UTC ({_duration(span)}): "
            f"{scored} production scores, {number(scored / span, 2) if span > 0 else '—'} "
            f"images/s on average; images were scored in {busy} of its {total_bins} bins of "
            f"{bin_s} s ({percent(busy / total_bins)}).",
            "",
        ]
    else:
        lines += ["No production scores this day.", ""]
    if processes is not None:
        lines += _process_lines(processes)
    else:
        lines += [
            "Uptime and memory per process are recorded in the run's progress files, "
            "which this report was not given."
        ]
    return lines, written
