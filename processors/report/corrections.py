"""The report's account of the control log: what the pipeline corrected, and the audit trail.

:func:`self_correction_section` renders the *Self-correction* section (control events per type
and issuer, drift detections with their evidence, calibrations per source, pauses and resumes)
and writes the threshold history figure ``<stem>-thresholds.png`` beside the report;
:func:`control_events_section` renders the full *Control events* table. Invariants:

- Reads only, through the caller's query function, with the windowed queries of
  :mod:`processors.report.correction_queries` (``FINAL``: each event counts once however often
  it was delivered). Rows come back in a deterministic order, so reruns write the same Markdown.
- The threshold history is the :class:`~processors.core.control.ControlState` fold itself,
  replayed over every threshold-setting event from the start of the log in log order: the
  plotted value is the one the scorer applied (overrides, operator precedence and a new
  calibration superseding its overrides included), not a re-derivation of those rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from processors.core.control import ControlState
from processors.core.events import EventType
from processors.core.records import ControlEventRecord, ControlParams
from processors.report.correction_queries import (
    CALIBRATIONS,
    CONTROL_EVENT_COUNTS,
    DRIFT_DETECTIONS,
    PAUSES,
    REVISIONS,
    THRESHOLD_EVENTS,
)
from processors.report.markdown import clip, formatted, number, percent, table, utc, when
from processors.report.plots import plot_threshold_history

__all__ = [
    "MAX_ROWS",
    "Lane",
    "Query",
    "control_events_section",
    "self_correction_section",
    "threshold_history",
]

MAX_ROWS = 200
"""At most this many rows in each event table; the section says when there were more."""

Query = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
"""Runs one query of :mod:`processors.report.queries` with its parameters; rows as dicts."""

Lane = tuple[str, str]
"""(subject, model version) of a threshold series; model ``*``: an operator's model-less one."""

_PAUSE_TYPES = (
    EventType.SOURCE_PAUSED,
    EventType.SOURCE_RESUMED,
    EventType.PIPELINE_PAUSED,
    EventType.PIPELINE_RESUMED,
)


# -- formatting (values as :mod:`processors.report.markdown` renders them) ------------------


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _key_params(params_json: str) -> str | None:
    try:
        params = json.loads(params_json) if params_json else {}
    except json.JSONDecodeError:
        return clip(params_json, 120)
    parts = []
    for key, value in params.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={_short(v)}" for k, v in list(value.items())[:4])
            more = ", …" if len(value) > 4 else ""
            parts.append(f"{key}={{{inner}{more}}}")
        else:
            parts.append(f"{key}={_short(value)}")
    return clip("; ".join(parts), 200) or None


# -- the threshold history -------------------------------------------------------------------


def _as_event(row: Mapping[str, Any]) -> ControlEventRecord:
    params = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
    return ControlEventRecord(
        event_id=row["event_id"],
        type=row["type"],
        subject=row["subject"],
        at=utc(row["at"]),
        issued_by=row["issued_by"],
        params=cast(ControlParams, params or {}),
        evidence={},
        caused_by=list(row.get("caused_by") or []),
    )


def _lanes(state: ControlState) -> set[Lane]:
    lanes = {(cal.source, cal.model_version) for cal in state.calibrations.values()}
    modelless: set[str] = set()
    for key in state.source_thresholds:
        model, subject = key.split("|", 1)
        if model == "*":
            modelless.add(subject)
        else:
            lanes.add((subject, model))
    # A model-less override moves the lanes of its source; alone, it is a lane of its own.
    calibrated = {subject for subject, _ in lanes}
    return lanes | {(subject, "*") for subject in modelless - calibrated}


def _in_force(state: ControlState, lane: Lane) -> float | None:
    """The highest detector threshold the scorer applies to ``lane``, or None without one."""
    subject, model = lane
    calibration = state.calibration_for(model, subject)
    base = dict(calibration.thresholds) if calibration else {}
    detectors = set(base)
    for key in (f"{model}|{subject}", f"*|{subject}"):
        detectors |= set(state.source_thresholds.get(key, {}))
    values = [state.threshold_for(model, subject, d, base.get(d, math.nan)) for d in detectors]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def threshold_history(
    events: Iterable[Mapping[str, Any]], start: datetime
) -> dict[Lane, list[tuple[datetime, float]]]:
    """Per lane, the threshold in force from the first change at or after ``start`` on.

    ``events``: rows of :data:`~processors.report.THRESHOLD_EVENTS` (``at``, ``type``,
    ``subject``, ``issued_by``, ``params`` as JSON, ``caused_by``, ``event_id``) in log order,
    all of them up to the window's end. Each lane's points are ``(time, value)``: its value when
    an event changed it, the value being the highest detector threshold in force (see the module
    docstring). A lane already set before ``start`` opens with that value at ``start``. Empty
    when nothing changed from ``start`` on: a window without changes has no history to draw.

    >>> from datetime import UTC
    >>> t = datetime(2026, 12, 1, 8, tzinfo=UTC)
    >>> rows = [
    ...     {"at": t, "type": "calibration.updated", "subject": "sky", "issued_by": "controller",
    ...      "params": '{"model_version":"m","thresholds":{"knn":0.9,"energy":0.8}}',
    ...      "event_id": "c1"},
    ...     {"at": t.replace(hour=9), "type": "threshold.decayed", "subject": "sky",
    ...      "issued_by": "controller", "event_id": "d1",
    ...      "params": '{"model_version":"m","thresholds":{"knn":0.85,"energy":0.85}}'}]
    >>> history = threshold_history(rows, start=t.replace(hour=0))
    >>> [(at.hour, value) for at, value in history[("sky", "m")]]
    [(8, 0.9), (9, 0.85)]
    """
    state = ControlState.initial()
    current: dict[Lane, float] = {}
    before: dict[Lane, float] | None = None  # values in force at ``start``, once reached
    opened: datetime | None = None
    changes: dict[Lane, list[tuple[datetime, float]]] = {}
    for offset, row in enumerate(events):
        event = _as_event(row)
        state = state.apply(event, offset)
        if before is None and event["at"] >= start:
            before, opened = dict(current), event["at"]
        for lane in sorted(_lanes(state)):
            value = _in_force(state, lane)
            if value is None or current.get(lane) == value:
                continue
            current[lane] = value
            if before is not None and opened is not None:
                changes.setdefault(lane, []).append((max(event["at"], opened), value))
    if before is None or opened is None:
        return {}
    origin = start if before else opened
    history = {lane: [(origin, value)] for lane, value in before.items()}
    for lane, points in changes.items():
        history.setdefault(lane, []).extend(points)
    return {lane: history[lane] for lane in sorted(history)}


def _label(lane: Lane) -> str:
    subject, model = lane
    return f"{subject} · " + {"*": "any model", "": "no model"}.get(model, model)


# -- sections --------------------------------------------------------------------------------


def _more(shown: int, total: int) -> list[str]:
    return ["", f"First {shown} of {total}."] if total > shown else []


def _drift_lines(rows: Sequence[Mapping[str, Any]], total: int) -> list[str]:
    lines = ["### Drift detections", ""]
    if not rows:
        return [*lines, "No drift detected this day."]
    lines += table(
        ["Time (UTC)", "Subject", "Model", "Reason", "KS p", "PSI", "Flag rate vs expected"],
        [
            (
                when(r["at"]),
                r["subject"],
                r["model_version"],
                r["reason"],
                formatted(r["ks_p"], ".3g"),
                number(r["psi"], 3),
                None
                if r["flag_rate"] is None
                else f"{percent(r['flag_rate'])} vs {percent(r['expected_flag_rate']) or '—'}",
            )
            for r in rows
        ],
    )
    return [
        *lines,
        *_more(len(rows), total),
        "",
        "A detection is raised after consecutive windows disagree with the calibration's "
        "profile; the reason names the tests that fired: score distribution (KS p, with PSI "
        "above its sampling noise), features (KS of feature projections) or flag flood / "
        "collapse (the flag rate against the rate the thresholds in force should give). The "
        "recalibration it causes is counted under Calibrations (reason drift).",
    ]


def _revision_lines(rows: Sequence[Mapping[str, Any]], total: int) -> list[str]:
    if not rows:
        return []
    lines = ["### Revisions since a change point", ""]
    lines += table(
        [
            "Time (UTC)",
            "Subject",
            "Model",
            "Revision",
            "Images",
            "Flags as served → revised",
            "Withdrawn",
            "Added",
        ],
        [
            (
                when(r["at"]),
                r["subject"],
                r["model_version"],
                r["revision"],
                r["images"],
                f"{r['flags_before']} → {r['flags_after']}",
                r["withdrawn"],
                r["added"],
            )
            for r in rows
        ],
    )
    return [
        *lines,
        *_more(len(rows), total),
        "",
        "After a drift's recalibration, the images served between the change point and the "
        "first image scored under it are decided again under it (its own reference images "
        "cross-fitted). The live decisions stay as published; `scores_revised` and "
        "`candidates_revised` (a `withdrawn` column) hold the corrected catalogue.",
    ]


def _calibration_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "### Calibrations",
        "",
        *table(
            [
                "Subject",
                "Model",
                "Calibrations",
                "Reasons",
                "First (UTC)",
                "Last (UTC)",
                "Latest max threshold",
            ],
            [
                (
                    r["subject"],
                    r["model_version"],
                    r["calibrations"],
                    r["reasons"],
                    when(r["first_at"]),
                    when(r["last_at"]),
                    number(r["last_max_threshold"], 3),
                )
                for r in rows
            ],
        ),
        "",
        "Reasons: initial (first reference of a source), refine (a larger reference from a "
        "stable epoch), drift (after a drift detection), operator (asked for by an operator).",
    ]


def _pause_lines(rows: Sequence[Mapping[str, Any]], total: int) -> list[str]:
    if not rows:
        return []
    return [
        "### Pauses and resumes",
        "",
        *table(
            ["Time (UTC)", "Event", "Subject", "Issued by", "Reason", "Until (UTC)"],
            [
                (
                    when(r["at"]),
                    r["type"],
                    r["subject"],
                    r["issued_by"],
                    r["reason"],
                    when(r["until"])
                    if r["until"] is not None
                    else ("until resumed" if r["type"].endswith(".paused") else None),
                )
                for r in rows
            ],
        ),
        *_more(len(rows), total),
    ]


def _threshold_lines(
    query: Query, window: Mapping[str, datetime], path: Path
) -> tuple[list[str], Path | None]:
    history = threshold_history(query(THRESHOLD_EVENTS, window), window["start"])
    path.unlink(missing_ok=True)  # a rerun without changes must not keep an earlier figure
    written = plot_threshold_history(
        {_label(lane): points for lane, points in history.items()}, path
    )
    if written is None:
        return [], None
    return [
        "### Threshold history",
        "",
        f"![threshold in force per source and model]({written.name})",
        "",
        "The highest detector threshold in force per source and model (calibrated scale), as "
        "the scorer applied it: set by calibrations, lowered by decay, overridden by "
        "threshold.set; a line that starts at midnight carries a value set on an earlier day.",
    ], written


def self_correction_section(
    query: Query, window: Mapping[str, datetime], figure: Path
) -> tuple[list[str], Path | None]:
    """The *Self-correction* section of ``window`` and the threshold figure it links.

    ``figure`` is where the threshold history is written (``<stem>-thresholds.png`` beside the
    report); it is written only when a threshold changed in the window, else removed. Returns
    the Markdown lines and the figure's path, or None. A window without control events gives
    one line saying so.
    """
    lines = ["## Self-correction", ""]
    counts = query(CONTROL_EVENT_COUNTS, window)
    if not counts:
        figure.unlink(missing_ok=True)
        return [*lines, "No control events this day, so no self-correction."], None
    per_type: dict[str, int] = {}
    for r in counts:
        per_type[r["type"]] = per_type.get(r["type"], 0) + int(r["n"])
    lines += [
        f"{sum(per_type.values())} control events this day, by type and issuer:",
        "",
        *table(
            ["Type", "Issued by", "Events", "First (UTC)", "Last (UTC)"],
            [
                (r["type"], r["issued_by"], r["n"], when(r["first_at"]), when(r["last_at"]))
                for r in counts
            ],
        ),
        "",
    ]
    limited = {**window, "limit": MAX_ROWS}
    lines += _drift_lines(
        query(DRIFT_DETECTIONS, limited), per_type.get(EventType.DRIFT_DETECTED, 0)
    )
    pauses = sum(per_type.get(kind, 0) for kind in _PAUSE_TYPES)
    threshold_lines, written = _threshold_lines(query, window, figure)
    revisions = per_type.get(EventType.DECISIONS_REVISED, 0)
    for part in (
        _revision_lines(query(REVISIONS, limited) if revisions else [], revisions),
        _calibration_lines(query(CALIBRATIONS, window)),
        _pause_lines(query(PAUSES, limited), pauses),
        threshold_lines,
    ):
        if part:
            lines += ["", *part]
    return lines, written


def control_events_section(rows: Sequence[Mapping[str, Any]], total: int) -> list[str]:
    """The *Control events* section: the window's audit trail (``total`` events, ``rows`` the
    first of them in time order), with each event's key params, evidence and causes."""
    lines = ["## Control events", ""]
    if not rows:
        return [*lines, "No control events this day."]
    lines += table(
        ["Time (UTC)", "Type", "Subject", "Issued by", "Key params", "Evidence", "Caused by"],
        [
            (
                when(r["at"]),
                r["type"],
                r["subject"],
                r["issued_by"],
                _key_params(r["params"]),
                clip(", ".join(f"{k}={_short(v)}" for k, v in r["evidence"].items()), 120),
                ", ".join(e[:8] for e in r["caused_by"]),
            )
            for r in rows
        ],
    )
    if total > len(rows):
        lines += ["", f"First {len(rows)} of {total} events."]
    return lines
