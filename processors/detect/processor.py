"""The detect processor: candidate scores → ``candidates``.

Consumes ScoreRecords; every served score (production, or a canary's) with ``is_candidate``
becomes a CandidateRecord
(``label_status=pending``), keyed by image_id on the source's partition. Localization (YOLO)
and catalog cross-match fill ``boxes`` and ``crossmatches`` in later steps; until then they are
empty, never invented.

Guarantees: one candidate per (image_id, model_version) per delivery of its score (at least
once; ClickHouse dedupes); undecodable scores go to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from processors.core.control import ControlState
from processors.core.exceptions import CodecError
from processors.core.kafka import partition_for
from processors.core.records import TOPICS, CandidateRecord, ScoreRecord
from processors.core.runner import InMessage, OutMessage, RunContext

__all__ = ["DetectProcessor", "candidate_from_score"]


def candidate_from_score(score: ScoreRecord, control_offset: int) -> CandidateRecord:
    return CandidateRecord(
        image_id=score["image_id"],
        source=score["source"],
        model_version=score["model_version"],
        ensemble_score=score["ensemble_score"],
        detector_scores={d["detector"]: d["score"] for d in score["detectors"]},
        ra=None,
        dec=None,
        boxes=[],
        crossmatches=[],
        label_status="pending",
        detector_model_version=None,
        detected_at=datetime.now(UTC),
        control_offset=control_offset,
    )


class DetectProcessor:
    name = "detect"
    inputs = ("scores",)

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        outputs: list[OutMessage] = []
        partitions = TOPICS["candidates"].partitions
        for msg in batch:
            try:
                score: ScoreRecord = self.ctx.codec.decode(msg.value, "skyloop.ScoreRecord")  # type: ignore[assignment]
            except CodecError as exc:
                outputs.append(self.ctx.dead_letter(msg, exc))
                continue
            # Served decisions only: production, or a calibrated canary (never the shadow).
            if not score["is_candidate"] or score["role"] == "shadow":
                continue
            candidate = candidate_from_score(score, state.offset)
            outputs.append(
                OutMessage(
                    "candidates",
                    score["image_id"].encode(),
                    self.ctx.codec.encode(candidate, "skyloop.CandidateRecord"),
                    partition_for(score["source"], partitions),
                )
            )
            self.ctx.progress.add("candidates")
        return outputs
