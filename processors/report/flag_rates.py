"""Self-correction at a glance: per source, the flag rate per window against the target band.

The flag rate of a window is flagged / calibrated production scores over ``window``
consecutive images of one source in scoring order (the drift monitor's window,
``settings.drift.window``); uncalibrated images never flag and are left out (they are counted
apart in the decision figure). The band is ``[FLAG_BAND[0], FLAG_BAND[1]] x target`` where the
target is the ``target_fpr`` of the calibration in force for the source when the window ended:
the band the real-stream end-to-end test holds every window of a ZTF night to
(``tests/e2e/test_ztf_stream.py``). Flag rate counts every flag, anomalies included, since a
real stream's truth is unknown. Control events are vertical lines, one colour and style per
event type; an event marks a source's panel when its subject is that source, and every panel
when its subject is no source (pipeline-wide).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from processors.report.markdown import percent, table

__all__ = [
    "FLAG_BAND",
    "EventMark",
    "FlagWindow",
    "flag_rate_figure",
    "flag_rate_lines",
    "plot_flag_rates",
    "target_at",
]

FLAG_BAND = (0.25, 2.5)
"""A window's flag rate is in band within these multiples of the target rate."""

_MARK_STYLES: dict[str, tuple[str, str]] = {
    "calibration.updated": ("#e377c2", "-"),
    "drift.detected": ("#d62728", "-"),
    "decisions.revised": ("#2ca02c", ":"),
    "threshold.decayed": ("#9467bd", ":"),
    "threshold.set": ("#8c564b", "-."),
    "source.weights_set": ("#17becf", ":"),
    "source.paused": ("#ff7f0e", "--"),
    "source.resumed": ("#ff7f0e", ":"),
    "pipeline.paused": ("#000000", "--"),
    "pipeline.resumed": ("#000000", ":"),
}
_OTHER_STYLE = ("#7f7f7f", "-.")


@dataclass(frozen=True)
class FlagWindow:
    """One window of a source: images, flags as served, the time span, and the flags once
    every revision is applied (``revised_flagged``; None: not known, taken as served)."""

    n: int
    flagged: int
    first_at: datetime
    last_at: datetime
    revised_flagged: int | None = None

    @property
    def rate(self) -> float:
        return self.flagged / self.n if self.n else 0.0

    @property
    def revised_rate(self) -> float:
        flagged = self.flagged if self.revised_flagged is None else self.revised_flagged
        return flagged / self.n if self.n else 0.0


@dataclass(frozen=True)
class EventMark:
    at: datetime
    type: str
    subject: str


def target_at(targets: Sequence[tuple[datetime, float]], at: datetime) -> float | None:
    """The target rate of the latest calibration at or before ``at`` (None before the first or
    when it stated none: 0 in older logs).

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> target_at([(t, 0.05)], t), target_at([(t, 0.05)], t - timedelta(seconds=1))
    (0.05, None)
    """
    value: float | None = None
    for when, target in targets:
        if when <= at:
            value = target if target > 0 else None
    return value


def _marks_for(source: str, marks: Sequence[EventMark], sources: set[str]) -> list[EventMark]:
    return [m for m in marks if m.subject == source or m.subject not in sources]


def plot_flag_rates(
    windows: Mapping[str, Sequence[FlagWindow]],
    targets: Mapping[str, Sequence[tuple[datetime, float]]],
    marks: Sequence[EventMark],
    window: int,
    path: Path,
) -> Path | None:
    """Write :func:`flag_rate_figure` to ``path``; None (nothing written) without a window."""
    fig = flag_rate_figure(windows, targets, marks, window)
    if fig is None:
        return None
    fig.savefig(path, format="png")
    return path


def flag_rate_figure(
    windows: Mapping[str, Sequence[FlagWindow]],
    targets: Mapping[str, Sequence[tuple[datetime, float]]],
    marks: Sequence[EventMark],
    window: int,
) -> Figure | None:
    """One panel per source with windows: the flag rate of each full window (filled dots; a
    trailing partial window hollow) at the time of its last image, the target (dotted) and the
    band (shaded) in force, and the control events as vertical lines with a legend by type.
    None when no source has a window."""
    drawn = {s: list(ws) for s, ws in windows.items() if ws}
    if not drawn:
        return None
    sources = sorted(drawn)
    fig = Figure(figsize=(10.0, 2.8 * len(sources) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sources), 1, squeeze=False, sharex=True)[:, 0]
    times = [w.last_at for ws in drawn.values() for w in ws] + [m.at for m in marks]
    first = min([w.first_at for ws in drawn.values() for w in ws] + [m.at for m in marks])
    last = max(times)
    pad = max((last - first) * 0.02, timedelta(seconds=1))
    for ax, source in zip(axes, sources, strict=True):
        ws = drawn[source]
        full = [w for w in ws if w.n >= window]
        partial = [w for w in ws if w.n < window]
        ax.plot(
            date2num([w.last_at for w in full]),
            [w.rate for w in full],
            "o-",
            color="#1f77b4",
            markersize=4,
            label=f"flag rate per {window} images",
        )
        if partial:
            ax.plot(
                date2num([w.last_at for w in partial]),
                [w.rate for w in partial],
                "o",
                markerfacecolor="white",
                color="#1f77b4",
                markersize=5,
                label=f"partial window (< {window})",
            )
        steps = [(at, t) for at, t in targets.get(source, []) if t > 0]
        if steps:
            xs = [max(at, first - pad) for at, _ in steps] + [last + pad]
            ts = [t for _, t in steps] + [steps[-1][1]]
            lo, hi = FLAG_BAND
            ax.fill_between(
                date2num(xs),
                [lo * t for t in ts],
                [hi * t for t in ts],
                step="post",
                color="#2ca02c",
                alpha=0.15,
                label=f"band [{lo:g}, {hi:g}] x target",
            )
            ax.plot(
                date2num(xs),
                ts,
                drawstyle="steps-post",
                color="#2ca02c",
                linestyle=":",
                label="target rate",
            )
        seen: set[str] = set()
        for mark in _marks_for(source, marks, set(drawn)):
            colour, style = _MARK_STYLES.get(mark.type, _OTHER_STYLE)
            ax.axvline(
                float(date2num(mark.at)),
                color=colour,
                linestyle=style,
                linewidth=1.0,
                label=None if mark.type in seen else mark.type,
            )
            seen.add(mark.type)
        ax.set_title(source, fontsize=10)
        ax.set_ylabel("flag rate")
        ax.set_ylim(bottom=0.0)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax = axes[-1]
    ax.set_xlim(float(date2num(first - pad)), float(date2num(last + pad)))
    locator = AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time of the window's last image (UTC)")
    return fig


def flag_rate_lines(
    windows: Mapping[str, Sequence[FlagWindow]],
    targets: Mapping[str, Sequence[tuple[datetime, float]]],
    window: int,
) -> list[str]:
    """A table per source: full windows, how many had a target, how many were in band as
    served and once revised (the stored catalogue, ``scores_revised``)."""
    rows: list[tuple[Any, ...]] = []
    lo, hi = FLAG_BAND
    for source in sorted(windows):
        full = [w for w in windows[source] if w.n >= window]
        judged = [(w, target_at(targets.get(source, []), w.last_at)) for w in full]
        with_target = [(w, t) for w, t in judged if t is not None]
        inside = sum(1 for w, t in with_target if lo * t <= w.rate <= hi * t)
        revised = sum(1 for w, t in with_target if lo * t <= w.revised_rate <= hi * t)
        rates = [w.rate for w in full]
        rows.append(
            (
                source,
                len(full),
                len(with_target),
                inside,
                revised,
                percent(min(rates)) if rates else None,
                percent(max(rates)) if rates else None,
            )
        )
    return table(
        [
            "Source",
            f"Windows of {window}",
            "With a target",
            "In band as served",
            "In band revised",
            "Min rate",
            "Max rate",
        ],
        rows,
    )
