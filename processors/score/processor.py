"""The scoring processor: ``images.raw`` → ``scores`` (bad pixels → ``images.dlq``).

Consumes ImageRecords in micro-batches (``batch_size`` / ``batch_max_wait_ms``). Produces one
ScoreRecord per decodable image, keyed by image_id, on the source's partition. Folds
``control.events`` (through the runner): the production model's calibration (reference
artifact + thresholds), per-source thresholds, paused pipeline.

Bootstrap: while a source has no calibration under the model, its images are scored
``calibrated=false`` (never candidates) and their embeddings form the controller's reference
window for that source; after ``reference_size`` such images of a source the scorer waits (up
to ``calibration_wait_s``) for its ``calibration.updated`` instead of scoring more of them
against nothing.

Guarantees: every consumed message yields exactly one output (a score or a dead letter);
decisions depend only on the image and the ControlState snapshot stamped as
``control_offset``; the ensemble for a calibration is refit from its content-addressed
artifact, so every scorer instance makes bit-identical decisions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from processors.core.artifacts import ArtifactStore
from processors.core.control import Calibration, ControlState
from processors.core.exceptions import BadImageError, CodecError
from processors.core.imaging import decode_image
from processors.core.kafka import partition_for
from processors.core.metrics import IMAGES_SCORED, SCORE_LATENCY
from processors.core.records import TOPICS, DetectorScore, ImageRecord, ScoreRecord
from processors.core.runner import InMessage, OutMessage, RunContext
from processors.score.backbone import Backbone, BackboneSpec
from processors.score.ood import OODEnsemble, energy_score
from processors.score.reference import load_reference

__all__ = ["ScoreProcessor"]

log = logging.getLogger(__name__)


class ScoreProcessor:
    name = "score"
    inputs = ("images.raw",)

    def __init__(self, backbone: Backbone | None = None) -> None:
        self.backbone = backbone
        self._ensembles: dict[str, OODEnsemble] = {}
        self._uncalibrated_sent: dict[str, int] = {}

    def setup(self, ctx: RunContext) -> None:
        s = ctx.settings
        self.ctx = ctx
        if self.backbone is None:
            self.backbone = Backbone(
                BackboneSpec(
                    name=s.backbone,
                    weights=s.backbone_weights,
                    allow_random=s.allow_random_weights,
                    image_size=s.image_size,
                    threads=s.torch_threads,
                )
            )
        self.store = ArtifactStore(s.artifacts_dir)
        log.info("score: %r", self.backbone)

    def close(self) -> None:
        pass

    # -- helpers -----------------------------------------------------------------------------
    def _ensemble(self, cal: Calibration) -> OODEnsemble:
        ensemble = self._ensembles.get(cal.artifact_id)
        if ensemble is None:
            ensemble = OODEnsemble.fit(load_reference(self.store, cal.artifact_id))
            self._ensembles[cal.artifact_id] = ensemble
        return ensemble

    def _await_calibrations(
        self, state: ControlState, version: str, sources: set[str]
    ) -> ControlState:
        """Wait for the calibration of every source whose reference window we already filled."""
        follower = self.ctx.extra.get("follower")
        size = self.ctx.settings.reference_size
        waiting = {
            s
            for s in sources
            if state.calibration_for(version, s) is None
            and self._uncalibrated_sent.get(s, 0) >= size
        }
        if follower is None or not waiting:
            return state
        log.info("score: reference windows full for %s; waiting for calibration", sorted(waiting))
        follower.wait_until(
            lambda st: all(st.calibration_for(version, s) is not None for s in waiting),
            self.ctx.settings.calibration_wait_s,
        )
        new_state: ControlState = follower.state
        missing = [s for s in waiting if new_state.calibration_for(version, s) is None]
        if missing:
            log.warning(
                "score: no calibration for %s after %.0fs; scoring them uncalibrated",
                missing,
                self.ctx.settings.calibration_wait_s,
            )
        return new_state

    # -- the step ----------------------------------------------------------------------------
    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        assert self.backbone is not None
        started = time.perf_counter()
        codec = self.ctx.codec
        outputs: list[OutMessage] = []
        records: list[ImageRecord] = []
        arrays: list[np.ndarray[Any, Any]] = []
        for msg in batch:
            try:
                record: ImageRecord = codec.decode(msg.value, "skyloop.ImageRecord")  # type: ignore[assignment]
                arrays.append(decode_image(record))
                records.append(record)
            except (CodecError, BadImageError) as exc:
                outputs.append(self.ctx.dead_letter(msg, exc))
        if not records:
            return outputs
        version = self.backbone.version
        state = self._await_calibrations(state, version, {r["source"] for r in records})
        out = self.backbone.embed(arrays)
        energy = energy_score(out.logits)
        n = len(records)
        detectors: list[list[DetectorScore]] = [[] for _ in range(n)]
        calibrated_rows = np.zeros(n, dtype=bool)
        votes_for = np.zeros(n, dtype=np.int64)
        candidate = np.zeros(n, dtype=bool)
        ensemble_score = np.zeros(n)
        vote_k = np.full(n, self.ctx.settings.vote_k)
        by_source: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            by_source.setdefault(rec["source"], []).append(i)
        for source, rows in by_source.items():
            cal = state.calibration_for(version, source)
            if cal is None:
                for i in rows:
                    detectors[i] = [
                        DetectorScore(
                            detector="energy",
                            raw=float(energy[i]),
                            score=0.0,
                            threshold=None,
                            vote=False,
                        )
                    ]
                self._uncalibrated_sent[source] = self._uncalibrated_sent.get(source, 0) + len(rows)
                continue
            ensemble = self._ensemble(cal)
            idx = np.asarray(rows)
            raw = ensemble.raw_scores(out.features[idx], energy[idx])
            calibrated = ensemble.calibrate(raw)
            thresholds = {
                name: state.threshold_for(source, name, cal.thresholds[name])
                for name in ensemble.DETECTORS
            }
            votes, votes_src, candidate_src = ensemble.decide(calibrated, thresholds, cal.vote_k)
            mean_score = ensemble.ensemble_score(calibrated)
            for j, i in enumerate(rows):
                detectors[i] = [
                    DetectorScore(
                        detector=name,
                        raw=float(raw[name][j]),
                        score=float(calibrated[name][j]),
                        threshold=thresholds[name],
                        vote=bool(votes[name][j]),
                    )
                    for name in ensemble.DETECTORS
                ]
            calibrated_rows[idx] = True
            votes_for[idx] = votes_src
            candidate[idx] = candidate_src
            ensemble_score[idx] = mean_score
            vote_k[idx] = cal.vote_k
        per_image_ms = (time.perf_counter() - started) * 1000 / n
        now = datetime.now(UTC)
        partitions = TOPICS["scores"].partitions
        embeddings = out.features.astype("<f2")
        for i, rec in enumerate(records):
            score = ScoreRecord(
                image_id=rec["image_id"],
                source=rec["source"],
                model_version=version,
                backbone=self.backbone.spec.name,
                role="production",
                detectors=detectors[i],
                ensemble_score=float(ensemble_score[i]),
                votes_for=int(votes_for[i]),
                votes_needed=int(vote_k[i]),
                is_candidate=bool(candidate[i]),
                calibrated=bool(calibrated_rows[i]),
                batch_size=n,
                latency_ms=per_image_ms,
                control_offset=state.offset,
                scored_at=now,
                embedding=embeddings[i].tobytes(),
            )
            outputs.append(
                OutMessage(
                    "scores",
                    rec["image_id"].encode(),
                    codec.encode(score, "skyloop.ScoreRecord"),
                    partition_for(rec["source"], partitions),
                )
            )
            IMAGES_SCORED.labels(rec["source"], "production", str(bool(candidate[i]))).inc()
            SCORE_LATENCY.labels("production").observe(per_image_ms / 1000)
        self.ctx.progress.add("scored", n)
        self.ctx.progress.add("candidates", int(candidate.sum()))
        return outputs
