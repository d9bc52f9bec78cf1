"""The daily Markdown report: what the pipeline saw, decided and dropped on one UTC day.

:func:`generate_report` writes ``out_dir/report-YYYY-MM-DD.md`` (or ``<stem>.md``: the running
sink names its interim and periodic reports itself) and, beside it, the PNG figures
``report-YYYY-MM-DD-scores.png``, ``-throughput.png``, ``-thresholds.png`` and ``-map50.png``
(when there is data to plot) and thumbnails, with the candidates' boxes drawn, under
``report-YYYY-MM-DD-thumbs/``. It only reads ClickHouse, with the queries of
:mod:`processors.report.queries` and :mod:`processors.report.learning_queries` (``FINAL``, so
every figure counts distinct records). Running it again for the same day rewrites the same
files; an empty database gives a report that says so. Figures are labelled in UTC.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from processors.core.exceptions import BadImageError, SkyloopError
from processors.report import queries
from processors.report.corrections import control_events_section, self_correction_section
from processors.report.learning import learning_loop_sections
from processors.report.plots import plot_score_histograms, plot_throughput, thumbnail_png

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
_UNATTRIBUTED = "(unattributed)"


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


# -- formatting ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = "—" if value is None or value == "" else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _num(value: float | None, digits: int = 3) -> str | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str | None:
    text = _num(None if value is None else 100.0 * value, 1)
    return None if text is None else f"{text}%"


def _utc(value: datetime) -> datetime:
    # clickhouse-connect returns naive datetimes for columns in the server's zone (UTC here)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(value: datetime) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S")


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source(name: str) -> str:
    return name or _UNATTRIBUTED


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


# -- sections --------------------------------------------------------------------------------


def _summary_section(counts: Mapping[str, int]) -> list[str]:
    lines = ["## Summary", ""]
    rows = [
        ("Images ingested", "images"),
        ("Score rows (all roles)", "scores"),
        ("Images scored (production)", "production_scores"),
        ("Flagged by the ensemble (production)", "flagged"),
        ("Candidates (detector output)", "candidates"),
        ("Control events", "control_events"),
        ("Dead letters", "dead_letters"),
    ]
    lines += _table(
        ["Records", "This day", "All time"],
        [(label, counts[key], counts[f"{key}_total"]) for label, key in rows],
    )
    if not any(counts[key] for _, key in rows):
        lines += ["", "**No data for this day.**"]
        if any(counts[f"{key}_total"] for _, key in rows):
            lines[-1] += " The warehouse holds records of other days (see *All time*)."
        else:
            lines[-1] += " The warehouse is empty."
    return lines


def _sources_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Sources", ""]
    if not rows:
        return [*lines, "No source produced images, scores or dead letters this day."]
    lines += _table(
        [
            "Source",
            "Images",
            "Scored",
            "Flagged",
            "Candidate rate",
            "Candidates",
            "Mean latency (ms)",
            "p95 latency (ms)",
            "Dead letters",
        ],
        [
            (
                _source(r["source"]),
                r["images"],
                r["scored"],
                r["flagged"],
                _pct(r["candidate_rate"]),
                r["candidates"],
                _num(r["mean_latency_ms"], 1),
                _num(r["p95_latency_ms"], 1),
                r["dead_letters"],
            )
            for r in rows
        ],
    )
    lines += [
        "",
        "Scored, flagged and latency count production scores; the candidate rate is flagged / "
        "scored. Candidates are the detector's output. Dead letters are attributed to the "
        "source they name when the failing processor could tell, else by their original topic "
        f"(source:NAME) or their key (an image id); {_UNATTRIBUTED} ones have none of these.",
    ]
    return lines


def _models_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "## Models",
        "",
        *_table(
            ["Model version", "Role", "Backbone", "Scored", "Flagged", "Calibrated", "Mean ms"],
            [
                (
                    r["model_version"],
                    r["role"],
                    r["backbone"],
                    r["scored"],
                    r["flagged"],
                    r["calibrated"],
                    _num(r["mean_latency_ms"], 1),
                )
                for r in rows
            ],
        ),
    ]


def _truth_section(
    metrics: Sequence[Mapping[str, Any]], by_kind: Sequence[Mapping[str, Any]]
) -> list[str]:
    if not metrics:
        return []
    lines = ["## Detection quality against ground truth", ""]
    lines += _table(
        ["Source", "TP", "FP", "FN", "TN", "Precision", "Recall", "FPR"],
        [
            (
                r["source"],
                r["tp"],
                r["fp"],
                r["fn"],
                r["tn"],
                _num(r["precision"]),
                _num(r["recall"]),
                _num(r["fpr"]),
            )
            for r in metrics
        ],
    )
    lines += [
        "",
        "Production verdicts (is_candidate) on images whose truth is known (synthetic sources).",
    ]
    if by_kind:
        lines += ["", "Recall by anomaly kind:", ""]
        lines += _table(
            ["Source", "Kind", "Anomalies", "Detected", "Recall"],
            [
                (r["source"], r["kind"], r["anomalies"], r["detected"], _num(r["recall"]))
                for r in by_kind
            ],
        )
    return lines


def _thumbnail(row: Mapping[str, Any], thumbs_dir: Path, link_dir: str) -> tuple[str, Path | None]:
    pixels, fmt = row["pixels"], row["format"]
    if not pixels or fmt not in ("fits", "png", "jpeg"):
        return "no pixels", None
    try:
        png = thumbnail_png(bytes(pixels), fmt, boxes=row.get("box_list") or ())
    except BadImageError as exc:
        return f"undecodable ({_clip(str(exc), 60)})", None
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    name = f"{row['image_id'][:16]}.png"
    path = thumbs_dir / name
    path.write_bytes(png)
    return f"![{row['image_id'][:12]}]({link_dir}/{name})", path


def _boxes_text(boxes: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{b['label']} {b['confidence']:.2f}" for b in boxes)


def _candidates_section(
    rows: Sequence[Mapping[str, Any]], thumbs_dir: Path, link_dir: str
) -> tuple[list[str], list[Path]]:
    lines = ["## Top candidates", ""]
    if not rows:
        return [*lines, "No image was flagged by the production model this day."], []
    written: list[Path] = []
    table_rows = []
    for r in rows:
        cell, path = _thumbnail(r, thumbs_dir, link_dir)
        if path is not None:
            written.append(path)
        truth = r["truth_is_anomaly"]
        truth_text = None if truth is None else ("anomaly" if truth else "normal")
        if truth and r["truth_kind"]:
            truth_text = f"anomaly ({r['truth_kind']})"
        position = None
        if r["ra"] is not None and r["dec"] is not None:
            position = f"{r['ra']:.5f}, {r['dec']:+.5f}"
        table_rows.append(
            (
                cell,
                f"`{r['image_id'][:12]}`",
                r["source"],
                _num(r["ensemble_score"]),
                f"{r['votes_for']}/{r['votes_needed']}",
                position,
                r["label_status"],
                _boxes_text(r.get("box_list") or []) or r["box_labels"] or (r["boxes"] or None),
                r["crossmatches"],
                truth_text,
            )
        )
    lines += _table(
        [
            "Cutout",
            "Image",
            "Source",
            "Score",
            "Votes",
            "RA, Dec (deg)",
            "Label",
            "Boxes",
            "Cross-matches",
            "Truth",
        ],
        table_rows,
    )
    lines += [
        "",
        f"The {len(rows)} highest ensemble scores flagged by the production model. Each "
        "candidate's boxes are drawn on its cutout, labelled with their confidence.",
    ]
    return lines, written


def _ztf_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["## ZTF objects", ""]
    lines += _table(
        [
            "objectId",
            "Images",
            "RA (deg)",
            "Dec (deg)",
            "RA, Dec (hms, dms)",
            "Best magpsf",
            "Max rb",
            "Max score",
            "Flagged",
            "Scored",
            "Calibrated",
            "Last seen",
        ],
        [
            (
                r["object_id"],
                r["images"],
                _num(r["ra"], 5),
                _num(r["dec"], 5),
                _sexagesimal(r["ra"], r["dec"]),
                _num(r["best_magpsf"], 2),
                _num(r["max_rb"], 2),
                _num(r["max_score"]),
                r["flagged"],
                r["scored"],
                r["calibrated"],
                _when(r["last_seen"]),
            )
            for r in rows
        ],
    )
    scored = sum(int(r["scored"]) for r in rows)
    uncalibrated = scored - sum(int(r["calibrated"]) for r in rows)
    lines += [
        "",
        "Alerts with an objectId (simulated packets have none). Max score is the best production "
        "ensemble score among calibrated scores.",
    ]
    if uncalibrated:
        lines[-1] += (
            f" {uncalibrated} of the {scored} scored cutouts listed here were scored "
            "`calibrated=false`: a source is calibrated from a reference window of its first "
            "`reference_size` images (default 128; `skyloop run --reference-size N`, at least 20), "
            "and until then its images are scored but never flagged. A stream smaller than the "
            "window, such as a folder of a few alert packets, is never calibrated."
        )
    return lines


def _ingest_section(sources: Mapping[str, Mapping[str, int]]) -> list[str]:
    """What each source delivered, cut and failed, from the ingest processor's counters."""
    if not sources:
        return []

    def detail(counts: Mapping[str, int], total: str) -> str | None:
        if total not in counts:
            return None
        prefix = f"{total}."
        parts = [
            f"{k[len(prefix) :]} {v}" for k, v in sorted(counts.items()) if k.startswith(prefix)
        ]
        return f"{counts[total]}" + (f" ({', '.join(parts)})" if parts else "")

    lines = ["## Ingest", ""]
    lines += _table(
        [
            "Source",
            "Packets",
            "Alerts read",
            "Published",
            "Distinct images",
            "Dead letters",
            "Cut",
            "Failed",
        ],
        [
            (
                name,
                counts.get("packets"),
                counts.get("read"),
                counts.get("published", 0),
                counts.get("images", 0),
                counts.get("dead_letters", 0),
                detail(counts, "cut"),
                detail(counts, "failed"),
            )
            for name, counts in sorted(sources.items())
        ],
    )
    lines += [
        "",
        "Counters of the ingest run that fed this warehouse (its final progress file), not "
        "ClickHouse rows. Published counts messages to images.raw; a cutout published twice (the "
        "same alert in two schema versions) is one distinct image. Cut alerts failed a quality "
        "cut of the source spec (reason in brackets): counted here, not errors, so not dead "
        "letters. Failed items are dead letters, with their reason in the Dead letters section.",
    ]
    return lines


def _sexagesimal(ra: float | None, dec: float | None) -> str | None:
    if ra is None or dec is None or not (math.isfinite(ra) and math.isfinite(dec)):
        return None
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    coord = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    return str(coord.to_string("hmsdms", precision=1, sep=":"))


def _dead_letters_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Dead letters", ""]
    if not rows:
        return [*lines, "No dead letters this day."]
    lines += _table(
        ["Error class", "Processor", "Topic", "Count", "First", "Last", "Example message"],
        [
            (
                r["error_class"],
                r["processor"],
                r["original_topic"],
                r["n"],
                _when(r["first_at"]),
                _when(r["last_at"]),
                _clip(r["example"]),
            )
            for r in rows
        ],
    )
    return lines


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
        throughput[r["source"]].append((_utc(r["hour"]), int(r["images"])))
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
    candidate_lines, thumbnails = _candidates_section(top, thumbs_dir, thumbs_dir.name)
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
        *_summary_section(counts),
        "",
        *_sources_section(per_source),
        "",
    ]
    if ingest_sources:
        lines += [*_ingest_section(ingest_sources), ""]
    for section in (
        _models_section(_rows(client, queries.MODELS, window)),
        plot_lines,
        _truth_section(
            _rows(client, queries.TRUTH_METRICS, window),
            _rows(client, queries.TRUTH_BY_KIND, window),
        ),
        candidate_lines,
        learning.crossmatches,
        _ztf_section(_rows(client, queries.ZTF_OBJECTS, {**window, "limit": MAX_ZTF_OBJECTS})),
        learning.learning_loop,
        correction_lines,
        control_events_section(events, int(counts["control_events"])),
        _dead_letters_section(_rows(client, queries.DEAD_LETTERS_BY_CLASS, window)),
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
