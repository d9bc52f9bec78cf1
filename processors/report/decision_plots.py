"""The report's decision figure: why each image was or was not flagged, per source.

One row per source, two panels (matplotlib's object API on the Agg canvas, as in
:mod:`processors.report.plots`):

- the *vote margin* histogram (see :mod:`processors.report.picture_queries`): an image is a
  candidate exactly when its margin is above 0, so the line at 0 is the decision's own
  threshold and every flagged (red) bar lies right of it;
- detectors voting per image (0 .. n), stacked not flagged / flagged, with a dashed line
  between ``k - 1`` and ``k`` for each ``k`` (votes needed) in force; the source's
  *uncalibrated* images (scored before its first calibration: no thresholds, no vote) are a
  separate hatched grey bar right of an axis gap, never a score or a vote count of 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["SourceDecisions", "plot_decisions"]

_FLAGGED = "#d62728"
_NOT_FLAGGED = "#1f77b4"
_UNCALIBRATED = "#7f7f7f"


@dataclass
class SourceDecisions:
    """One source's production decisions of the window.

    ``margins[flagged]``: counts of the calibrated images per margin bin, ``(lo, hi]`` bins of
    equal width on ``[-1, 1]``; ``votes[(votes_for, votes_needed, flagged)]``: image counts;
    ``uncalibrated``: images scored before the source's first calibration.
    """

    margins: dict[bool, list[int]] = field(default_factory=dict)
    votes: dict[tuple[int, int, bool], int] = field(default_factory=dict)
    uncalibrated: int = 0

    @property
    def calibrated(self) -> int:
        return sum(self.votes.values())

    @property
    def flagged(self) -> int:
        return sum(n for (_, _, flagged), n in self.votes.items() if flagged)


def _margin_panel(ax: Axes, source: str, data: SourceDecisions, bins: int) -> None:
    normal = np.asarray(data.margins.get(False, [0] * bins), dtype=float)
    flagged = np.asarray(data.margins.get(True, [0] * bins), dtype=float)
    if not (normal.any() or flagged.any()):
        ax.text(
            0.5,
            0.5,
            f"no calibrated scores\n({data.uncalibrated} uncalibrated images: see right)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(source, fontsize=10)
        return
    edges = np.linspace(-1.0, 1.0, bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 2.0 / bins
    ax.bar(
        centers, normal, width=width, color=_NOT_FLAGGED, label=f"not flagged ({int(normal.sum())})"
    )
    ax.bar(
        centers,
        flagged,
        width=width,
        bottom=normal,
        color=_FLAGGED,
        label=f"flagged ({int(flagged.sum())})",
    )
    ax.axvline(0.0, color="black", linestyle="--", label="threshold: margin > 0 flags")
    # the occupied range (and the line at 0), so a narrow cluster of flags stays readable
    occupied = np.flatnonzero(normal + flagged)
    lo = min(float(edges[occupied[0]]), -0.05)
    hi = max(float(edges[occupied[-1] + 1]), 0.05)
    pad = (hi - lo) * 0.03
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0.0, float((normal + flagged).max()) * 1.3)
    ax.set_xlabel("vote margin: k-th largest (detector score - its threshold)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{source}: {data.calibrated} calibrated images", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _votes_panel(ax: Axes, data: SourceDecisions, detectors: int) -> None:
    xs = np.arange(detectors + 1)
    normal = np.zeros(detectors + 1)
    flagged = np.zeros(detectors + 1)
    for (votes_for, _, is_flagged), n in data.votes.items():
        (flagged if is_flagged else normal)[min(votes_for, detectors)] += n
    ax.bar(xs, normal, width=0.8, color=_NOT_FLAGGED)
    ax.bar(xs, flagged, width=0.8, bottom=normal, color=_FLAGGED)
    for x, n in zip(xs, normal + flagged, strict=True):
        ax.annotate(
            str(int(n)), (x, n), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
        )
    for k in sorted({needed for _, needed, _ in data.votes}):
        ax.axvline(k - 0.5, color="black", linestyle="--")
        ax.annotate(
            f"flagged at\n>= {k} votes",
            (k - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=7,
        )
    apart = detectors + 1.5
    ax.bar(
        [apart],
        [data.uncalibrated],
        width=0.8,
        color="white",
        edgecolor=_UNCALIBRATED,
        hatch="//",
    )
    ax.annotate(
        str(data.uncalibrated),
        (apart, data.uncalibrated),
        xytext=(0, 2),
        textcoords="offset points",
        ha="center",
        fontsize=7,
    )
    ax.axvline(detectors + 0.75, color=_UNCALIBRATED, linewidth=0.8)
    ax.set_xticks([*xs, apart], [*(str(x) for x in xs), "uncalibrated\n(no vote)"])
    ax.set_xlim(-0.6, apart + 0.6)
    ax.set_ylim(0.0, max(float((normal + flagged).max()), data.uncalibrated, 1.0) * 1.3)
    ax.set_xlabel("detectors voting")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_decisions(
    decisions: Mapping[str, SourceDecisions], path: Path, *, bins: int, detectors: int = 3
) -> Path | None:
    """Write the decision figure of ``decisions`` (one row per source, in name order) to
    ``path``; ``bins``: margin bins on ``[-1, 1]``; ``detectors``: the ensemble's size.
    Writes nothing and returns None without a source."""
    sources: Sequence[str] = sorted(decisions)
    if not sources:
        return None
    fig = Figure(figsize=(11.0, 2.9 * len(sources)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sources), 2, squeeze=False, width_ratios=[2.2, 1.0])
    for row, source in zip(axes, sources, strict=True):
        _margin_panel(row[0], source, decisions[source], bins)
        _votes_panel(row[1], decisions[source], detectors)
    fig.savefig(path, format="png")
    return path
