"""River-style scoring of a controller replay: detection delay, false alarms, missed detections.

As River's drift evaluation counts them (``river/drift`` docs, "evaluate"): a *detection* is
the first ``drift.detected`` at or after the planted change; its *delay* is in images
(the stream index of the image whose score raised the event, minus the change index); a
``drift.detected`` before the change is a *false alarm*; a change with no detection by the
end of the stream is a *missed detection*. On a stationary stream every ``drift.detected`` is
a false alarm.

Also measured, for self-correction: the share of 128-image windows whose flag rate is in the
band ``[0.25, 2.5] x target`` (the issue's acceptance band), tiled *before* the change
(backwards from it, down to the first calibrated image) and *after* it (from ``change +
settle`` on; 56 makes a change at 200 judged from 256, as the acceptance streams are); the
share of all windows from the first calibration on, drift included, in ``[0.4, 2] x target``
(the issue's Hubble criterion); the flag rate of the first 64 images after the change under
the calibration then in force (how hard the
change hits: a flood, a collapse, or nothing); and whether a ``refine`` calibration emitted
before the detection took its reference past the change (a refine that absorbed the change).
The window figures come twice: as served (the live decisions) and as stored once every
revision since a change point is applied (``Replay.revised``, the warehouse's
``scores_revised``).

Invariant: every figure is a function of the replay's per-image flags and its events (with
``event_at``, the stream index that triggered each); stream index == the lane's ``seq``
(a replay feeds one lane, every image, in order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.report.flag_rates import FLAG_BAND
from tools.bench.policy_sim import Replay

__all__ = ["BAND", "WINDOW", "ChangeScore", "StationaryScore", "score_change", "score_stationary"]

WINDOW = 128
BAND = FLAG_BAND  # the report's band: a window in band here is one in band there
WIDE_BAND = (0.4, 2.0)  # the Hubble criterion: whole stream, drift included
EFFECT = 64
DETECTED, CALIBRATED = "drift.detected", "calibration.updated"


def _in_band(
    flagged: NDArray[np.bool_],
    starts: list[int],
    target: float,
    band: tuple[float, float] = BAND,
) -> tuple[int, int]:
    low, high = band[0] * target, band[1] * target
    rates = [float(flagged[s : s + WINDOW].mean()) for s in starts]
    return sum(low <= r <= high for r in rates), len(rates)


def first_calibrated(result: Replay) -> int:
    calibrated = np.flatnonzero(result.calibrated)
    return int(calibrated[0]) if calibrated.size else len(result.calibrated)


def detections(result: Replay) -> list[int]:
    """Stream indices that raised ``drift.detected``, in order."""
    pairs = zip(result.events, result.event_at, strict=True)
    return [at for e, at in pairs if e["type"] == DETECTED]


@dataclass(frozen=True)
class ChangeScore:
    """One change stream: River's counts plus the windows in band and refines past the change."""

    stream: str
    kind: str
    change: int
    images: int
    delay: int | None  # None: missed
    false_alarms: int
    refine_past: int  # refines before the detection whose reference reaches past the change
    before: tuple[int, int]  # (windows in band, windows)
    after: tuple[int, int]
    whole: tuple[int, int]  # windows from the first calibration on in WIDE_BAND x target
    effect: float  # flag rate of the first EFFECT images after the change
    after_rates: list[float]
    after_revised: tuple[int, int] = (0, 0)  # the after windows once revisions are applied
    whole_revised: tuple[int, int] = (0, 0)
    after_rates_revised: list[float] | None = None


def score_change(
    name: str, kind: str, result: Replay, change: int, target: float, settle: int = 56
) -> ChangeScore:
    """Score a replay of a stream whose change is planted at index ``change``."""
    n = len(result.flagged)
    hits = detections(result)
    detected = next((at for at in hits if at >= change), None)
    refine_past = 0
    for e, at in zip(result.events, result.event_at, strict=True):
        params = e["params"]
        if e["type"] != CALIBRATED or params.get("reason") != "refine":
            continue
        if detected is not None and at >= detected:
            continue
        reaches = int((params.get("extra") or {}).get("reference_to_seq", -1))
        refine_past += reaches >= change
    first = first_calibrated(result)
    stored = result.flagged if result.revised is None else result.revised
    before = list(range(change - WINDOW, first - 1, -WINDOW))
    after = list(range(change + settle, n - WINDOW + 1, WINDOW))
    tiled = list(range(first, n - WINDOW + 1, WINDOW))
    return ChangeScore(
        stream=name,
        kind=kind,
        change=change,
        images=n,
        delay=None if detected is None else detected - change,
        false_alarms=sum(first <= at < change for at in hits),
        refine_past=refine_past,
        before=_in_band(result.flagged, before, target),
        after=_in_band(result.flagged, after, target),
        whole=_in_band(result.flagged, tiled, target, WIDE_BAND),
        effect=float(result.flagged[change : change + EFFECT].mean()),
        after_rates=[float(result.flagged[s : s + WINDOW].mean()) for s in after],
        after_revised=_in_band(stored, after, target),
        whole_revised=_in_band(stored, tiled, target, WIDE_BAND),
        after_rates_revised=[float(stored[s : s + WINDOW].mean()) for s in after],
    )


@dataclass(frozen=True)
class StationaryScore:
    """One stationary stream: false alarms over the images judged, windows in band."""

    stream: str
    order: str
    images: int  # images after the first calibration (those a drift test can judge)
    false_alarms: int
    alarms_at: list[int]
    windows: tuple[int, int]
    rates: list[float]


def score_stationary(name: str, order: str, result: Replay, target: float) -> StationaryScore:
    """Score a replay of an unchanged stream: every ``drift.detected`` is a false alarm."""
    n = len(result.flagged)
    first = first_calibrated(result)
    hits = detections(result)
    starts = list(range(first, n - WINDOW + 1, WINDOW))
    return StationaryScore(
        stream=name,
        order=order,
        images=n - first,
        false_alarms=len(hits),
        alarms_at=hits,
        windows=_in_band(result.flagged, starts, target),
        rates=[float(result.flagged[s : s + WINDOW].mean()) for s in starts],
    )
