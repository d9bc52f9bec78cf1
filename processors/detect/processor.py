"""The detect processor: served candidates → ``candidates``, localized, cross-matched, labelled.

Consumes ScoreRecords. Every served candidate (``is_candidate``, role production or canary) that
carries its image (the scorer attaches it to served candidates) becomes one CandidateRecord,
keyed by image_id on the source's partition, with:

- **boxes** from the localizer that serves it (:mod:`processors.detect.localizers`): the detector
  rollout's canary for the images its fraction routes there (by hash of image_id, as the scorer
  routes), else the production detector, else the *baseline*, source extraction on the image's
  own pixels; the boxes of a shadow detector, and production's boxes for a canary-served
  image, go in ``detector_outputs`` (never served; the controller compares them);
- **cross-matches** (:class:`~processors.detect.crossmatch_stage.CrossMatchStage`: offline
  catalogs at the image's position, a ZTF alert's own context, TAP when configured);
- a **label status** from :class:`~processors.detect.labels.PseudoLabelPolicy`, judged on the
  baseline's boxes that are unlike the source's normal images (:mod:`.novelty`: what source
  extraction finds on the sample of served, unflagged images whose scores carry their pixels,
  and provisionally, until that sample has ``label_novelty_min_reference`` boxes, on the
  source's calibration window; nothing is judged before either has that many boxes): a
  pseudo-label's boxes come from its pixels, never from a model's own predictions (which would
  teach a detector its own mistakes), and box what is unusual, not every source; a
  pseudo-label's training sample is stored as a content-addressed artifact (``sample_id``)
  before its record is produced.

Localization runs only on candidates (a few per cent of images), never on every image.

It also consumes ``scores.revised``: an image a drift's revision flags that its live decision
did not (a candidate the revision added) becomes a candidate the same way. Its score never
carried its pixels, so they are read from the warehouse (:mod:`processors.core.warehouse_rows`:
the local run's sink, or the configured ClickHouse); a warehouse that does not answer fails the
batch, which the runner retries; an image it does not hold becomes a candidate without boxes
(``pending``, the reason says why). A revision that withdraws a candidate produces nothing: its
``decisions.revised`` event and the warehouse's ``candidates_revised`` view say so.

Guarantees: one candidate per (image_id, model_version) per delivery of its score (at least
once; ClickHouse dedupes; a sample is content-addressed, so a redelivery stores nothing new);
undecodable scores go to the dead-letter topic; a candidate whose image cannot be read, or a
detector that fails, never stops the batch: the image gets the boxes that could be made (none
are invented) and the failure is logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from processors.core.artifacts import ArtifactStore
from processors.core.control import ControlState
from processors.core.exceptions import CodecError, SkyloopError, StoreUnavailableError
from processors.core.kafka import partition_for
from processors.core.records import (
    TOPICS,
    Box,
    CandidateRecord,
    CrossMatch,
    DetectorOutput,
    ImageRecord,
    ScoreRecord,
    ScoreRevision,
)
from processors.core.runner import InMessage, OutMessage, RunContext
from processors.core.warehouse_rows import SqlRows, stored_images, warehouse
from processors.detect.crossmatch_stage import CrossMatchStage
from processors.detect.labels import LabelStatus, PseudoLabelPolicy
from processors.detect.localizers import Localization, LocalizerSet
from processors.detect.novelty import NormalBoxes, NoveltyParams
from processors.yolo.extraction import extract_boxes, merge_adjacent
from processors.yolo.raster import record_plane
from processors.yolo.samples import TrainingSample

__all__ = ["DetectProcessor", "candidate_from_score"]

log = logging.getLogger(__name__)


def candidate_from_score(
    score: ScoreRecord,
    control_offset: int,
    *,
    localization: Localization | None = None,
    crossmatches: Sequence[CrossMatch] = (),
    label: tuple[str, str] = ("pending", "no image to localize"),
    sample_id: str | None = None,
) -> CandidateRecord:
    image = score.get("image")
    served = localization.served if localization else None
    return CandidateRecord(
        image_id=score["image_id"],
        source=score["source"],
        model_version=score["model_version"],
        ensemble_score=score["ensemble_score"],
        detector_scores={d["detector"]: d["score"] for d in score["detectors"]},
        ra=image["ra"] if image else None,
        dec=image["dec"] if image else None,
        boxes=list(served.boxes) if served else [],
        crossmatches=list(crossmatches),
        label_status=label[0],  # type: ignore[typeddict-item]
        detector_model_version=served.version if served else None,
        detected_at=datetime.now(UTC),
        control_offset=control_offset,
        detector_role=served.role if served else None,
        detector_latency_ms=served.latency_ms if served else None,
        label_reason=label[1],
        sample_id=sample_id,
        detector_outputs=[
            DetectorOutput(
                model_version=o.version, role=o.role, boxes=list(o.boxes), latency_ms=o.latency_ms
            )
            for o in (localization.unserved if localization else ())
        ],
    )


def revised_score(revision: ScoreRevision, image: ImageRecord | None) -> ScoreRecord:
    """The score a revision stands for, as the localizer reads one: the revised decision,
    the image (when the warehouse had it), served by production."""
    return ScoreRecord(
        image_id=revision["image_id"],
        source=revision["source"],
        model_version=revision["model_version"],
        backbone="",
        role="production",
        detectors=revision["detectors"],
        ensemble_score=revision["ensemble_score"],
        votes_for=revision["votes_for"],
        votes_needed=revision["votes_needed"],
        is_candidate=revision["is_candidate"],
        calibrated=True,
        batch_size=0,
        latency_ms=0.0,
        control_offset=-1,  # made by the controller, under no scorer's snapshot
        scored_at=revision["revised_at"],
        embedding=None,
        calibration_id=revision["calibration_id"],
        image=image,
    )


class DetectProcessor:
    name = "detect"
    inputs = ("scores", "scores.revised")
    warehouse: SqlRows | None = None
    _unstored: frozenset[str] | set[str] = frozenset()  # revised-in ids without a stored image

    def setup(self, ctx: RunContext) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.store = ArtifactStore(s.artifacts_dir)
        self.crossmatch = CrossMatchStage.from_settings(s.crossmatch)
        self.localizers = LocalizerSet(self.store, s.data_dir / "models" / "detectors")
        self.labels = PseudoLabelPolicy(
            min_votes=s.learning.pseudo_label_min_votes,
            min_score=s.learning.pseudo_label_min_score,
            min_box_confidence=s.learning.pseudo_label_min_box_confidence,
            crossmatch=s.learning.pseudo_label_crossmatch,
        )
        self.normal = NormalBoxes(
            NoveltyParams(
                alpha=s.learning.label_novelty_alpha,
                min_reference=s.learning.label_novelty_min_reference,
            )
        )

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        scores: list[ScoreRecord] = []
        outputs: list[OutMessage] = []
        added: list[ScoreRevision] = []
        for msg in batch:
            if msg.topic == "scores.revised":
                try:
                    revision: ScoreRevision = self.ctx.codec.decode(  # type: ignore[assignment]
                        msg.value, "skyloop.ScoreRevision"
                    )
                except CodecError as exc:
                    outputs.append(self.ctx.dead_letter(msg, exc))
                    continue
                if revision["is_candidate"] and not revision["was_candidate"]:
                    added.append(revision)
                continue
            try:
                score: ScoreRecord = self.ctx.codec.decode(msg.value, "skyloop.ScoreRecord")  # type: ignore[assignment]
            except CodecError as exc:
                outputs.append(self.ctx.dead_letter(msg, exc))
                continue
            # Served decisions only: production, or a calibrated canary (never the shadow).
            if score["role"] == "shadow":
                continue
            if score["is_candidate"]:
                scores.append(score)
            elif score.get("image") is not None:
                self._learn_normal(score)
        scores += self._revised_in(added)
        with_image = [s for s in scores if s.get("image") is not None]
        images: list[ImageRecord] = [s["image"] for s in with_image]  # type: ignore[misc]
        matches = dict(
            zip((s["image_id"] for s in with_image), self._crossmatch(images), strict=True)
        )
        partitions = TOPICS["candidates"].partitions
        for score in scores:
            candidate = self._candidate(score, matches.get(score["image_id"], []), state)
            outputs.append(
                OutMessage(
                    "candidates",
                    score["image_id"].encode(),
                    self.ctx.codec.encode(candidate, "skyloop.CandidateRecord"),
                    partition_for(score["source"], partitions),
                )
            )
            self.ctx.progress.add("candidates")
            self.ctx.progress.add(f"labels.{candidate['label_status']}")
        return outputs

    def _revised_in(self, added: list[ScoreRevision]) -> list[ScoreRecord]:
        """The candidates revisions added, with their images from the warehouse."""
        self._unstored = set()
        if not added:
            return []
        if self.warehouse is None:
            self.warehouse = warehouse(self.ctx.settings)
        try:
            images = {
                i["image_id"]: i
                for i in stored_images(self.warehouse, [r["image_id"] for r in added])
            }
        except SkyloopError as exc:  # the sink restarting, a server away: retry the batch
            raise StoreUnavailableError(f"detect: images of revised candidates: {exc}") from exc
        self.ctx.progress.add("revised_in", len(added))
        self._unstored = {r["image_id"] for r in added if r["image_id"] not in images}
        if self._unstored:
            log.warning("detect: %d revised candidates have no stored image", len(self._unstored))
            self.ctx.progress.add("revised_in_without_image", len(self._unstored))
        return [revised_score(r, images.get(r["image_id"])) for r in added]

    def _learn_normal(self, score: ScoreRecord) -> None:
        """Source extraction on an unflagged image: its boxes are what the source's normal
        images contain. An image that cannot be read teaches nothing (counted)."""
        try:
            plane = record_plane(score["image"])  # type: ignore[arg-type]
            boxes = extract_boxes(plane)
        except SkyloopError:
            self.ctx.progress.add("unreadable_normal_samples")
            return
        provisional = not score["calibrated"]  # its calibration window: not yet scored
        self.normal.add(score["source"], boxes, plane.shape[:2], provisional)
        self.ctx.progress.add("provisional_normal_samples" if provisional else "normal_samples")

    def _crossmatch(self, images: list[ImageRecord]) -> list[list[CrossMatch]]:
        if not images:
            return []
        try:
            return self.crossmatch.crossmatches(images)
        except SkyloopError as exc:  # a bad catalog row or position: no matches, not a stop
            log.error("detect: cross-match of %d images failed: %s", len(images), exc)
            self.ctx.progress.add("crossmatch_failures")
            return [[] for _ in images]

    def _label(
        self,
        score: ScoreRecord,
        baseline: Sequence[Box],
        shape: tuple[int, int],
        matches: list[CrossMatch],
    ) -> tuple[LabelStatus, str, list[Box]]:
        """The label status, its reason and the boxes a pseudo-label would train on: the
        baseline's boxes unlike the source's normal ones, adjacent ones merged (an extended
        anomaly that extraction split is one box)."""
        source = score["source"]
        novel = self.normal.novel(source, baseline, shape)
        if novel is None:
            have = max(self.normal.size(source), self.normal.size(source, provisional=True))
            need = self.normal.params.min_reference
            return "rejected", f"normal boxes of its source: {have} of {need} needed", []
        unusual = [box for box, flag in zip(baseline, novel, strict=True) if flag]
        boxes = merge_adjacent(unusual, self.ctx.settings.learning.label_merge_gap_px)
        if not boxes:
            return "rejected", "no box unlike its source's normal images", []
        status, reason = self.labels.judge(
            score["votes_for"],
            {d["detector"]: float(d["score"]) for d in score["detectors"]},
            boxes,
            matches,
        )
        if self.normal.provisional(source):
            reason += "; normal boxes from the calibration window"
        return status, reason, boxes

    def _candidate(
        self, score: ScoreRecord, matches: list[CrossMatch], state: ControlState
    ) -> CandidateRecord:
        image = score.get("image")
        if image is None:
            reason = "no image to localize"
            if score["image_id"] in self._unstored:
                reason = "added by a revision; its image is not in the warehouse"
            return candidate_from_score(score, state.offset, label=("pending", reason))
        try:
            plane = record_plane(image)
        except SkyloopError as exc:
            log.warning("detect: image %s cannot be read: %s", score["image_id"], exc)
            self.ctx.progress.add("unreadable_images")
            return candidate_from_score(
                score, state.offset, crossmatches=matches, label=("rejected", f"unreadable: {exc}")
            )
        started = time.perf_counter()
        localization = self.localizers.localize(score["image_id"], plane, state.detector)
        for failure in localization.failures:
            self.ctx.progress.add(f"detector_failures.{failure}")
        status, reason, boxes = self._label(score, localization.baseline, plane.shape[:2], matches)
        sample_id = None
        if status == "pseudo_label":
            sample = TrainingSample(score["image_id"], score["source"], plane, boxes)
            sample_id = self.store.put_bytes(sample.to_bytes())
        self.ctx.progress.add("localize_ms", round((time.perf_counter() - started) * 1000))
        return candidate_from_score(
            score,
            state.offset,
            localization=localization,
            crossmatches=matches,
            label=(status, reason),
            sample_id=sample_id,
        )
