"""The report's decision, self-correction, sky and health sections with their figures.

Each function reads ClickHouse through the caller's query function with the queries of
:mod:`processors.report.picture_queries`, writes its figure beside the report (or removes a
stale one when there is nothing to draw, so a rerun never keeps an earlier figure) and returns
its Markdown lines and the figure's path (None when not written).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from processors.report import picture_queries as q
from processors.report.decision_plots import SourceDecisions, plot_decisions
from processors.report.flag_rates import (
    FLAG_BAND,
    EventMark,
    FlagWindow,
    flag_rate_lines,
    plot_flag_rates,
)
from processors.report.health import health_section, rate_bin_s
from processors.report.markdown import utc
from processors.report.sky import coverage, sky_section

__all__ = ["MARGIN_BINS", "decisions_section", "flag_rate_section", "health", "sky"]

Query = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
Section = tuple[list[str], Path | None]

MARGIN_BINS = 100
"""Vote-margin bins on [-1, 1] (even, so 0 is a bin edge): 0.02 wide."""
MAX_MARKS = 500


def decisions_section(query: Query, window: Mapping[str, datetime], figure: Path) -> Section:
    """*Why images were flagged*: the vote margin and votes per source, uncalibrated apart."""
    decisions: dict[str, SourceDecisions] = {}
    for r in query(q.VOTE_MARGINS, {**window, "bins": MARGIN_BINS}):
        margins = decisions.setdefault(r["source"], SourceDecisions()).margins
        margins.setdefault(bool(r["is_candidate"]), [0] * MARGIN_BINS)[int(r["bin"])] = int(r["n"])
    for r in query(q.VOTES, window):
        key = (int(r["votes_for"]), int(r["votes_needed"]), bool(r["is_candidate"]))
        decisions.setdefault(r["source"], SourceDecisions()).votes[key] = int(r["n"])
    for r in query(q.UNCALIBRATED, window):
        decisions.setdefault(r["source"], SourceDecisions()).uncalibrated = int(r["n"])
    lines = ["## Why images were flagged", ""]
    figure.unlink(missing_ok=True)
    if not decisions:
        return [*lines, "No production scores this day."], None
    written = plot_decisions(decisions, figure, bins=MARGIN_BINS)
    needed = sorted({k for d in decisions.values() for _, k, _ in d.votes})
    rule = " or ".join(str(k) for k in needed) or "k"
    lines += [
        f"![vote margin and votes per source]({figure.name})",
        "",
        f"Candidacy is the ensemble's vote: a detector votes when its calibrated score is above "
        f"its threshold, and an image is flagged when at least {rule} detectors vote. Left: "
        "each calibrated image's vote margin, its k-th largest (score - threshold) over the "
        "detectors, which is above 0 exactly when the image is flagged (red). Right: how many "
        "detectors voted. Images scored before their source's first calibration have no "
        "thresholds and cannot be flagged: they are counted apart, never as a score of 0.",
        "",
        "| Source | Calibrated | Flagged | Uncalibrated (apart) |",
        "|---|---|---|---|",
        *(
            f"| {s} | {d.calibrated} | {d.flagged} | {d.uncalibrated} |"
            for s, d in sorted(decisions.items())
        ),
    ]
    return lines, written


def flag_rate_section(
    query: Query, window: Mapping[str, datetime], size: int, figure: Path
) -> Section:
    """*Self-correction at a glance*: flag rate per ``size`` images against the target band."""
    windows: dict[str, list[FlagWindow]] = {}
    for r in query(q.FLAG_WINDOWS, {**window, "window": size}):
        windows.setdefault(r["source"], []).append(
            FlagWindow(
                int(r["n"]),
                int(r["flagged"]),
                utc(r["first_at"]),
                utc(r["last_at"]),
                int(r["revised_flagged"]),
            )
        )
    targets: dict[str, list[tuple[datetime, float]]] = {}
    for r in query(q.TARGET_RATES, window):
        targets.setdefault(r["source"], []).append((utc(r["at"]), float(r["target_fpr"])))
    marks = [
        EventMark(utc(r["at"]), r["type"], r["subject"])
        for r in query(q.CONTROL_MARKS, {**window, "limit": MAX_MARKS})
    ]
    lines = ["## Self-correction at a glance", ""]
    figure.unlink(missing_ok=True)
    written = plot_flag_rates(windows, targets, marks, size, figure)
    if written is None:
        return [*lines, "No calibrated production scores this day, so no flag rate."], None
    lo, hi = FLAG_BAND
    lines += [
        f"![flag rate per window against the target band]({figure.name})",
        "",
        f"Per source, the share of calibrated images flagged in each window of {size} images "
        f"(the drift monitor's window) in scoring order, at the time of the window's last image; "
        f"the shaded band is [{lo:g}, {hi:g}] x the target rate of the calibration in force, "
        "the band a real night is held to. Vertical lines are control events of that source "
        "(or of the whole pipeline), by type. The trailing partial window is hollow and not "
        "counted below.",
        "",
        *flag_rate_lines(windows, targets, size),
    ]
    if len(marks) >= MAX_MARKS:
        lines += ["", f"Only the first {MAX_MARKS} control events are marked."]
    return lines, written


def sky(query: Query, window: Mapping[str, datetime]) -> list[str]:
    """*Sky coverage*: unique HEALPix cells of the images with a position."""
    return sky_section(coverage(query(q.SKY_POSITIONS, window)))


def health(
    query: Query,
    window: Mapping[str, datetime],
    figure: Path,
    processes: Mapping[str, Mapping[str, Any]] | None,
) -> Section:
    """*Pipeline health*: processing rate figure, active span, uptime and memory per process."""
    activity = query(q.ACTIVITY, window)[0]
    if activity.get("n") and activity.get("first_at") is not None:
        first, last = utc(activity["first_at"]), utc(activity["last_at"])
    else:
        first = last = window["start"]
    bin_s = rate_bin_s(first, last)
    rows = query(q.PROCESSING_RATE, {**window, "bin_s": bin_s})
    return health_section(rows, activity, bin_s, figure, processes)
