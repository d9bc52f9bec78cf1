"""The report's learning-loop sections: the model registry, the lifecycle events, the detector's
learning trajectory and the pseudo-labels.

- *Model registry*: :func:`~processors.core.registry.registry_view` itself, folded over every
  ``model.*`` event from the start of the log to the window's end in log order (the rows of
  ``model_events``), so the report shows each version's role exactly as ``skyloop models`` and
  the processors see it, not a re-derivation of the rollout rules.
- *Model lifecycle*: the window's ``retrain.requested``, ``budget.deferred`` and ``model.*``
  events in log order, each with its reason and evidence.
- *Learning trajectory*: one row per detector version in registration order (retrain cycle 1 is
  the first detector registered): the held-out mAP50 its gate judged (``candidate_map50``, not
  a figure of the registration, which a trainer may have measured elsewhere) on how many
  held-out images, its training samples (``candidate_train_samples``, else the registration's
  ``train_samples``) and the gate's decision; the figure ``<stem>-map50.png`` plots the mAP50
  by cycle.
- *Pseudo-labels*: the window's candidates per source by label status, how far the dataset is
  from a retrain (:mod:`processors.report.learning_readiness`), and the label reasons.

Pure apart from writing the one figure: rows of :mod:`processors.report.learning_queries` in,
Markdown lines out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from processors.core.records import ControlEventRecord, ControlParams
from processors.core.registry import RegistryRow, registry_view
from processors.report import learning_queries as q
from processors.report.crossmatches import bright_star_section, crossmatch_section
from processors.report.learning_readiness import LearningNeeds, readiness_lines
from processors.report.markdown import clip, number, short, table, utc, when
from processors.report.plots import TrajectoryPoint, plot_map50_trajectory

__all__ = [
    "MAX_ROWS",
    "LearningSections",
    "Query",
    "TrajectoryRow",
    "learning_loop_sections",
    "learning_trajectory",
    "lifecycle_section",
    "model_events",
    "own_metrics",
    "pseudo_label_section",
    "registry_section",
    "trajectory_section",
]

MAX_ROWS = 200
"""At most this many rows in each table of these sections."""

Query = Callable[[str, Mapping[str, Any]], list[dict[str, Any]]]
"""Runs one query with its parameters; rows as dicts (``pixels`` need not be read)."""

_CANDIDATE = "candidate_"
_PRODUCTION = "production_"


def model_events(rows: Sequence[Mapping[str, Any]]) -> list[ControlEventRecord]:
    """Control events as the processors fold them, from ``control_events`` rows (params JSON)."""
    return [
        ControlEventRecord(
            event_id=r["event_id"],
            type=r["type"],
            subject=r["subject"],
            at=utc(r["at"]),
            issued_by=r["issued_by"],
            params=cast(ControlParams, json.loads(r["params"] or "{}")),
            evidence={k: float(v) for k, v in (r["evidence"] or {}).items()},
            caused_by=list(r["caused_by"] or []),
        )
        for r in rows
    ]


def own_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A version's own measurements: the registration's, overridden by the gate's
    (``candidate_*``, prefix dropped); production's figures at the gate are left out.

    >>> own_metrics({"map50": 0.9, "candidate_map50": 0.5, "production_map50": 0.4})
    {'map50': 0.5}
    """
    own = {k: v for k, v in metrics.items() if not k.startswith((_CANDIDATE, _PRODUCTION))}
    own |= {k.removeprefix(_CANDIDATE): v for k, v in metrics.items() if k.startswith(_CANDIDATE)}
    return dict(sorted(own.items()))


def _metrics_text(metrics: Mapping[str, float]) -> str | None:
    return ", ".join(f"{k}={v:.4g}" for k, v in own_metrics(metrics).items()) or None


def _registered(row: RegistryRow) -> str | None:
    if not row.registered_at:
        return None
    at = row.registered_at.replace("T", " ").removesuffix("+00:00")
    return f"{at} by {row.registered_by}" if row.registered_by else at


def registry_section(registry: Sequence[RegistryRow]) -> list[str]:
    """*Model registry*: every registered version with its kind, role, gate, metrics and
    lineage; empty when no model was ever registered."""
    if not registry:
        return []
    lines = ["## Model registry", ""]
    lines += table(
        [
            "Version",
            "Kind",
            "Role",
            "Gate",
            "Metrics",
            "Parent",
            "Dataset",
            "Registered",
            "History",
        ],
        [
            (
                f"`{r.version}`",
                r.kind,
                f"**{r.role}**" if r.role in ("production", "rolled back") else r.role,
                r.gate,
                _metrics_text(r.metrics),
                r.parent,
                short(r.dataset),
                _registered(r),
                " → ".join(r.history),
            )
            for r in registry
        ],
    )
    lines += [
        "",
        "Every version registered up to the end of the day, in registration order, folded from "
        "the model events of the control log as the processors fold them. Role: the latest one "
        "an event gave it (retired: promoted over; rejected: failed its gate). Metrics are the "
        "version's own (the gate's measurements win over the registration's); dataset is the "
        "training set's manifest id.",
    ]
    return lines


def lifecycle_section(rows: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """*Model lifecycle*: the window's learning-loop and model events in log order."""
    if not rows:
        return []
    lines = ["## Model lifecycle", ""]
    lines += table(
        ["At (UTC)", "Event", "Subject", "Issued by", "Reason", "Evidence"],
        [
            (
                when(r["at"]),
                r["type"],
                r["model_version"] or r["subject"],
                r["issued_by"],
                clip(r["reason"], 120) if r["reason"] else None,
                clip(", ".join(f"{k}={v:.4g}" for k, v in sorted(r["evidence"].items())), 160)
                or None,
            )
            for r in rows
        ],
    )
    if len(rows) >= limit:
        lines += ["", f"The first {limit} events of the day; `skyloop events` lists them all."]
    return lines


@dataclass(frozen=True)
class TrajectoryRow:
    """One detector version on the learning trajectory."""

    cycle: int
    version: str
    parent: str | None
    dataset: str | None
    train_samples: float | None
    held_out_images: float | None
    map50: float | None
    production_map50: float | None
    gate: str
    role: str
    interval: tuple[float, float] | None = None  # the gate's, of the mAP50 difference


def _interval(metrics: Mapping[str, float]) -> tuple[float, float] | None:
    low, high = metrics.get("candidate_map50_diff_low"), metrics.get("candidate_map50_diff_high")
    return None if low is None or high is None else (low, high)


def learning_trajectory(registry: Sequence[RegistryRow]) -> list[TrajectoryRow]:
    """The detector versions in registration order, numbered as retrain cycles from 1.

    >>> row = RegistryRow("yolo@1", "detector", gate="passed",
    ...                   metrics={"train_samples": 40.0, "candidate_map50": 0.6})
    >>> [(t.cycle, t.train_samples, t.map50) for t in learning_trajectory([row])]
    [(1, 40.0, 0.6)]
    """
    detectors = [r for r in registry if r.kind == "detector"]
    return [
        TrajectoryRow(
            cycle=n,
            version=r.version,
            parent=r.parent,
            dataset=r.dataset,
            train_samples=r.metrics.get("candidate_train_samples", r.metrics.get("train_samples")),
            held_out_images=r.metrics.get(
                "candidate_held_out_images", r.metrics.get("held_out_images")
            ),
            map50=r.metrics.get("candidate_map50"),
            production_map50=r.metrics.get("production_map50"),
            gate=r.gate,
            role=r.role,
            interval=_interval(r.metrics),
        )
        for n, r in enumerate(detectors, start=1)
    ]


def trajectory_section(
    trajectory: Sequence[TrajectoryRow], path: Path
) -> tuple[list[str], Path | None]:
    """*Learning trajectory*: the table and, when any mAP50 was measured, its figure at
    ``path``; empty when no detector was ever registered."""
    if not trajectory:
        return [], None
    lines = ["## Learning trajectory", ""]
    lines += table(
        [
            "Cycle",
            "Detector version",
            "Parent",
            "Training samples",
            "Held-out images",
            "Held-out mAP50",
            "Production mAP50 at gate",
            "Difference interval",
            "Gate",
            "Role",
        ],
        [
            (
                t.cycle,
                f"`{t.version}`",
                t.parent,
                number(t.train_samples, 0),
                number(t.held_out_images, 0),
                number(t.map50),
                number(t.production_map50),
                f"[{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]" if t.interval else None,
                t.gate,
                t.role,
            )
            for t in trajectory
        ],
    )
    measured = [t for t in trajectory if t.map50 is not None]
    lines += [
        "",
        "Held-out mAP50 is what the gate judged: boxes on the held-out split of the dataset "
        "(images chosen by hash of their id, never trained on), whose boxes are pseudo-labels "
        "from source extraction on the image's pixels, not ground truth; — where no gate "
        "measured it. Production mAP50 is the incumbent's on the same images (the production "
        "detector, or source extraction before any); a detector passes only when the lower "
        "bound of the paired bootstrap interval of the difference is above 0, so production's "
        "held-out score only falls through a rollback (role `rolled back`).",
    ]
    if measured:
        first, last = measured[0], measured[-1]
        best = max(measured, key=lambda t: cast(float, t.map50))
        lines[-1] += (
            f" First measured {number(first.map50)} (cycle {first.cycle}), best "
            f"{number(best.map50)} (cycle {best.cycle}), latest {number(last.map50)} "
            f"(cycle {last.cycle})."
        )
    plot = plot_map50_trajectory(
        [TrajectoryPoint(t.cycle, t.version, t.map50, t.gate) for t in trajectory], path
    )
    if plot is not None:
        lines += ["", f"![held-out mAP50 by retrain cycle]({plot.name})"]
    return lines, plot


def pseudo_label_section(
    per_source: Sequence[Mapping[str, Any]],
    reasons: Sequence[Mapping[str, Any]],
    readiness: Sequence[str] = (),
) -> list[str]:
    """*Pseudo-labels*: label status counts per source, the ``readiness`` paragraph
    (:mod:`processors.report.learning_readiness`) and the histogram of label reasons; empty
    when the window has no candidate."""
    if not per_source:
        return []
    lines = ["## Pseudo-labels", ""]
    lines += table(
        [
            "Source",
            "Candidates",
            "Pseudo-labels",
            "Training samples",
            "Rejected",
            "Pending",
            "With boxes",
        ],
        [
            (
                r["source"],
                r["candidates"],
                r["pseudo_labels"],
                r["samples"],
                r["rejected"],
                r["pending"],
                r["with_boxes"],
            )
            for r in per_source
        ],
    )
    lines += [
        "",
        "A pseudo-label is a confident candidate that passed the label policy; training samples "
        "are the pseudo-labels stored as samples (boxes from the image's own pixels).",
    ]
    if readiness:
        lines += ["", *readiness]
    if reasons:
        lines += ["", "Label reasons (numbers shown as #):", ""]
        lines += table(
            ["Status", "Reason", "Candidates", "Example"],
            [
                (r["label_status"], r["reason"] or "(none given)", r["n"], r["example"])
                for r in reasons
            ],
        )
    return lines


@dataclass(frozen=True)
class LearningSections:
    """The rendered sections: ``crossmatches`` (*Cross-matches*, *Next to a bright star*) go
    after the candidates, ``learning_loop`` (*Pseudo-labels*, *Model registry*, *Learning
    trajectory*, *Model lifecycle*) after the survey sections; ``figure`` is the mAP50 plot."""

    crossmatches: list[str]
    learning_loop: list[str]
    figure: Path | None


def _joined(sections: Sequence[list[str]]) -> list[str]:
    lines: list[str] = []
    for section in sections:
        if section:
            lines += [*([""] if lines else []), *section]
    return lines


def learning_loop_sections(
    query: Query,
    window: Mapping[str, Any],
    figure_path: Path,
    *,
    limit: int = MAX_ROWS,
    needs: LearningNeeds | None = None,
) -> LearningSections:
    """Every learning-loop section of the window ``{"start", "end"}``; reads only (through
    ``query``), apart from (re)writing the mAP50 figure at ``figure_path`` when there is one.
    With ``needs`` (the run's settings) the pseudo-labels section says how far the dataset is
    from a retrain."""
    windowed = {**window, "limit": limit}
    registry = registry_view(model_events(query(q.MODEL_EVENTS, window)))
    trajectory_lines, figure = trajectory_section(learning_trajectory(registry), figure_path)
    if figure is None:
        figure_path.unlink(missing_ok=True)  # a stale figure of an earlier run of this day
    crossmatches = _joined(
        [
            crossmatch_section(query(q.CANDIDATE_CROSSMATCHES, windowed), limit),
            bright_star_section(
                query(q.BRIGHT_STAR_COUNTS, window)[0], query(q.BRIGHT_STAR_NEIGHBOURS, windowed)
            ),
        ]
    )
    per_source = query(q.PSEUDO_LABELS, window)
    readiness = readiness_lines(query(q.DATASET, window), per_source, needs) if needs else []
    learning_loop = _joined(
        [
            pseudo_label_section(per_source, query(q.LABEL_REASONS, window), readiness),
            registry_section(registry),
            trajectory_lines,
            lifecycle_section(query(q.LIFECYCLE_EVENTS, windowed), limit),
        ]
    )
    return LearningSections(crossmatches, learning_loop, figure)
