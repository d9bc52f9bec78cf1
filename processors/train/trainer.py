"""The trainer: answers ``retrain.requested`` with a trained, registered and gated detector.

Follows ``control.events`` (``skyloop worker train``). It answers the newest
``retrain.requested`` that the log has not answered yet (no event caused by it); older
unanswered requests are answered with it (the events it emits name them among their causes):
a dataset only grows, so the newest contains theirs, and training on it is what they asked for,
with more data. While a detector is being rolled out (gate passed, not yet promoted or rolled
back), requests wait: the next detector fine-tunes from production, and the one in rollout may
be about to become it (training from the production it replaces would waste the cycle). For
that request it:

1. reads the request's dataset manifest (:class:`~processors.core.datasets.DatasetManifest`) and
   its training samples from the artifact store; a dataset too small to train (fewer than
   ``MIN_TRAIN`` training or no held-out sample), or with fewer held-out samples than the gate
   needs (``gate_min_held_out``), is answered with ``budget.deferred`` saying so (the samples
   wait for the next request, whose dataset holds them and more);
   before training, production is checked for regression: when what it replaced (the previous
   production detector, else source extraction) is better on this dataset's held-out samples
   by the gate's bootstrap bound (:func:`~processors.train.judging.regression`), the trainer
   emits ``model.rolled_back`` of production with the evidence (the fold restores the
   previous one) and trains from the restored one;
2. writes a YOLO dataset from the *training* samples only (the validation split that picks the
   best epoch is a hash-chosen slice of them; held-out samples never train or select);
3. trains in a separate, bounded process (:func:`processors.train.training.train_detector`:
   ``train_timeout_s``, ``train_threads``, ``train_memory_mb``), from the production detector's
   weights when there is one, else from scratch, for ``train_epochs``, or as many epochs as
   ``train_min_steps`` optimizer steps take on a small dataset, and no more than
   ``train_max_steps`` take on a large one (:func:`~processors.train.training.epochs_for`);
4. evaluates the new model and the incumbent (the production detector, else source
   extraction) on the same held-out samples, the request's joined by those of the newest
   request that arrived while it trained (:func:`~processors.train.judging.held_out_at_gate`):
   mAP50 against their pseudo-label boxes, the paired bootstrap interval of the difference,
   p99 latency per image, non-finite outputs
   (:func:`~processors.train.judging.judge_challenger`);
5. stores the weights and a model card (dataset, parent, metrics, code version) and emits
   ``model.registered``, then the gate's verdict ``model.gate_passed`` / ``model.gate_failed``
   (:class:`~processors.policies.gate.ModelGate`: the interval's lower bound above 0), each
   caused by the one before.

From there the controller's lifecycle runs the detector through shadow and canary to promotion
or rollback. Event ids are derived from the request's, so a trainer restarted mid-way makes the
same decisions under the same ids; a request already answered is never trained again. A failed
or timed-out training is answered with ``model.gate_failed`` (no model to register: subject
the request) carrying the reason, so the log says why nothing was promoted.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.core.artifacts import ArtifactStore
from processors.core.config import Settings
from processors.core.control import ControlState, decision_id, new_event
from processors.core.datasets import DatasetManifest, in_hash_share
from processors.core.events import EventType
from processors.core.exceptions import SkyloopError, TrainingCancelledError
from processors.core.kafka import ControlFollower, make_producer, produce_control_event
from processors.core.progress import ProgressFile
from processors.core.records import ControlEventRecord
from processors.core.registry import ModelCard, code_version, register
from processors.core.rollouts import ModelSlot
from processors.train.judging import (
    Evaluation,
    evaluate_detector,
    held_out_at_gate,
    judge_challenger,
    regression,
)
from processors.train.training import epochs_for, train_detector
from processors.yolo.dataset import DetectionSample, write_yolo_dataset
from processors.yolo.samples import TrainingSample

__all__ = ["MIN_TRAIN", "Evaluation", "Trainer", "answer_request", "evaluate_detector"]

log = logging.getLogger(__name__)

ISSUER = "trainer"
MIN_TRAIN = 8
EVAL_CONF = 0.01  # boxes kept for mAP (the curve needs the low-confidence ones too)
VAL_FRACTION = 0.15
TRAIN_BATCH = 8


def _in_val(image_id: str) -> bool:
    return in_hash_share("val", image_id, VAL_FRACTION)


def _event(
    kind: str,
    subject: str,
    params: Mapping[str, Any],
    request: ControlEventRecord,
    caused_by: str,
    *,
    evidence: dict[str, float] | None = None,
    superseded: Sequence[str] = (),
) -> ControlEventRecord:
    return new_event(
        kind,
        subject,
        ISSUER,
        params,  # type: ignore[arg-type]
        evidence=evidence,
        caused_by=[caused_by, *superseded],
        event_id=decision_id(ISSUER, request["event_id"], kind),
    )


def _training_failed(
    request: ControlEventRecord,
    exc: Exception,
    superseded: Sequence[str],
    extra: Mapping[str, str] | None = None,
) -> ControlEventRecord:
    """``model.gate_failed`` answering ``request`` (subject: the request, no model was made)."""
    params: dict[str, Any] = {"reason": f"training failed: {exc}"[:500]}
    if extra is not None:
        params["extra"] = dict(extra)
    return _event(
        EventType.MODEL_GATE_FAILED,
        request["event_id"],
        params,
        request,
        request["event_id"],
        superseded=superseded,
    )


def answer_request(
    request: ControlEventRecord,
    state: ControlState,
    store: ArtifactStore,
    settings: Settings,
    workdir: Path,
    cancel: threading.Event | None = None,
    superseded: Sequence[str] = (),
    newer_manifests: Callable[[], Sequence[str]] | None = None,
) -> list[ControlEventRecord]:
    """Train, evaluate, register and gate for ``request``; the events to emit, in order. The
    first of them is also caused by the ``superseded`` (older, unanswered) requests.
    ``newer_manifests`` names, when asked after training, the dataset manifests of requests
    that arrived since (newest last): the gate also judges on their held-out samples
    (:func:`~processors.train.judging.held_out_at_gate`).

    Raises :class:`TrainingCancelledError` when ``cancel`` is set during training: the request
    is then left unanswered."""
    manifest_id = (request["params"].get("extra") or {}).get("manifest", "")
    manifest = DatasetManifest.from_bytes(store.get_bytes(manifest_id))
    train = [TrainingSample.from_bytes(store.get_bytes(i)) for i in manifest.train]
    held = [TrainingSample.from_bytes(store.get_bytes(i)) for i in manifest.held_out]
    wanted = settings.rollout.gate_min_held_out
    reason = None
    if len(train) < MIN_TRAIN or not held:
        reason = f"dataset too small to train: {len(train)} training, {len(held)} held-out"
    elif len(held) < wanted:
        reason = f"the gate waits for held-out images: {len(held)} of {wanted} needed"
    if reason is not None:
        params = {"reason": reason, "extra": {"manifest": manifest_id}}
        evidence = {
            "train_samples": float(len(train)),
            "held_out_images": float(len(held)),
            "min_held_out": float(wanted),
        }
        deferred = _event(
            EventType.BUDGET_DEFERRED, "detector", params, request, request["event_id"],
            evidence=evidence, superseded=superseded,
        )  # fmt: skip
        return [deferred]
    config_dir = settings.data_dir / "ultralytics"  # one per process, fixed at first use
    production = state.detector.production
    answered: list[ControlEventRecord] = []
    rollback = _regression(request, state, store, settings, held, workdir, superseded)
    if rollback is not None:  # production is worse than what it replaced: that serves again
        answered.append(rollback)
        production = state.detector.replaced
    parent = _weights_file(store, production, workdir) if production else None
    val = [s for s in train if _in_val(s.image_id)] or train[:1]
    fit = [s for s in train if s not in val]
    dataset = write_yolo_dataset(
        workdir / "dataset",
        [DetectionSample(_file_id(s), s.plane, s.boxes) for s in fit],
        [DetectionSample(_file_id(s), s.plane, s.boxes) for s in val],
    )
    epochs = epochs_for(
        len(fit),
        TRAIN_BATCH,
        settings.train.epochs,
        settings.train.min_steps,
        settings.train.max_steps,
    )
    try:
        result = train_detector(
            dataset.root,
            workdir / "run",
            epochs=epochs,
            batch=TRAIN_BATCH,
            imgsz=settings.train.imgsz,
            parent_weights=parent,
            timeout_s=settings.train.timeout_s,
            threads=settings.train.threads,
            memory_mb=settings.train.memory_mb,
            config_dir=settings.data_dir / "ultralytics",
            cancel=cancel,
        )
    except TrainingCancelledError:
        raise
    except SkyloopError as exc:
        return [*answered, _training_failed(request, exc, superseded, {"manifest": manifest_id})]
    from processors.yolo.yolo import YoloLocalizer

    held = held_out_at_gate(store, manifest, newer_manifests() if newer_manifests else ())
    judgement = judge_challenger(
        settings,
        YoloLocalizer(result.weights, conf=EVAL_CONF, config_dir=config_dir),
        YoloLocalizer(parent, conf=EVAL_CONF, config_dir=config_dir) if parent else None,
        held,
    )
    candidate = judgement.challenger
    weights = store.put_bytes(result.weights.read_bytes())
    version = f"yolo@{weights[:12]}"
    metrics = {
        **candidate.metrics(),
        "train_seconds": result.seconds,
        "train_samples": float(len(train)),
        "epochs": float(epochs),
    }
    card = ModelCard(
        version=version,
        kind="detector",
        weights=weights,
        parent=production.version if production else None,
        dataset=manifest_id,
        metrics=metrics,
        code=code_version(),
    )
    registered = register(
        store,
        card,
        ISSUER,
        caused_by=[request["event_id"], *superseded],
        event_id=decision_id(ISSUER, request["event_id"], EventType.MODEL_REGISTERED),
    )
    verdict = judgement.verdict
    kind = EventType.MODEL_GATE_PASSED if verdict.passed else EventType.MODEL_GATE_FAILED
    params = {"model_version": version, "reason": verdict.reason}
    judged = _event(
        kind, version, params, request, registered["event_id"], evidence=verdict.evidence
    )
    return [*answered, registered, judged]


def _regression(
    request: ControlEventRecord,
    state: ControlState,
    store: ArtifactStore,
    settings: Settings,
    held: list[TrainingSample],
    workdir: Path,
    superseded: Sequence[str],
) -> ControlEventRecord | None:
    """``model.rolled_back`` of the production detector when what it replaced (the previous
    production detector, else source extraction) is better on this dataset's held-out images
    (:func:`~processors.train.judging.regression`); None otherwise or without production."""
    production, previous = state.detector.production, state.detector.replaced
    current = _weights_file(store, production, workdir) if production else None
    if production is None or current is None:
        return None
    from processors.yolo.yolo import YoloLocalizer

    config_dir = settings.data_dir / "ultralytics"
    earlier = _weights_file(store, previous, workdir) if previous else None
    comparison = regression(
        settings,
        YoloLocalizer(current, conf=EVAL_CONF, config_dir=config_dir),
        YoloLocalizer(earlier, conf=EVAL_CONF, config_dir=config_dir) if earlier else None,
        held,
    )
    if comparison is None:
        return None
    restored = previous.version if previous and earlier else "source extraction"
    c = comparison
    reason = (
        f"worse than {restored} on {c.images} later held-out images: mAP50 {c.incumbent:.3f} "
        f"vs {c.challenger:.3f}, {c.level * 100:g} % interval of the difference "
        f"[{c.low:.3f}, {c.high:.3f}] above 0"
    )
    evidence = {
        "held_out_images": float(c.images),
        "production_map50": c.incumbent,
        "previous_map50": c.challenger,
        "map50_diff_low": c.low,
        "map50_diff_high": c.high,
        "interval_level": c.level,
        "previous_is_baseline": 0.0 if earlier else 1.0,
    }
    params = {"model_version": production.version, "reason": reason}
    return _event(
        EventType.MODEL_ROLLED_BACK,
        production.version,
        params,
        request,
        request["event_id"],
        evidence=evidence,
        superseded=superseded,
    )


def _file_id(sample: TrainingSample) -> str:
    return hashlib.sha256(sample.image_id.encode()).hexdigest()[:32]


def _weights_file(store: ArtifactStore, slot: ModelSlot, workdir: Path) -> Path | None:
    if not slot.artifact_id:
        return None
    path = workdir / f"parent-{slot.artifact_id[:12]}.pt"
    path.write_bytes(store.get_bytes(slot.artifact_id))
    return path


def _rollout_in_progress(state: ControlState) -> str | None:
    """The detector version being rolled out, if any: in canary or shadow, or registered after
    production, gate passed and not rolled back (its shadow is the controller's next step)."""
    slot = state.detector.canary or state.detector.shadow
    if slot is not None:
        return slot.version
    detectors = [v for v, s in state.registered.items() if s.kind == "detector"]
    production = state.detector.production
    if production is not None and production.version in detectors:
        detectors = detectors[detectors.index(production.version) + 1 :]
    gated = [v for v in detectors if state.gates.get(v) and v not in state.rolled_back]
    return gated[-1] if gated else None


@dataclass
class Trainer:
    """The worker loop around :func:`answer_request` (see the module docstring)."""

    settings: Settings
    bootstrap: str
    progress: ProgressFile
    _pending: dict[str, ControlEventRecord] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_event(self, _state: ControlState, event: ControlEventRecord) -> None:
        with self._lock:
            if event["type"] == EventType.RETRAIN_REQUESTED:
                self._pending[event["event_id"]] = event
            for cause in event["caused_by"]:
                self._pending.pop(cause, None)

    def run(self, stop: threading.Event) -> None:
        follower = ControlFollower(self.settings, self.bootstrap, on_event=self._on_event).start()
        producer = make_producer(self.settings, self.bootstrap, **{"linger.ms": 0})
        store = ArtifactStore(self.settings.artifacts_dir)
        try:
            follower.wait_caught_up(timeout_s=60)
            self.progress.set("ready", True)
            self.progress.write(force=True)
            while not stop.is_set():
                with self._lock:
                    pending = list(self._pending.values())  # in log order
                rollout = _rollout_in_progress(follower.state)
                if self.progress.counts.get("waiting_for_rollout") != (rollout or ""):
                    self.progress.set("waiting_for_rollout", rollout or "")
                    self.progress.write(force=True)  # a training may start now, for minutes
                if not pending or rollout:
                    stop.wait(1.0)
                    continue
                newest, older = pending[-1], [r["event_id"] for r in pending[:-1]]
                self._answer(newest, older, follower, producer, store, stop)
        finally:
            follower.close()
            producer.flush(10)

    def _manifests_after(self, request_id: str) -> list[str]:
        """The dataset manifests of the requests that arrived after ``request_id``, in order."""
        with self._lock:
            pending = list(self._pending.values())
        ids = [r["event_id"] for r in pending]
        newer = pending[ids.index(request_id) + 1 :] if request_id in ids else []
        extras = [(r["params"].get("extra") or {}) for r in newer]
        return [m for extra in extras if (m := extra.get("manifest"))]

    def _answer(
        self,
        request: ControlEventRecord,
        superseded: list[str],
        follower: ControlFollower,
        producer: Any,
        store: ArtifactStore,
        stop: threading.Event,
    ) -> None:
        log.info("trainer: answering %s (and %d older)", request["event_id"], len(superseded))
        workdir = Path(tempfile.mkdtemp(prefix="train-", dir=self.settings.data_dir))
        started = time.monotonic()
        try:
            events = answer_request(
                request,
                follower.state,
                store,
                self.settings,
                workdir,
                stop,
                superseded,
                newer_manifests=lambda: self._manifests_after(request["event_id"]),
            )
        except TrainingCancelledError:
            log.info("trainer: stopping; request %s stays open", request["event_id"])
            return
        except SkyloopError as exc:
            log.error("trainer: request %s failed: %s", request["event_id"], exc)
            events = [_training_failed(request, exc, superseded)]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        for event in events:
            if not follower.has_event(event["event_id"]):
                produce_control_event(producer, self.settings, event)
            self.progress.add(f"events.{event['type']}")
        follower.wait_until(lambda _s: follower.has_event(events[-1]["event_id"]), timeout_s=30)
        with self._lock:
            for answered in (request["event_id"], *superseded):
                self._pending.pop(answered, None)
        self.progress.add("trainings")
        self.progress.add("train_seconds", round(time.monotonic() - started))
        self.progress.write(force=True)
