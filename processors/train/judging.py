"""What the trainer measures on held-out samples: a detector against what serves, with power.

- :func:`measure` runs a localizer (anything with ``predict([plane]) -> [[Box]]``) on held-out
  samples: its boxes, mAP50 against the samples' pseudo-label boxes, p99 latency per image and
  non-finite outputs.
- :class:`SourceExtraction` is the baseline as a localizer: what serves before any detector
  (:func:`processors.yolo.extraction.extract_boxes` on the image's pixels).
- :func:`judge_challenger` compares a newly trained detector with the incumbent (the production
  detector, else source extraction) on the *same* held-out images: both mAP50s and the paired
  bootstrap interval of their difference (:func:`processors.yolo.comparison.compare_map50`),
  judged by :class:`~processors.policies.gate.ModelGate` (lower bound above 0, at least
  ``gate_min_held_out`` images). Latency is compared only with a production *detector*
  (source extraction is another method, far faster, and never a latency reference).
- :func:`held_out_at_gate` chooses the held-out samples a gate judges on: the request's and
  those that arrived while the detector trained.
- :func:`regression` asks whether production, promoted earlier, is worse on the held-out
  samples of a newer dataset than what it replaced (the previous production detector, else
  source extraction), with the same bootstrap bound: the previous one's lower bound above 0.

Against source extraction the comparison leans towards the incumbent: the pseudo-labels are a
subset of its own boxes (those unlike the source's normal ones), so its recall on them is near
1 and a detector passes only by being more precise. All functions are deterministic given the
models (the bootstrap is seeded by ``gate_bootstrap_seed``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.core.artifacts import ArtifactStore
from processors.core.config import Settings
from processors.core.datasets import DatasetManifest
from processors.core.exceptions import EvaluationError, SkyloopError
from processors.core.records import Box
from processors.policies.gate import GateVerdict, ModelGate
from processors.yolo.comparison import Comparison, compare_map50
from processors.yolo.evaluation import map50
from processors.yolo.extraction import extract_boxes
from processors.yolo.samples import TrainingSample

__all__ = [
    "Evaluation",
    "Judgement",
    "SourceExtraction",
    "evaluate_detector",
    "gate_of",
    "held_out_at_gate",
    "judge_challenger",
    "measure",
    "regression",
]


@dataclass(frozen=True)
class Evaluation:
    map50: float
    latency_p99_ms: float
    nan_outputs: int
    images: int

    def metrics(self) -> dict[str, float]:
        return {
            "map50": self.map50,
            "latency_p99_ms": self.latency_p99_ms,
            "nan_outputs": float(self.nan_outputs),
            "held_out_images": float(self.images),
        }


class SourceExtraction:
    """The baseline localizer: source extraction on each plane (no model, no state)."""

    def predict(self, planes: list[NDArray[np.float32]]) -> list[list[Box]]:
        return [extract_boxes(plane) for plane in planes]


def _source(boxes: list[Box]) -> list[Box]:
    return [Box(**{**b, "label": "source"}) for b in boxes]


def measure(localizer: object, samples: list[TrainingSample]) -> tuple[Evaluation, list[list[Box]]]:
    """The localizer's evaluation on ``samples`` and its (class-agnostic) boxes per sample.

    The localizer should keep low-confidence boxes (mAP ranks them; a serving threshold would
    cut the precision-recall curve short). One warm-up prediction is not timed: the first call
    fuses a model, which no image served later pays for.
    """
    predictions: list[list[Box]] = []
    latencies: list[float] = []
    nan = 0
    if samples:
        with contextlib.suppress(SkyloopError):  # a failure is counted below, per image
            localizer.predict([samples[0].plane])  # type: ignore[attr-defined]
    for sample in samples:
        started = time.perf_counter()
        try:
            boxes = localizer.predict([sample.plane])[0]  # type: ignore[attr-defined]
        except SkyloopError:
            nan += 1  # non-finite outputs (DetectorError) or a failure: no boxes, counted
            boxes = []
        latencies.append((time.perf_counter() - started) * 1000)
        predictions.append(_source(boxes))
    truths = [_source(s.boxes) for s in samples]
    score = map50(predictions, truths) if any(truths) else float("nan")
    p99 = float(np.percentile(latencies, 99)) if latencies else float("nan")
    return Evaluation(score, p99, nan, len(samples)), predictions


def evaluate_detector(localizer: object, samples: list[TrainingSample]) -> Evaluation:
    """mAP50 of ``localizer`` on ``samples``' boxes (see :func:`measure`)."""
    return measure(localizer, samples)[0]


def gate_of(settings: Settings) -> ModelGate:
    """The gate the ``rollout`` settings section describes."""
    r = settings.rollout
    return ModelGate(
        min_map50=r.gate_min_map50,
        min_held_out=r.gate_min_held_out,
        level=r.gate_interval_level,
        max_latency_p99_ms=r.gate_max_latency_p99_ms,
    )


def _compare(
    settings: Settings,
    challenger: list[list[Box]],
    incumbent: list[list[Box]],
    samples: list[TrainingSample],
) -> Comparison | None:
    r = settings.rollout
    try:
        return compare_map50(
            challenger,
            incumbent,
            [_source(s.boxes) for s in samples],
            resamples=r.gate_bootstrap_resamples,
            level=r.gate_interval_level,
            seed=r.gate_bootstrap_seed,
        )
    except EvaluationError:
        return None  # no truth box: nothing to compare on (the gate says "not measured")


@dataclass(frozen=True)
class Judgement:
    """The challenger's and the incumbent's evaluations, their comparison and the verdict."""

    challenger: Evaluation
    incumbent: Evaluation
    comparison: Comparison | None
    verdict: GateVerdict


def judge_challenger(
    settings: Settings,
    challenger: object,
    incumbent: object | None,
    held: list[TrainingSample],
) -> Judgement:
    """The gate's verdict on ``challenger`` against ``incumbent`` (None: source extraction)."""
    mine, mine_boxes = measure(challenger, held)
    theirs, their_boxes = measure(incumbent or SourceExtraction(), held)
    comparison = _compare(settings, mine_boxes, their_boxes, held)
    candidate = mine.metrics()
    if comparison is not None:
        candidate |= {"map50_diff_low": comparison.low, "map50_diff_high": comparison.high}
    reference = {"map50": theirs.map50}
    if incumbent is not None:
        reference["latency_p99_ms"] = theirs.latency_p99_ms
    verdict = gate_of(settings).judge("detector", candidate, reference)
    evidence = dict(verdict.evidence)
    evidence["incumbent_is_baseline"] = 0.0 if incumbent is not None else 1.0
    if comparison is not None:
        evidence |= comparison.evidence()
    verdict = GateVerdict(verdict.passed, verdict.reasons, evidence, verdict.waiting)
    return Judgement(mine, theirs, comparison, verdict)


def held_out_at_gate(
    store: ArtifactStore, manifest: DatasetManifest, newer: Sequence[str]
) -> list[TrainingSample]:
    """The held-out samples a detector trained on ``manifest`` is gated on: the manifest's own
    and those of the newest of the ``newer`` manifests (requests that arrived while it
    trained), each sample once, in sample-id order.

    Sound because an image's side (train or held-out) is fixed by the hash of its id: no
    held-out sample of any manifest trained or selected this detector. Worth it because a
    training takes minutes while pseudo-labels keep arriving, and the bootstrap interval
    narrows with the square root of the images it is judged on: the gate's power."""
    ids = set(manifest.held_out)
    if newer:
        ids |= set(DatasetManifest.from_bytes(store.get_bytes(newer[-1])).held_out)
    return [TrainingSample.from_bytes(store.get_bytes(i)) for i in sorted(ids)]


def regression(
    settings: Settings,
    production: object,
    previous: object | None,
    held: list[TrainingSample],
) -> Comparison | None:
    """The comparison of ``previous`` (None: source extraction) against ``production`` on
    ``held`` when it shows production worse (lower bound of previous minus production above
    0) on at least ``gate_min_held_out`` images; else None."""
    if len(held) < settings.rollout.gate_min_held_out:
        return None
    _, production_boxes = measure(production, held)
    _, previous_boxes = measure(previous or SourceExtraction(), held)
    comparison = _compare(settings, previous_boxes, production_boxes, held)
    if comparison is None or not comparison.low > 0:
        return None
    return comparison
