"""The scoring processor: ``images.raw`` → ``scores`` (bad pixels → ``images.dlq``).

Consumes ImageRecords in micro-batches (``batch_size`` / ``batch_max_wait_ms``, the runner's).
Produces, per decodable image, its served ScoreRecord (production, or canary for calibrated
canary-routed images) plus unserved canary/shadow records (see :mod:`processors.score.routing`),
keyed by image_id on the source's partition, in input order; a dead letter (with the reason)
per message that cannot be decoded. Folds ``control.events`` (through the runner):
calibrations per (model version, source), per-source threshold overrides (production only),
the production / shadow / canary model slots. The production model is ``state.production``
when set (a promoted slot; if its weights cannot be loaded it is logged and the configured
backbone goes on serving under its own version), else the configured backbone.

A served record carries its image when it is a candidate (the detect processor localizes it),
when it is uncalibrated (its source's calibration window: the images that define the source's
normal for the scorer) and, for a share ``normal_sample_fraction`` of the calibrated unflagged
ones (by hash of image id), so that the detect processor learns which boxes the source's
normal images contain from the start of a stream, not only after hundreds of images.

Bootstrap: while a source has no calibration under the production model, its images are
scored ``calibrated=false`` (never candidates) and their embeddings form the controller's
reference window for that source; after ``reference_size`` such images of a source the scorer
waits (up to ``calibration_wait_s``) for its ``calibration.updated`` instead of scoring more of
them against nothing. It never waits for a shadow or canary calibration.

Execution: :class:`~processors.score.embedding.BatchEmbedder` decodes, preprocesses and embeds
the batch (``score_chunks`` > 1 overlaps decoding with the model); each other distinct backbone
runs once per batch (a shadow with production's weights reuses its features); the OOD maths
runs with ``ood_threads`` BLAS threads.

Pauses: while ``pipeline.paused`` is in force the runner stops handing it batches (it finishes
and commits the one in hand first) and resumes on ``pipeline.resumed``.

Guarantees: every consumed message yields a dead letter or exactly one served score (plus
unserved ones); a control event acknowledged before an image was produced is applied before
that image is scored (each batch first waits until the follower has applied the control log up
to its end, and before that, while the controller has more than ``score.max_control_lag``
scores to read, for it: :mod:`processors.score.control_lag`); decisions depend only on the
image, its features and the ControlState snapshot stamped as ``control_offset``; ensembles
are refit from content-addressed artifacts, so every scorer instance with the same settings
makes bit-identical decisions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from processors.core.artifacts import ArtifactStore
from processors.core.control import ControlState
from processors.core.datasets import is_normal_sample
from processors.core.exceptions import SkyloopError
from processors.core.kafka import partition_for
from processors.core.metrics import IMAGES_SCORED, SCORE_LATENCY, serving_models
from processors.core.records import TOPICS, ImageRecord, ScoreRecord
from processors.core.runner import InMessage, OutMessage, RunContext
from processors.ood.ensemble import energy_score
from processors.score.backbone import Backbone, BackboneOutput
from processors.score.control_lag import ControlLag
from processors.score.decisions import EnsembleCache, MathThreads, Verdict, decide
from processors.score.embedding import BatchEmbedder, StageTimes
from processors.score.models import BackboneCache, backbone_spec_from_settings
from processors.score.routing import Assignment, plan_roles

__all__ = ["CONTROL_CATCH_UP_S", "ScoreProcessor"]

log = logging.getLogger(__name__)

CONTROL_CATCH_UP_S = 10.0


def _finite(out: BackboneOutput, rows: NDArray[np.intp]) -> bool:
    return bool(np.isfinite(out.features[rows]).all() and np.isfinite(out.logits[rows]).all())


def _non_finite_verdict(vote_k: int) -> Verdict:
    """The verdict of a model whose outputs are not finite: NaN raw scores, never a candidate."""
    nan = float("nan")
    return Verdict(
        detectors=[
            {"detector": d, "raw": nan, "score": 0.0, "threshold": None, "vote": False}
            for d in ("mahalanobis", "energy", "knn")
        ],
        ensemble_score=0.0,
        votes_for=0,
        votes_needed=vote_k,
        is_candidate=False,
        calibrated=False,
    )


class ScoreProcessor:
    """See the module docstring. ``backbone`` overrides the configured one (tests, benches)."""

    name: str = "score"
    inputs: tuple[str, ...] = ("images.raw",)
    pausable: bool = True

    def __init__(self, backbone: Backbone | None = None) -> None:
        self.backbone = backbone
        self.times = StageTimes()
        # Distinct image ids sent uncalibrated per (version, source), as the controller's
        # reference window counts them (redelivered or re-published images count once).
        self._uncalibrated_sent: dict[tuple[str, str], set[str]] = {}
        self._embedder: BatchEmbedder | None = None
        self._control_lag: ControlLag | None = None
        self._produced = 0  # score records of the last batch (the control lag grows by them)

    def setup(self, ctx: RunContext) -> None:
        s = ctx.settings
        self.ctx = ctx
        if self.backbone is None:
            self.backbone = Backbone(backbone_spec_from_settings(s.score))
        store = ArtifactStore(s.artifacts_dir)
        self.models = BackboneCache(self.backbone, store, s.data_dir / "models")
        self.ensembles = EnsembleCache(store)
        self.math_threads = MathThreads(s.ood.threads)
        self._embedder = BatchEmbedder(ctx.codec, s.score.chunks, self.times)
        self._control_lag = ControlLag(s, ctx.bootstrap)
        log.info("score: %r, %d chunk(s) per batch", self.backbone, s.score.chunks)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
        if self._control_lag is not None:
            self._control_lag.close()

    # -- the step ----------------------------------------------------------------------------
    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        if self._control_lag is not None:  # first let the controller read what we served
            self._control_lag.hold(self._stopped, self._produced)  # outside the latency
            self.ctx.progress.set("control_lag_waited_s", round(self._control_lag.waited_s, 3))
        started = time.perf_counter()
        state = self._caught_up(state)
        self.times.control += time.perf_counter() - started
        production_slot = state.production
        production = self.models.get(production_slot)
        if production is None:  # a promoted model that cannot be loaded: keep serving
            production, production_slot = self.default_backbone, None
        version = production_slot.version if production_slot else production.version
        assert self._embedder is not None, "setup() was not called"
        forward_before = self.times.forward
        embedded = self._embedder.embed(batch, production)
        production_forward = self.times.forward - forward_before
        # decode + preprocess (+ control catch-up): shared by every model of the batch
        shared_s = time.perf_counter() - started - production_forward
        records = embedded.records
        outputs: dict[int, list[OutMessage]] = {
            i: [self.ctx.dead_letter(batch[i], exc, source)] for i, exc, source in embedded.failures
        }
        if embedded.outputs is not None:
            sources = [r["source"] for r in records]
            waited = self._await_calibrations(state, version, set(sources))
            if waited.production != state.production:  # promoted while waiting: start over
                return self.process(batch, waited)
            state = waited
            plan = plan_roles([r["image_id"] for r in records], sources, state, version)
            features = {production.version: embedded.outputs}
            scored = self._score(
                plan,
                production,
                embedded.arrays,
                records,
                features,
                state,
                (shared_s, production_forward),
            )
            for row, messages in scored.items():
                outputs.setdefault(embedded.positions[row], []).extend(messages)
        self.times.batches += 1
        self.times.images += len(records)
        produced = [m for i in sorted(outputs) for m in outputs[i]]
        self._produced = sum(m.topic == "scores" for m in produced)
        return produced

    @property
    def default_backbone(self) -> Backbone:
        assert self.backbone is not None, "setup() was not called"
        return self.backbone

    # -- other backbones -----------------------------------------------------------------
    def _embed_rows(
        self, bb: Backbone, arrays: list[NDArray[np.float32]], features: dict[str, BackboneOutput]
    ) -> BackboneOutput:
        """Another backbone's outputs for every row (computed once per batch)."""
        if bb.version not in features:
            t0 = time.perf_counter()
            features[bb.version] = bb.embed(arrays)
            self.times.forward += time.perf_counter() - t0
        return features[bb.version]

    # -- decisions and records ---------------------------------------------------------------
    def _score(
        self,
        plan: list[Assignment],
        production: Backbone,
        arrays: list[NDArray[np.float32]],
        records: list[ImageRecord],
        features: dict[str, BackboneOutput],
        state: ControlState,
        timing: tuple[float, float],
    ) -> dict[int, list[OutMessage]]:
        """Score every assignment; each record's ``latency_ms`` is its model's, per image.

        ``timing`` is (the batch's shared decode/preprocess seconds, production's forward
        seconds). A model's per-image latency is the shared share plus its own forward pass
        over the batch (none when it reuses production's features) divided by the batch size,
        plus its OOD decisions divided by its rows: models of one batch compare fairly.
        """
        settings = self.ctx.settings
        shared_s, production_forward = timing
        n = len(records)
        results: list[tuple[Assignment, Backbone, BackboneOutput, list[Verdict], float]] = []
        for assignment in plan:
            is_production = assignment.role == "production"
            bb = production if is_production or assignment.paired else None
            bb = bb or self.models.get(assignment.slot)
            if bb is None:
                continue  # an unavailable shadow/canary slot (logged once by the cache)
            t0 = time.perf_counter()
            cached = bb.version in features
            out = self._embed_rows(bb, arrays, features)
            forward_s = production_forward if bb is production else time.perf_counter() - t0
            if cached and bb is not production:
                forward_s = 0.0
            rows = np.asarray(assignment.rows)
            t1 = time.perf_counter()
            if not is_production and not _finite(out, rows):
                # a broken shadow/canary: its records say so (NaN), for its gate to see
                verdicts = [_non_finite_verdict(settings.calibration.vote_k)] * len(rows)
                latency_ms = 1000 * ((shared_s + forward_s) / n)
                results.append((assignment, bb, out, verdicts, latency_ms))
                continue
            energy = energy_score(out.logits[rows])
            try:
                with self.math_threads.limited():
                    verdicts = decide(
                        out.features[rows],
                        energy,
                        [records[i]["source"] for i in assignment.rows],
                        state,
                        assignment.model_version,
                        self.ensembles,
                        default_vote_k=settings.calibration.vote_k,
                        source_overrides=is_production or assignment.paired,
                    )
            except SkyloopError:
                if is_production:
                    raise
                # e.g. a shadow calibration whose reference is missing or of another dimension
                log.exception("score: %s %s left out of this batch", assignment.role, bb.version)
                continue
            decide_s = time.perf_counter() - t1
            self.times.decide += decide_s
            latency_ms = 1000 * ((shared_s + forward_s) / n + decide_s / len(rows))
            results.append((assignment, bb, out, verdicts, latency_ms))
            if is_production:
                for i, verdict in zip(assignment.rows, verdicts, strict=True):
                    if not verdict.calibrated:
                        key = (assignment.model_version, records[i]["source"])
                        sent = self._uncalibrated_sent.setdefault(key, set())
                        if len(sent) < settings.calibration.reference_size:
                            sent.add(records[i]["image_id"])
        serving_models((a.role, a.model_version, bb.spec.name) for a, bb, _, _, _ in results)
        t_encode = time.perf_counter()
        now = datetime.now(UTC)
        partitions = TOPICS["scores"].partitions
        codec = self.ctx.codec
        normal_share = self.ctx.settings.learning.normal_sample_fraction
        messages: dict[int, list[OutMessage]] = {}
        for assignment, bb, out, verdicts, latency_ms in results:
            embeddings = out.features[np.asarray(assignment.rows)].astype("<f2")
            for j, (i, verdict) in enumerate(zip(assignment.rows, verdicts, strict=True)):
                rec = records[i]
                score = ScoreRecord(
                    image_id=rec["image_id"],
                    source=rec["source"],
                    model_version=assignment.model_version,
                    backbone=bb.spec.name,
                    role=assignment.role,
                    detectors=verdict.detectors,
                    ensemble_score=verdict.ensemble_score,
                    votes_for=verdict.votes_for,
                    votes_needed=verdict.votes_needed,
                    is_candidate=verdict.is_candidate,
                    calibrated=verdict.calibrated,
                    batch_size=n,
                    latency_ms=latency_ms,
                    control_offset=state.offset,
                    scored_at=now,
                    embedding=embeddings[j].tobytes(),
                    calibration_id=verdict.calibration_id,
                )
                if assignment.served and (
                    verdict.is_candidate
                    or not verdict.calibrated
                    or is_normal_sample(rec["image_id"], normal_share)
                ):
                    # the detect processor localizes the served candidates, and learns which
                    # boxes the source's normal images have from its calibration window (the
                    # images that define normal for the scorer too) and a sample of the others
                    score["image"] = rec
                messages.setdefault(i, []).append(
                    OutMessage(
                        "scores",
                        rec["image_id"].encode(),
                        codec.encode(score, "skyloop.ScoreRecord"),
                        partition_for(rec["source"], partitions),
                    )
                )
                candidate = "true" if verdict.is_candidate else "false"
                IMAGES_SCORED.labels(rec["source"], assignment.role, candidate).inc()
                SCORE_LATENCY.labels(assignment.role).observe(latency_ms / 1000)
            if assignment.served:
                self.ctx.progress.add("candidates", sum(v.is_candidate for v in verdicts))
        self.ctx.progress.add("scored", n)
        self.times.encode += time.perf_counter() - t_encode
        return messages

    def _stopped(self) -> bool:
        stopped = self.ctx.extra.get("stopped")
        return bool(stopped()) if stopped is not None else False

    def _caught_up(self, state: ControlState) -> ControlState:
        """The follower's state once every control event already in the log is applied.

        The runner hands over the newest state it has, but the follower applies events on its
        own thread; an event acknowledged before an image was produced is in the log before the
        image is consumed, so waiting for the log end here guarantees it is applied before the
        image is scored (one watermark query per batch).
        """
        follower = self.ctx.extra.get("follower")
        if follower is None:
            return state
        if not follower.wait_caught_up(timeout_s=CONTROL_CATCH_UP_S):
            log.warning(
                "score: control log not caught up in %.0fs; using the state applied so far",
                CONTROL_CATCH_UP_S,
            )
        newest: ControlState = follower.state
        return newest if newest.offset >= state.offset else state

    def _await_calibrations(
        self, state: ControlState, version: str, sources: set[str]
    ) -> ControlState:
        """Wait for the production calibration of every source whose reference window we filled.

        Only the production model is waited for; returns the newest state when it waited.
        """
        follower = self.ctx.extra.get("follower")
        size = self.ctx.settings.calibration.reference_size
        waiting = {
            s
            for s in sources
            if state.calibration_for(version, s) is None
            and len(self._uncalibrated_sent.get((version, s), ())) >= size
        }
        if follower is None or not waiting:
            return state
        log.info("score: reference windows full for %s; waiting for calibration", sorted(waiting))
        follower.wait_until(
            lambda st: all(st.calibration_for(version, s) is not None for s in waiting),
            self.ctx.settings.score.calibration_wait_s,
        )
        new_state: ControlState = follower.state
        missing = [s for s in waiting if new_state.calibration_for(version, s) is None]
        if missing:
            log.warning(
                "score: no calibration for %s after %.0fs; scoring them uncalibrated",
                missing,
                self.ctx.settings.score.calibration_wait_s,
            )
        return new_state
