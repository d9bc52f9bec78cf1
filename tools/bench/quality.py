"""Detection quality on a synthetic stream with known anomalies and drift, vs static baselines.

Usage (from the repository root)::

    python tools/bench/quality.py [--images 2400] [--drift-after 1200] [--anomaly-rate 0.05]
                                  [--seed 0] [--window N]

The stream is ``SyntheticSky`` (64x64 FITS star fields; ``anomaly_rate`` of them streaks, blobs
or bad columns; after ``drift_after`` images a brighter, noisier sky with worse seeing). Every
image goes through the real code path: FITS decode, the backbone, and the scorer's decision
function (:func:`processors.score.decisions.decide` on a ``ControlState`` holding a
``calibration.updated`` event, with the reference stored as an artifact). The truth labels are
read only to evaluate.

Nothing is tuned to the generator: reference size, target FPR and ``vote_k`` are the
``Settings`` defaults, and every reference window is the stream itself, anomalies included
(never filtered by truth), as the controller builds it.

Systems compared on the same images (all calibrated from the first reference window, whose
images are left out of every figure):

- ``skyloop``: the calibrated k-of-3 ensemble, recalibrated after drift the way
  ARCHITECTURE.md, "Self-correction" describes it: per window of ``--window`` images, a
  two-sample KS test of the window's ensemble scores against the calibration part's
  (p < 0.01) on 2 consecutive windows raises drift; the next ``reference_size`` images form the
  new reference (scored with the old calibration meanwhile), then the ensemble is refit and
  thresholds recomputed. (The bench carries this small trigger itself, older than the drift
  policy in ``processors/policies/drift.py``.)
- ``static ensemble``: the same ensemble and thresholds, never recalibrated;
- ``static energy``: raw energy above its (1 - FPR) quantile on the first reference window,
  never recalibrated (a global quantile of one raw score);
- each single detector at its own threshold for the target FPR (calibrated score above the
  midpoint of the calibration grid whose exceedance rate is closest to the target), under the
  same recalibration as ``skyloop``.

Reported: AUROC per detector (raw score) and of the ensemble score (mean calibrated score, the
``ensemble_score`` of a ScoreRecord) per segment, and precision / recall / FPR of each system per
segment, plus the images from drift onset until the recalibrated thresholds serve.
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
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from processors.core.artifacts import ArtifactStore
from processors.core.config import load_settings
from processors.core.control import ControlState, new_event
from processors.core.events import EventType
from processors.core.imaging import decode_image
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.ood.ensemble import OODEnsemble, energy_score, split_reference
from processors.ood.reference import ReferenceSet, save_reference
from processors.score.backbone import Backbone, BackboneSpec
from processors.score.decisions import EnsembleCache, Verdict, decide

__all__ = ["Calibrated", "main", "rates", "single_detector_threshold"]

SOURCE = "quality-sky"
DETECTORS = OODEnsemble.DETECTORS
KS_P = 0.01
KS_CONSECUTIVE = 2


def single_detector_threshold(calibration_scores: NDArray[np.float64], target_fpr: float) -> float:
    """The grid midpoint whose exceedance rate on the calibration part is closest to target."""
    m = calibration_scores.shape[0]
    candidates = (np.arange(-1, m + 1) + 0.5) / m
    above = m - np.searchsorted(np.sort(calibration_scores), candidates, side="right")
    error = np.abs(above / m - target_fpr)
    return float(candidates[np.flatnonzero(error == error.min())[-1]])


@dataclass
class Calibrated:
    """One calibration as the scorer sees it, plus what the bench derives from its reference."""

    state: ControlState
    ensemble: OODEnsemble
    calibration_ensemble_scores: NDArray[np.float64]
    single_thresholds: dict[str, float]
    starts_at: int


def calibrate(
    features: NDArray[np.float32],
    energy: NDArray[np.float64],
    store: ArtifactStore,
    target_fpr: float,
    vote_k: int,
    offset: int,
    starts_at: int,
) -> Calibrated:
    reference = ReferenceSet(features, energy, "quality")
    ensemble = OODEnsemble.fit(reference)
    event = new_event(
        EventType.CALIBRATION_UPDATED,
        SOURCE,
        "quality-bench",
        {
            "model_version": "quality",
            "artifact_id": save_reference(store, reference),
            "target_fpr": target_fpr,
            "vote_k": vote_k,
            "thresholds": ensemble.thresholds_for_fpr(target_fpr, vote_k),
        },
    )
    _, cal_rows = split_reference(len(reference), 0.5)
    calibrated = ensemble.calibrate(ensemble.raw_scores(features[cal_rows], energy[cal_rows]))
    return Calibrated(
        state=ControlState.initial().apply(event, offset),
        ensemble=ensemble,
        calibration_ensemble_scores=ensemble.ensemble_score(calibrated),
        single_thresholds={
            name: single_detector_threshold(calibrated[name], target_fpr) for name in DETECTORS
        },
        starts_at=starts_at,
    )


def rates(flagged: NDArray[np.bool_], truth: NDArray[np.bool_]) -> tuple[float, float, float]:
    """(precision, recall, false-positive rate); NaN where undefined."""
    tp = int((flagged & truth).sum())
    fp = int((flagged & ~truth).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / int(truth.sum()) if truth.any() else float("nan")
    fpr = fp / int((~truth).sum()) if (~truth).any() else float("nan")
    return precision, recall, fpr


def _auroc(scores: NDArray[np.float64], truth: NDArray[np.bool_]) -> float:
    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--drift-after", type=int, default=1200, help="0: no drift")
    parser.add_argument("--anomaly-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="drift test window (ref size)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    settings = load_settings()
    size, fpr, vote_k = (
        settings.calibration.reference_size,
        settings.calibration.target_fpr,
        settings.calibration.vote_k,
    )
    window = args.window or size
    drift_after = args.drift_after or None
    started = time.perf_counter()

    sky = SyntheticSky(
        name=SOURCE, seed=args.seed, anomaly_rate=args.anomaly_rate, drift_after=drift_after
    )
    images = [sky.image(n) for n in range(args.images)]
    truth = np.array([bool(i.truth and i.truth["is_anomaly"]) for i in images])
    drifted = np.array([bool(i.truth and i.truth["segment"] != "baseline") for i in images])
    backbone = Backbone(BackboneSpec())
    out = backbone.embed([decode_image(to_record(i)) for i in images], batch_size=args.batch)
    features, energy = out.features, energy_score(out.logits)
    print(
        f"stream: {args.images} images of {SOURCE} (seed {args.seed}), anomaly_rate "
        f"{args.anomaly_rate}, drift after {drift_after}; {int(truth.sum())} anomalies; "
        f"model {backbone.version}; reference_size {size}, target_fpr {fpr}, vote_k {vote_k}, "
        f"drift window {window}; embedded in {time.perf_counter() - started:.0f}s"
    )

    store = ArtifactStore(Path(tempfile.mkdtemp(prefix="skyloop-quality-")))
    ensembles = EnsembleCache(store)
    first = calibrate(features[:size], energy[:size], store, fpr, vote_k, 0, size)
    calibrations = [first]
    served: list[Verdict] = []
    static: list[Verdict] = []
    single = {name: np.zeros(args.images, dtype=bool) for name in DETECTORS}
    raw = {name: np.zeros(args.images) for name in DETECTORS}
    detected_at: int | None = None
    streak, refill_from = 0, None
    for start in range(size, args.images, window):
        rows = np.arange(start, min(start + window, args.images))
        current = calibrations[-1]
        sources = [SOURCE] * rows.size
        verdicts = decide(
            features[rows],
            energy[rows],
            sources,
            current.state,
            "quality",
            ensembles,
            default_vote_k=vote_k,
            source_overrides=True,
        )
        served.extend(verdicts)
        static.extend(
            decide(
                features[rows],
                energy[rows],
                sources,
                first.state,
                "quality",
                ensembles,
                default_vote_k=vote_k,
                source_overrides=True,
            )
        )
        for j, verdict in zip(rows, verdicts, strict=True):
            for d in verdict.detectors:
                raw[d["detector"]][j] = d["raw"]
                single[d["detector"]][j] = d["score"] > current.single_thresholds[d["detector"]]
        if refill_from is not None and rows[-1] + 1 >= refill_from + size:
            ref = slice(refill_from, refill_from + size)
            calibrations.append(
                calibrate(
                    features[ref],
                    energy[ref],
                    store,
                    fpr,
                    vote_k,
                    len(calibrations),
                    refill_from + size,
                )
            )
            refill_from = None
            continue
        if refill_from is not None:
            continue
        scores = np.array([v.ensemble_score for v in verdicts])
        p = ks_2samp(scores, current.calibration_ensemble_scores).pvalue
        streak = streak + 1 if p < KS_P else 0
        if streak >= KS_CONSECUTIVE:
            detected_at = int(rows[-1]) + 1
            refill_from, streak = detected_at, 0
    evaluated = np.arange(size, args.images)
    skyloop = np.zeros(args.images, dtype=bool)
    skyloop[evaluated] = [v.is_candidate for v in served]
    never = np.zeros(args.images, dtype=bool)
    never[evaluated] = [v.is_candidate for v in static]
    ens_score = np.zeros(args.images)
    ens_score[evaluated] = [v.ensemble_score for v in served]
    static_score = np.zeros(args.images)
    static_score[evaluated] = [v.ensemble_score for v in static]
    vote_stat = np.zeros(args.images)  # the k-th largest calibrated score decides candidacy
    vote_stat[evaluated] = [
        sorted((d["score"] for d in v.detectors), reverse=True)[vote_k - 1] for v in served
    ]
    energy_cut = float(np.quantile(energy[:size], 1 - fpr))
    by_energy = energy > energy_cut

    segments = [("baseline", evaluated[~drifted[evaluated]])]
    if drifted.any():
        onset = int(np.flatnonzero(drifted)[0])
        settled = calibrations[-1].starts_at if len(calibrations) > 1 else args.images
        segments += [
            ("drift, all", evaluated[drifted[evaluated]]),
            ("drift, recalibrated", np.arange(settled, args.images)),
        ]
    print("\nAUROC (threshold-free; skyloop = scores under the calibration serving each image)")
    print(
        f"{'segment':<22}" + "".join(f"{n:>13}" for n in DETECTORS) + f"{'ens. mean':>11}"
        f"{'ens. vote':>11}{'static mean':>13}{'n':>6}{'anom.':>7}"
    )
    notes = []
    for label, rows in segments:
        t = truth[rows]
        single_auc = {n: _auroc(raw[n][rows], t) for n in DETECTORS}
        mean_auc, vote_auc = _auroc(ens_score[rows], t), _auroc(vote_stat[rows], t)
        print(
            f"{label:<22}"
            + "".join(f"{single_auc[n]:13.3f}" for n in DETECTORS)
            + f"{mean_auc:11.3f}{vote_auc:11.3f}{_auroc(static_score[rows], t):13.3f}"
            f"{rows.size:6d}{int(t.sum()):7d}"
        )
        best = max(DETECTORS, key=lambda n: single_auc[n])
        if max(mean_auc, vote_auc) < single_auc[best]:
            worst = min(DETECTORS, key=lambda n: single_auc[n])
            notes.append(
                f"{label}: the ensemble ranks below {best} alone ({single_auc[best]:.3f}); "
                f"{worst} is weak here ({single_auc[worst]:.3f}) and the mean and vote share it"
            )
    for note in notes:
        print(f"  note: {note}")
    systems = [
        (f"skyloop ({vote_k} of 3)", skyloop),
        *[(f"{n} alone", single[n]) for n in DETECTORS],
        (f"static ensemble ({vote_k} of 3)", never),
        ("static energy quantile", by_energy),
    ]
    print(f"\nprecision / recall / FPR at the calibrated thresholds (target FPR {fpr})")
    print(f"{'system':<28}" + "".join(f"{label:>24}" for label, _ in segments))
    for name, flagged in systems:
        cells = ""
        for _, rows in segments:
            p, r, f = rates(flagged[rows], truth[rows])
            cells += f"{p:8.2f}{r:8.2f}{f:8.3f}"
        print(f"{name:<28}{cells}")
    print(f"\nFPR per window of {window} images (skyloop / static ensemble); * = drifted")
    window_cells: list[str] = []
    for start in range(size, args.images, window):
        rows = np.arange(start, min(start + window, args.images))
        mark = "*" if drifted[rows].any() else ""
        window_cells.append(
            f"{start}{mark}:{rates(skyloop[rows], truth[rows])[2]:.3f}/"
            f"{rates(never[rows], truth[rows])[2]:.3f}"
        )
    for i in range(0, len(window_cells), 6):
        print("  " + "  ".join(window_cells[i : i + 6]))
    if drifted.any():
        onset = int(np.flatnonzero(drifted)[0])
        if detected_at is None:
            print(f"\ndrift at image {onset}: not detected; never recalibrated")
        else:
            print(
                f"\ndrift at image {onset}: detected after {detected_at - onset} images (at "
                f"{detected_at}); recalibrated thresholds serve from image "
                f"{calibrations[-1].starts_at}, {calibrations[-1].starts_at - onset} images after "
                f"onset; {len(calibrations) - 1} recalibration(s)"
            )
    print(f"total {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
