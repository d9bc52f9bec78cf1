"""Figures and thumbnails of the daily report, written as PNG files.

Figures use matplotlib's object API on the Agg canvas (no pyplot, no global backend switch), so
they render headless and from any thread. Thumbnails show a cutout with a display stretch:
values are scaled between the 1st and 99.5th finite percentiles, then (for FITS, whose values
are linear fluxes) compressed with ``asinh`` so faint structure and bright cores both show.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import (
    AutoDateLocator,
    ConciseDateFormatter,
    DateFormatter,
    HourLocator,
    date2num,
)
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from processors.core.imaging import decode_pixels
from processors.core.records import Box, ImageFormat

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "TrajectoryPoint",
    "draw_boxes",
    "plot_map50_trajectory",
    "plot_threshold_history",
    "plot_throughput",
    "stretch",
    "thumbnail_png",
]

_FLAGGED = "#d62728"
_NOT_FLAGGED = "#1f77b4"
# saturated colours that stand out on grey sky and on false-colour RGB alike
_BOX_COLOURS = ((0, 255, 0), (255, 215, 0), (255, 0, 255), (0, 255, 255))
_GATE_COLOURS = {"passed": "#2ca02c", "failed": "#d62728"}


def stretch(
    array: NDArray[np.floating], *, asinh: bool = True, beta: float = 10.0
) -> NDArray[np.uint8]:
    """Map ``(h, w)`` or ``(h, w, 3)`` values to uint8 with a percentile (+ asinh) stretch.

    Non-finite pixels become black. A constant image becomes uniformly black.

    >>> stretch(np.array([[0.0, 1.0], [2.0, np.nan]]), asinh=False).tolist()
    [[0, 126], [255, 0]]
    """
    data = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    lo, hi = np.percentile(data[finite], [1.0, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((np.where(finite, data, lo) - lo) / (hi - lo), 0.0, 1.0)
    if asinh:
        scaled = np.arcsinh(beta * scaled) / np.arcsinh(beta)
    return (scaled * 255.0).astype(np.uint8)


def thumbnail_png(
    pixels: bytes, fmt: ImageFormat, *, size: int = 96, boxes: Sequence[Box] = ()
) -> bytes:
    """A PNG thumbnail (longest side ``size``) of encoded pixels; raises BadImageError.

    Three or more bands show as RGB (the first three), otherwise the first band as grey.
    With ``boxes`` (xyxy in the decoded image's pixels: x along columns, y down the rows, as the
    detector reports them) the thumbnail is RGB and each box is drawn on it, see
    :func:`draw_boxes`; without, the pixels are the same as before boxes existed.
    """
    from PIL import Image

    array = decode_pixels(pixels, fmt)
    view = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, 0]
    image = Image.fromarray(stretch(view, asinh=fmt == "fits"))
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    image = image.resize(new_size, resample)
    if boxes:
        image = draw_boxes(image, boxes, scale=image.width / array.shape[1])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def draw_boxes(image: PILImage, boxes: Sequence[Box], *, scale: float = 1.0) -> PILImage:
    """A copy of ``image`` (as RGB) with each box outlined and labelled ``label confidence``.

    Box coordinates are multiplied by ``scale`` (thumbnail pixels per image pixel) and clipped to
    the image; a box that ends up outside it entirely is not drawn. Every box is outlined (in
    the given order, so with overlaps the last one is on top); then labels, on a black plate,
    above a box (inside it when the box touches the top edge), most confident first: a label
    that would cover one already drawn is left out, so a crowded cutout stays legible.
    """
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=max(8, round(out.height / 10)))
    width, height = out.size
    drawn: list[tuple[float, tuple[float, float], tuple[int, int, int], Box]] = []
    for n, box in enumerate(boxes):
        colour = _BOX_COLOURS[n % len(_BOX_COLOURS)]
        x1, x2 = sorted((box["x1"] * scale, box["x2"] * scale))
        y1, y2 = sorted((box["y1"] * scale, box["y2"] * scale))
        if not all(np.isfinite((x1, y1, x2, y2))) or x2 < 0 or y2 < 0:
            continue
        if x1 > width - 1 or y1 > height - 1:
            continue
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(width - 1.0, max(x2, x1 + 1)), min(height - 1.0, max(y2, y1 + 1))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=1)
        drawn.append((-float(box["confidence"]), (x1, y1), colour, box))
    plates: list[tuple[float, float, float, float]] = []
    for _, (x1, y1), colour, box in sorted(drawn, key=lambda d: d[0]):
        text = f"{box['label']} {box['confidence']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1 + 1
        tx = min(max(0.0, x1), max(0.0, width - (right - left)))
        plate = (tx, ty, tx + right - left, ty + bottom - top)
        if any(_overlap(plate, other) for other in plates):
            continue
        plates.append(plate)
        # a dark plate under the text keeps it legible on bright or noisy cutouts
        draw.rectangle(plate, fill=(0, 0, 0))
        draw.text((tx, ty - top), text, fill=colour, font=font)
    return out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def plot_throughput(
    series: Mapping[str, Sequence[tuple[datetime, int]]],
    window: tuple[datetime, datetime],
    path: Path,
    *,
    now: datetime | None = None,
) -> Path:
    """Images fetched per hour over ``window`` (UTC), one line per source; empty hours are 0.

    Hours that start after ``now`` (the report is written before the day ends) are not drawn,
    rather than drawn as 0: they have not happened. A dotted line marks ``now`` then.
    """
    start, end = window
    until = end if now is None else max(start + timedelta(hours=1), min(end, now))
    hours = [start + timedelta(hours=h) for h in range(int((end - start) / timedelta(hours=1)))]
    hours = [hour for hour in hours if hour < until]
    fig = Figure(figsize=(8.0, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for source in sorted(series):
        counts = dict(series[source])
        values = [counts.get(hour, 0) for hour in hours]
        ax.plot(
            date2num([*hours, min(until, hours[-1] + timedelta(hours=1))]),
            [*values, values[-1]],  # the last hour drawn to its end (or to ``now``)
            marker="o",
            markersize=3,
            markevery=list(range(len(hours))),
            drawstyle="steps-post",
            label=source,
        )
    if until < end:
        ax.axvline(float(date2num(until)), color="grey", linestyle=":", label="report written")
    ax.set_xlim(float(date2num(start)), float(date2num(end)))
    ax.xaxis.set_major_locator(HourLocator(byhour=range(0, 24, 3), tz=UTC))
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=UTC))
    ax.set_xlabel(f"hour of {start:%Y-%m-%d} (UTC)")
    ax.set_ylabel("images / hour")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    fig.savefig(path, format="png")
    return path


def plot_threshold_history(
    series: Mapping[str, Sequence[tuple[datetime, float]]], path: Path
) -> Path | None:
    """The threshold in force over time as step lines, one per series, on a UTC time axis.

    ``series[label]`` holds ``(time, value)`` points in time order, each value in force from its
    time until the next point; every line holds its last value to the latest time of any series.
    Writes nothing and returns None when no series has a point.
    """
    drawn = {label: list(points) for label, points in series.items() if points}
    if not drawn:
        return None
    times = [at for points in drawn.values() for at, _ in points]
    first, last = min(times), max(times)
    # a single instant would give matplotlib an empty axis: show a minute around it
    pad = timedelta(minutes=1) if first == last else (last - first) * 0.02
    fig = Figure(figsize=(8.0, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label in sorted(drawn):
        points = drawn[label]
        ax.plot(
            date2num([at for at, _ in points] + [last]),
            [value for _, value in points] + [points[-1][1]],
            drawstyle="steps-post",
            marker="o",
            markersize=3,
            markevery=list(range(len(points))),  # mark changes, not the extension to the end
            label=label,
        )
    ax.set_xlim(float(date2num(first - pad)), float(date2num(last + pad)))
    locator = AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("threshold in force")
    ax.legend(fontsize=7)
    fig.savefig(path, format="png")
    return path


@dataclass(frozen=True)
class TrajectoryPoint:
    """One detector version on the learning trajectory: its retrain cycle (1 = first trained),
    held-out mAP50 (None when never measured) and gate decision (``passed``, ``failed``, ``-``)."""

    cycle: int
    version: str
    map50: float | None
    gate: str


def plot_map50_trajectory(points: Sequence[TrajectoryPoint], path: Path) -> Path | None:
    """Held-out mAP50 by retrain cycle: a line through the measured versions, each marker
    coloured by its gate decision (passed green, failed red, undecided grey) and labelled with
    its version. Writes nothing and returns None when no version has a measured mAP50.
    """
    measured = [
        (p.cycle, float(p.map50), p.gate if p.gate in _GATE_COLOURS else "-", p.version)
        for p in points
        if p.map50 is not None and np.isfinite(p.map50)
    ]
    if not measured:
        return None
    fig = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([m[0] for m in measured], [m[1] for m in measured], color="grey", zorder=1)
    for gate in ("passed", "failed", "-"):
        mine = [m for m in measured if m[2] == gate]
        if mine:
            ax.scatter(
                [m[0] for m in mine],
                [m[1] for m in mine],
                color=_GATE_COLOURS.get(gate, "grey"),
                label=f"gate {gate}" if gate != "-" else "no gate decision",
                zorder=2,
            )
    for cycle, map50, _, version in measured:
        ax.annotate(
            version[:14],
            (cycle, map50),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xlabel("retrain cycle (detector version, in registration order)")
    ax.set_ylabel("held-out mAP50")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlim(0.5, max(p.cycle for p in points) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, format="png")
    return path
