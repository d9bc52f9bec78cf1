"""The controller's I/O: records in, artifacts and control events out, state to the table.

:class:`ControlService` is what the Faust agents call. For each record (a score, a dead letter)
it guarantees, in this order:

0. records of a partition are handled in offset order: one that arrives past a hole waits until
   the hole fills (:mod:`processors.controller.ordering`, which also asks the app to rewind a
   partition whose hole stays open, and accepts the hole, as a counted gap, after that);
1. a record at or below the source's last applied offset for its topic partition is skipped
   (redelivered after a restart: its effects are in the table already);
2. the pure :class:`~processors.controller.controller.Controller` decides (ring entries go to
   the ring's write-back blocks as it goes);
3. for each event decided: its artifacts are written (content-addressed, idempotent), then
   the event is produced and flushed, unless an event with the same id is already in the log
   (a decision made again after a restart: ids are deterministic) or was emitted by this
   process;
4. at the end of the batch, for each source it touched: the changed ring blocks, then the
   source's head (with the new offsets), on the source's partition; then, for each input
   partition in the batch, the highest offset handled (``applied|<topic>|<partition>``).

A crash before 4 completes replays the records after the last head on the changelog; they make
the same decisions with the same ids, which step 3 recognises, so no event is emitted twice and
none is lost. A restarted worker resumes each input partition after its applied offset, or at
its beginning when it never applied it (:meth:`ControlService.resume_offset`), never at the
consumer group's committed one (one key per partition and hot-log epoch; the epoch before's is
deleted when the new one's is first written): Faust commits the offsets of handled records on
a timer, without waiting for the table's changelog records to be delivered, so a commit can
outrun the state it stands for (a stop or a crash in between would then lose those records for
good). The lane statistics of closed tumbling windows (``stats_window_s``) go to a second
table, ``lane_windows`` (:mod:`processors.controller.windows`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from processors.controller.controller import Controller, ControllerConfig, Emit
from processors.controller.learning import LearningLoop
from processors.controller.learning_table import LearningTable
from processors.controller.lifecycle import Lifecycle
from processors.controller.ordering import InOrder, Record
from processors.controller.state import SourceState
from processors.controller.tables import (
    ChangelogTable,
    TableRing,
    applied_key,
    head_key,
    load_applied,
    load_head,
)
from processors.controller.windows import roll_window
from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.dedupe import RecentIds
from processors.core.events import EventType
from processors.core.exceptions import CodecError, SkyloopError, StackError
from processors.core.kafka import (
    ControlFollower,
    make_producer,
    partition_for,
    produce_control_event,
)
from processors.core.metrics import (
    CONTROL_EVENTS,
    DRIFT_STATISTIC,
    DRIFTS,
    FLAG_RATE_TARGET,
    PIPELINE_PAUSED,
    SOURCE_PAUSED,
    SOURCE_WEIGHT,
    THRESHOLD,
)
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, Box, CandidateRecord, DeadLetter, ScoreRecord
from processors.core.retention import epoch_topic, live_epoch
from processors.ood.reference import load_reference
from processors.policies.profile import load_profile
from processors.policies.retrain import RetrainTrigger
from processors.yolo.samples import TrainingSample

__all__ = ["ControlService", "dead_letter_source"]

log = logging.getLogger(__name__)

INPUTS = ("scores", "images.dlq", "candidates")  # the topics the agents hand over
ROLLOUTS_KEY = "rollouts"  # the lifecycle's tracks (processors.controller.lifecycle), partition 0


def dead_letter_source(letter: DeadLetter) -> str | None:
    """The image source a dead letter belongs to: its ``source`` field, else a ``source:NAME``
    origin (ingest failures of records written before the field existed)."""
    if letter.get("source"):
        return letter["source"]
    origin = letter["original_topic"]
    return origin.removeprefix("source:") if origin.startswith("source:") else None


class ControlService:
    """See the module docstring. ``table`` and ``windows`` are Faust tables (or dicts)."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        progress: ProgressFile,
        table: ChangelogTable,
        windows: ChangelogTable,
    ) -> None:
        self.settings = settings
        FLAG_RATE_TARGET.set(settings.calibration.target_fpr)
        self.bootstrap = bootstrap
        self.progress = progress
        self.table = table
        self.windows = windows
        self.codec = default_codec()
        self.store = ArtifactStore(settings.artifacts_dir)
        self.ring = TableRing(table)
        self.controller = Controller(
            ControllerConfig.from_settings(settings),
            self.ring,
            lambda profile_id: load_profile(self.store, profile_id),
            lambda reference_id: load_reference(self.store, reference_id),
        )
        self.lifecycle = Lifecycle.from_settings(settings.rollout)
        self.learning = LearningLoop(
            RetrainTrigger(
                min_samples=settings.learning.retrain_min_samples,
                cooldown_s=settings.learning.retrain_cooldown_s,
                max_per_day=settings.learning.retrain_max_per_day,
            ),
            held_out_fraction=settings.learning.held_out_fraction,
            max_samples=settings.learning.dataset_max_samples,
        )
        self._lifecycle_loaded = False
        self._learning_loaded = False
        self.learning_table = LearningTable(table)
        # the hot log's epoch of the data topics (core/retention.py): offsets restart at 0 in
        # each, so the guard's positions are per epoch ("scores#3"); epoch 0 keeps "scores"
        self.epoch = live_epoch(settings.progress_dir)
        self.follower: ControlFollower | None = None
        self.producer: Any = None
        self._heads: dict[str, SourceState] = {}
        self._applied: dict[tuple[str, int], int | None] = {}
        self.order = InOrder(self._applied_offset)
        self._emitted: OrderedDict[str, None] = OrderedDict()
        self._revised = RecentIds()  # (image, model, revision) produced: the stop condition's
        self._partitions = TOPICS["scores"].partitions

    def start(self) -> None:
        """Replay ``control.events`` to its end before any record is handled."""
        self.follower = ControlFollower(self.settings, self.bootstrap).start()
        self.follower.wait_caught_up(timeout_s=60)
        self.producer = make_producer(self.settings, self.bootstrap, **{"linger.ms": 0})

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.close()
        if self.producer is not None:
            self.producer.flush(10)

    @property
    def control(self) -> ControlState:
        return self.follower.state if self.follower else ControlState.initial()

    def head(self, source: str) -> SourceState:
        if source not in self._heads:
            self._heads[source] = load_head(self.table, source)
        return self._heads[source]

    def resume_offset(self, topic: str, partition: int) -> int | None:
        """Where a restarted worker resumes ``topic``'s ``partition`` (a full topic name, as the
        consumer knows it): the offset after the highest one applied; 0, the beginning, when
        this epoch of the partition was never applied (whatever its group committed: the
        commit may stand for state that never reached the table); None for a topic that is not
        one of the service's inputs."""
        for base in INPUTS:
            if topic == self.settings.topic(base):
                applied = self._applied_offset(epoch_topic(base, self.epoch), partition)
                return 0 if applied is None else applied + 1
        return None

    def _applied_offset(self, topic: str, partition: int) -> int | None:
        key = (topic, partition)
        if key not in self._applied:
            self._applied[key] = load_applied(self.table, topic, partition)
        return self._applied[key]

    # -- records -----------------------------------------------------------------------------
    def on_scores(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        """Fold a batch of ``(partition, offset, value)`` score messages, in order.

        Each touched source's ring blocks and then its head are written once, at the end.
        """
        batch = self._admit("scores", batch)
        touched: dict[str, int] = {}
        for partition, offset, value in batch:
            self.progress.add("consumed")
            try:
                score: ScoreRecord = self.codec.decode(value, "skyloop.ScoreRecord")  # type: ignore[assignment]
            except CodecError as exc:
                log.error(
                    "controller: undecodable score at %d/%d skipped: %s", partition, offset, exc
                )
                self.progress.add("undecodable")
                continue
            src = self.head(score["source"])
            if src.seen(epoch_topic("scores", self.epoch), partition, offset):
                self.progress.add("redelivered")
                continue
            roll_window(self.windows, src, score, partition, self.settings.health.stats_window_s)
            self._emit(self.controller.on_score(src, score, self.control))
            self._emit([Emit(e) for e in self._lifecycle().on_score(score, self.control)])
            src.mark(epoch_topic("scores", self.epoch), partition, offset)
            touched[src.source] = partition
            self.progress.add("applied")
        self._save(touched, "scores", batch)
        # in the write that has ``consumed``: a run that sees every score consumed reads it too
        self.progress.set("revisions_waiting", Controller.revisions_waiting(self._heads))
        self.progress.write()

    def on_score(self, partition: int, offset: int, value: bytes) -> None:
        self.on_scores([(partition, offset, value)])

    def on_dead_letters(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        """Fold a batch of dead letters: errors of their sources and of the pipeline."""
        batch = self._admit("images.dlq", batch)
        touched: dict[str, int] = {}
        for partition, offset, value in batch:
            try:
                letter: DeadLetter = self.codec.decode(value, "skyloop.DeadLetter")  # type: ignore[assignment]
            except CodecError as exc:
                log.error(
                    "controller: undecodable dead letter at %d/%d: %s", partition, offset, exc
                )
                continue
            self.progress.add("dead_letters")
            source = dead_letter_source(letter)
            # Source state lives on the source's partition; elsewhere a letter counts for health.
            if source is None or partition_for(source, self._partitions) != partition:
                self._emit(self.controller.on_dead_letter(None, letter, self.control))
                continue
            src = self.head(source)
            if src.seen(epoch_topic("images.dlq", self.epoch), partition, offset):
                continue
            self._emit(self.controller.on_dead_letter(src, letter, self.control))
            src.mark(epoch_topic("images.dlq", self.epoch), partition, offset)
            touched[source] = partition
        self._save(touched, "images.dlq", batch)

    def on_dead_letter(self, partition: int, offset: int, value: bytes) -> None:
        self.on_dead_letters([(partition, offset, value)])

    def on_candidates(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        """Fold a batch of candidates: pseudo-labels into the dataset (and retrain requests),
        detector outputs into the lifecycle of the detectors under rollout."""
        batch = self._admit("candidates", batch)
        touched: dict[str, int] = {}
        for partition, offset, value in batch:
            try:
                candidate: CandidateRecord = self.codec.decode(value, "skyloop.CandidateRecord")  # type: ignore[assignment]
            except CodecError as exc:
                log.error("controller: undecodable candidate at %d/%d: %s", partition, offset, exc)
                continue
            src = self.head(candidate["source"])
            if src.seen(epoch_topic("candidates", self.epoch), partition, offset):
                continue
            self._lifecycle()
            self._emit(self._learning().on_candidate(candidate))
            label = self._label_boxes(candidate)
            self._emit([Emit(e) for e in self.lifecycle.on_candidate(candidate, label)])
            src.mark(epoch_topic("candidates", self.epoch), partition, offset)
            touched[src.source] = partition
            self.progress.add("candidates")
        if touched:
            self.learning_table.save(self.learning.state)
        self._save(touched, "candidates", batch)

    def _label_boxes(self, candidate: CandidateRecord) -> list[Box] | None:
        """A canary-served pseudo-label's boxes (its training sample), for the detector
        canary's quality; None for any other candidate or an unreadable sample (logged)."""
        sample = candidate.get("sample_id")
        if candidate.get("detector_role") != "canary" or not sample:
            return None
        if candidate.get("label_status") != "pseudo_label":
            return None
        try:
            return list(TrainingSample.from_bytes(self.store.get_bytes(sample)).boxes)
        except SkyloopError as exc:
            log.warning("controller: pseudo-label sample %s unreadable: %s", sample, exc)
            return None

    def _learning(self) -> LearningLoop:
        """The learning loop, its dataset restored from the table on first use after a start."""
        if not self._learning_loaded:
            self.learning.state = self.learning_table.load()
            self._learning_loaded = True
        return self.learning

    def _save(
        self, touched: dict[str, int], base: str, batch: Sequence[tuple[int, int, bytes]]
    ) -> None:
        """Ring blocks, then the head, of each touched source, on its partition (in order);
        then the lifecycle's rollout tracks, when any model is in rollout; last, the highest
        offset of each of ``base``'s partitions in the batch, on that partition (after the
        heads it stands for)."""
        for source, partition in touched.items():
            self.ring.flush(source, partition)
            self.table.put(head_key(source), self.head(source).to_bytes(), partition)
        if touched and (self.lifecycle.tracks or self.table.get(ROLLOUTS_KEY) is not None):
            self.table.put(ROLLOUTS_KEY, self.lifecycle.to_bytes(), 0)
        topic = epoch_topic(base, self.epoch)
        highest: dict[int, int] = {}  # per partition: the highest offset handled
        for partition, offset, _value in batch:
            highest[partition] = max(offset, highest.get(partition, offset))
        for partition, offset in highest.items():
            applied = self._applied_offset(topic, partition)
            if applied is None or offset > applied:
                self.table.put(applied_key(topic, partition), str(offset).encode(), partition)
                self._applied[(topic, partition)] = offset
            if applied is None and self.epoch > 0:  # the epoch before is gone: so is its key
                self.table.delete(
                    applied_key(epoch_topic(base, self.epoch - 1), partition), partition
                )

    # -- order ------------------------------------------------------------------------------
    def _admit(self, base: str, batch: Sequence[Record]) -> list[Record]:
        """What of ``batch`` to handle now, in offset order per partition (step 0)."""
        ready, accepted = self.order.admit(epoch_topic(base, self.epoch), batch)
        for hole in accepted:
            self._gap(hole.stream, hole.partition, hole.expected, hole.missing)
        return ready

    def rewinds(self, ends: dict[tuple[str, int], int]) -> list[tuple[str, int, int]]:
        """``(topic, partition, offset)`` to seek the consumer to: holes open too long, and
        input partitions stalled with records at the broker (``ends``: their end offsets)."""
        topics = {self.settings.topic(base): stream for stream, base in self._streams().items()}
        stalled = {(topics[t], p): end for (t, p), end in ends.items() if t in topics}
        streams = {stream: topic for topic, stream in topics.items()}
        return [
            (streams[r.stream], r.partition, r.offset)
            for r in [*self.order.rewinds(), *self.order.stalled(stalled)]
            if r.stream in streams
        ]

    def _streams(self) -> dict[str, str]:
        """The input streams of this epoch (``scores#3``) and their base topics."""
        return {epoch_topic(base, self.epoch): base for base in INPUTS}

    def _release_overdue(self) -> None:
        """Accept the holes still open after their rewind: handle what waited behind them."""
        handlers = {
            "scores": self.on_scores,
            "images.dlq": self.on_dead_letters,
            "candidates": self.on_candidates,
        }
        streams = self._streams()
        for hole in self.order.overdue():
            self._gap(hole.stream, hole.partition, hole.expected, hole.missing)
            if hole.stream in streams:  # (records are below the next offset: not held again)
                handlers[streams[hole.stream]](hole.records)

    def _gap(self, topic: str, partition: int, expected: int, missing: int) -> None:
        """``missing`` records from ``expected`` on never reached the service: counted and logged
        as loud as a loss deserves (retention deleting unread records: the only expected cause)."""
        self.progress.add("gaps", missing)
        span = f"{topic}[{partition}]: offsets {expected} to {expected + missing - 1}"
        log.error("controller: %s never arrived (%d records never seen)", span, missing)

    def _lifecycle(self) -> Lifecycle:
        """The lifecycle, its tracks restored from the table on first use after a start."""
        if not self._lifecycle_loaded:
            raw = self.table.get(ROLLOUTS_KEY)
            if raw is not None:
                self.lifecycle.load(raw)
            self._lifecycle_loaded = True
        return self.lifecycle

    def tick(self, now: datetime | None = None) -> None:
        """Timer: overdue holes, expired pauses, requested revisions, then the gauges."""
        self._release_overdue()
        self.progress.set("held", self.order.held())
        self.progress.set("holes", self.order.holes)
        state = self.control
        now = now or datetime.now(UTC)
        self._emit(self.controller.on_tick(now, state))
        for src, emits in self.controller.on_revision_requests(self._heads, state):
            self._emit(emits)
            partition = partition_for(src.source, self._partitions)
            self.table.put(head_key(src.source), src.to_bytes(), partition)
        self.progress.set("revisions_waiting", Controller.revisions_waiting(self._heads))
        self._emit([Emit(e) for e in self._lifecycle().on_control(state, now)])
        PIPELINE_PAUSED.set(1 if state.pipeline_paused else 0)
        for source in {*state.paused_sources, *state.source_weights}:
            SOURCE_PAUSED.labels(source).set(1 if state.is_source_paused(source) else 0)
        for source, weight in state.source_weights.items():
            SOURCE_WEIGHT.labels(source).set(weight)
        self.progress.write(force=True)

    # -- effects -----------------------------------------------------------------------------
    def _emit(self, emits: list[Emit]) -> None:
        for emit in emits:
            event = emit.event
            event_id = event["event_id"]
            self._produce_revisions(emit)
            already = self.follower is not None and self.follower.has_event(event_id)
            if already or event_id in self._emitted:
                self.progress.add("events_already_logged")
                continue
            for blob in emit.artifacts:
                self.store.put_bytes(blob)
            produce_control_event(self.producer, self.settings, event, self.codec)
            self._emitted[event_id] = None
            while len(self._emitted) > 10_000:
                self._emitted.popitem(last=False)
            self.progress.add(f"events.{event['type']}")
            CONTROL_EVENTS.labels(event["type"], event["issued_by"]).inc()
            model = event["params"].get("model_version") or ""
            if event["type"] == EventType.DRIFT_DETECTED:
                DRIFTS.labels(event["subject"], model).inc()
                for statistic, value in (event["evidence"] or {}).items():
                    DRIFT_STATISTIC.labels(event["subject"], model, statistic).set(value)
            thresholds = event["params"].get("thresholds") or {}
            if thresholds and event["type"] != EventType.SOURCE_WEIGHTS_SET:
                THRESHOLD.labels(event["subject"], model).set(max(thresholds.values()))
            log.info("controller: %s %s %s", event["type"], event["subject"], event["evidence"])

    def _produce_revisions(self, emit: Emit) -> None:
        """An emit's revised decisions to ``scores.revised``, keyed and partitioned as their
        scores were; before the event, so the log never names revisions not yet produced."""
        if not emit.records:
            return
        topic = self.settings.topic("scores.revised")
        for record in emit.records:
            self.producer.produce(
                topic,
                key=record["image_id"].encode(),
                value=self.codec.encode(record, "skyloop.ScoreRevision"),
                partition=partition_for(record["source"], self._partitions),
            )
            key = (record["image_id"], record["model_version"], record["revision"])
            if self._revised.add(key):  # distinct, as the sink counts what it stored
                self.progress.set("revisions", self._revised.count)
        if self.producer.flush(30) != 0:
            raise StackError("revised decisions were not delivered within 30 s")
