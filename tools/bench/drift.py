"""Self-correction under drift, through the real pipeline: skyloop vs static vs AstroLens v1.1.

Usage (from the repository root)::

    python tools/bench/drift.py                      # 12,000 images, 3 policies, ~10 min
    python tools/bench/drift.py --stationary 6000    # also: a stationary stream, skyloop only
    python tools/bench/drift.py --images 6000 --stream "synthetic?kind=difference&drifts=..."

Each policy is a full ``skyloop run`` on the embedded stack (broker, sink, stats/controller,
detect, score and ingest as separate processes) with ``control_policy`` set: ``skyloop`` (drift
detection, recalibration, decay), ``static`` (calibrated once) and ``astrolens`` (AstroLens
v1.1's threshold rules; see processors/policies/baselines.py for how its scale maps onto ours).
The default stream is synthetic difference cutouts (2 % anomalies: streaks, blobs, bad
columns) whose conditions change twice: at image 4,000 the noise doubles (faint structure
drowns: the detector goes *blind*, its flags collapse) and at 8,000 the fields get crowded
(four times the residuals: a *flood* of flags). Truth labels come back from ClickHouse (the
synthetic source writes them; scoring never reads them); stream order is the generator's index.

Reported per policy, on 128-image windows in stream order after the first calibration:
false-positive rate (flagged normal images / normal images) and recall; the share of windows
whose FPR is in [0.4, 2] x target_fpr; for each drift onset the images until the FPR is back in
band (the first n, in steps of 16, such that the 128 images from onset + n are in band and so
are the next two windows of 128; "never" within the segment otherwise); recall before each
drift and after recovery. With ``--stationary N``: drift.detected events on N images of one
unchanging condition (expected: none).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from numpy.typing import NDArray

from processors.core.clickhouse import connect
from processors.core.config import load_settings
from processors.local import run_local

__all__ = ["PolicyRun", "main", "measure"]

DEFAULT_STREAM = "synthetic?kind=difference&anomaly_rate=0.02&drifts=4000:noisy,8000:crowded"
WINDOW = 128
BAND = (0.4, 2.0)


@dataclass
class PolicyRun:
    policy: str
    seconds: float
    flagged: NDArray[np.bool_]
    truth: NDArray[np.bool_]
    segments: list[str]
    first: int
    events: dict[str, int]


def _stream_of(
    run_dir: Path,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_], list[str], dict[str, int]]:
    client = connect(f"chdb://{(run_dir / 'clickhouse').resolve()}")
    try:
        rows = client.query(
            "SELECT toUInt64(i.provenance['n']) AS n, i.truth_is_anomaly, i.truth_segment, "
            "s.is_candidate, s.calibrated "
            "FROM images AS i FINAL JOIN "
            "(SELECT image_id, is_candidate, calibrated FROM scores FINAL "
            " WHERE role = 'production' OR (role = 'canary' AND calibrated)) AS s "
            "ON s.image_id = i.image_id ORDER BY n"
        ).result_rows
        counts = client.query("SELECT type, count() FROM control_events FINAL GROUP BY type")
        events = {str(row[0]): int(row[1]) for row in counts.result_rows}
    finally:
        client.close()
    truth = np.array([bool(r[1]) for r in rows])
    segments = [str(r[2]) for r in rows]
    flagged = np.array([bool(r[3]) for r in rows])
    calibrated = np.array([bool(r[4]) for r in rows])
    return flagged, calibrated, truth, segments, events


def run_policy(policy: str, stream: str, images: int, root: Path) -> PolicyRun:
    settings = load_settings(data_dir=root / policy, control_policy=policy)
    started = time.monotonic()
    with open(os.devnull, "w") as quiet:
        result = run_local(settings, [stream], images, timeout_s=7200, out=quiet)
    flagged, calibrated, truth, segments, events = _stream_of(result.run_dir)
    first = int(np.flatnonzero(calibrated)[0])
    return PolicyRun(policy, time.monotonic() - started, flagged, truth, segments, first, events)


def _fpr(run: PolicyRun, rows: NDArray[np.intp]) -> float:
    normal = ~run.truth[rows]
    return float(run.flagged[rows][normal].mean()) if normal.any() else float("nan")


def _recall(run: PolicyRun, rows: NDArray[np.intp]) -> float:
    anomalies = run.truth[rows]
    return float(run.flagged[rows][anomalies].mean()) if anomalies.any() else float("nan")


def measure(run: PolicyRun, target: float) -> dict[str, object]:
    """Windows in band, recovery per onset, recall around each drift."""
    low, high = BAND[0] * target, BAND[1] * target
    n = len(run.flagged)
    windows = [np.arange(s, min(s + WINDOW, n)) for s in range(run.first, n, WINDOW)]
    fprs = [_fpr(run, w) for w in windows]
    in_band = [low <= f <= high for f in fprs]
    onsets = [i for i in range(1, n) if run.segments[i] != run.segments[i - 1]]
    bounds = [*onsets, n]
    recoveries: list[int | None] = []
    recall_before: list[float] = []
    recall_after: list[float] = []
    for k, onset in enumerate(onsets):
        end = bounds[k + 1]
        found = None
        for lag in range(0, end - onset - 3 * WINDOW + 1, 16):
            starts = [onset + lag + j * WINDOW for j in range(3)]
            if all(low <= _fpr(run, np.arange(s, s + WINDOW)) <= high for s in starts):
                found = lag
                break
        recoveries.append(found)
        previous = bounds[k - 1] if k else run.first
        recall_before.append(_recall(run, np.arange(previous, onset)))
        recall_after.append(
            _recall(run, np.arange(onset + found, end)) if found is not None else float("nan")
        )
    return {
        "fprs": fprs,
        "in_band": sum(in_band) / len(in_band),
        "windows": len(in_band),
        "onsets": onsets,
        "recoveries": recoveries,
        "recall_before": recall_before,
        "recall_after": recall_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", default=DEFAULT_STREAM)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--policies", default="skyloop,static,astrolens")
    parser.add_argument("--stationary", type=int, default=0, help="images of a stationary run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="skyloop-drift-"))
    target = load_settings().calibration.target_fpr
    stream = f"{args.stream}&seed={args.seed}"
    print(
        f"stream {stream}, {args.images} images, target FPR {target}, band "
        f"[{BAND[0] * target:.3f}, {BAND[1] * target:.3f}], windows of {WINDOW}; runs in {root}"
    )
    results = {}
    for policy in args.policies.split(","):
        run = run_policy(policy, stream, args.images, root)
        results[policy] = (run, measure(run, target))
        m = results[policy][1]
        recoveries = ", ".join("never" if r is None else str(r) for r in m["recoveries"])  # type: ignore[attr-defined]
        print(
            f"\n{policy}: {run.seconds:.0f}s; first calibrated image {run.first}; events "
            f"{dict(sorted(run.events.items()))}\n"
            f"  windows in band {m['in_band']:.3f} of {m['windows']}; images to recover after "
            f"onsets {m['onsets']}: {recoveries}\n"
            f"  recall before each drift {[round(r, 3) for r in m['recall_before']]}, after "  # type: ignore[attr-defined]
            f"recovery {[round(r, 3) for r in m['recall_after']]}"  # type: ignore[attr-defined]
        )
        fprs = m["fprs"]
        cells = [f"{f:.3f}" for f in fprs]  # type: ignore[attr-defined]
        for i in range(0, len(cells), 16):
            print("  FPR " + " ".join(cells[i : i + 16]))
    if args.stationary:
        spec = f"{args.stream.split('&drifts=')[0]}&seed={args.seed + 100}"
        run = run_policy("skyloop", spec, args.stationary, root / "stationary")
        m = measure(run, target)
        print(
            f"\nstationary {spec}, {args.stationary} images: drift.detected "
            f"{run.events.get('drift.detected', 0)}; windows in band {m['in_band']:.3f} of "
            f"{m['windows']}; events {dict(sorted(run.events.items()))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
