"""The daily report's overview sections: summary, sources, models, truth, ingest, dead letters.

Each function turns rows of :mod:`processors.report.queries` (or the ingest counters) into
Markdown lines, formatted with :mod:`processors.report.markdown`; pure, so the same rows always
give the same text. A section with nothing to show returns ``[]`` or a line that says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from processors.report.markdown import clip, number, percent, table, when

__all__ = [
    "dead_letters_section",
    "ingest_section",
    "models_section",
    "sources_section",
    "summary_section",
    "truth_section",
]

_UNATTRIBUTED = "(unattributed)"


def _source(name: str) -> str:
    return name or _UNATTRIBUTED


def summary_section(counts: Mapping[str, int]) -> list[str]:
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
    lines += table(
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


def sources_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Sources", ""]
    if not rows:
        return [*lines, "No source produced images, scores or dead letters this day."]
    lines += table(
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
            "Uncalibrated",
        ],
        [
            (
                _source(r["source"]),
                r["images"],
                r["scored"],
                r["flagged"],
                percent(r["candidate_rate"]),
                r["candidates"],
                number(r["mean_latency_ms"], 1),
                number(r["p95_latency_ms"], 1),
                r["dead_letters"],
                r["uncalibrated"],
            )
            for r in rows
        ],
    )
    lines += [
        "",
        "Scored, flagged and latency count production scores; the candidate rate is flagged / "
        "calibrated scores: uncalibrated images (scored before their source's first "
        "calibration, counted in Scored and in the last column) cannot be flagged. "
        "Candidates are the detector's output. Dead letters are attributed to the "
        "source they name when the failing processor could tell, else by their original topic "
        f"(source:NAME) or their key (an image id); {_UNATTRIBUTED} ones have none of these.",
    ]
    return lines


def models_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "## Models",
        "",
        *table(
            ["Model version", "Role", "Backbone", "Scored", "Flagged", "Calibrated", "Mean ms"],
            [
                (
                    r["model_version"],
                    r["role"],
                    r["backbone"],
                    r["scored"],
                    r["flagged"],
                    r["calibrated"],
                    number(r["mean_latency_ms"], 1),
                )
                for r in rows
            ],
        ),
    ]


def truth_section(
    metrics: Sequence[Mapping[str, Any]], by_kind: Sequence[Mapping[str, Any]]
) -> list[str]:
    if not metrics:
        return []
    lines = ["## Detection quality against ground truth", ""]
    lines += table(
        ["Source", "TP", "FP", "FN", "TN", "Precision", "Recall", "FPR"],
        [
            (
                r["source"],
                r["tp"],
                r["fp"],
                r["fn"],
                r["tn"],
                number(r["precision"]),
                number(r["recall"]),
                number(r["fpr"]),
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
        lines += table(
            ["Source", "Kind", "Anomalies", "Detected", "Recall"],
            [
                (r["source"], r["kind"], r["anomalies"], r["detected"], number(r["recall"]))
                for r in by_kind
            ],
        )
    return lines


def ingest_section(sources: Mapping[str, Mapping[str, int]]) -> list[str]:
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
    lines += table(
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


def dead_letters_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Dead letters", ""]
    if not rows:
        return [*lines, "No dead letters this day."]
    lines += table(
        ["Error class", "Processor", "Topic", "Count", "First", "Last", "Example message"],
        [
            (
                r["error_class"],
                r["processor"],
                r["original_topic"],
                r["n"],
                when(r["first_at"]),
                when(r["last_at"]),
                clip(r["example"]),
            )
            for r in rows
        ],
    )
    return lines


# -- plots -----------------------------------------------------------------------------------
