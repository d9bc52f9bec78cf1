"""The sink processor: every topic → its ClickHouse table.

Consumes ``images.raw``, ``scores``, ``scores.revised``, ``candidates``, ``control.events`` and
``images.dlq``.
Produces nothing on Kafka; writes rows with :class:`ClickHouseWriter` (tables created from
``infra/clickhouse`` migrations at start). Guarantees: the runner commits a batch's offsets only
after ``process`` returned, i.e. after every row of the batch is in ClickHouse; redelivered
rows are absorbed by ReplacingMergeTree. A message that cannot be decoded, or whose record
does not fit its table, goes to the dead-letter topic (and so, on a later batch, into
``dead_letters``); a dead letter that itself cannot be decoded is stored in ``dead_letters``
directly, wrapped with the reason. Nothing consumed is dropped. A control event the fold
refuses (:mod:`processors.core.fold_guard`; the verdict of the runner's own ``ControlFollower``,
by offset) is stored in ``control_events`` like any other (the audit trail keeps everything) and
dead-lettered too, error class ``RefusedEvent`` with the reason: one ``dead_letters`` row under
FINAL (identity: origin topic, offset, processor, bytes), however often its batch is redelivered.

While it runs, the sink owns the chdb path and answers ``skyloop sql`` over a loopback HTTP
endpoint (read-only SQL, behind the run's token: :mod:`processors.sink.query_server`) whose port
and token it writes to ``<data_dir>/sink.json`` (mode 0600). It also keeps distinct-id counts in
its progress file, which the local supervisor uses to know when every stage is done.

Being the one process that may open the chdb path, the sink also writes the run-time reports
into ``<data_dir>/report/`` (policy: :mod:`processors.report.schedule`): an interim report
``report-<stamp>-paused.md`` for each ``pipeline.paused`` event it stores, and a periodic one,
``report-<stamp>-periodic.md``, every ``report_interval_s``. A report reads only rows already
inserted, and a failing report is logged and counted (``report_errors``), never lost data.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from processors.core.clickhouse import HELD_WAIT_S, client_options, connect
from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.dedupe import RecentIds
from processors.core.exceptions import CodecError, StoreUnavailableError
from processors.core.fold_guard import RefusedEvent
from processors.core.query_token import TOKEN_ENV, new_token, write_private
from processors.core.records import TOPICS, DeadLetter, dead_letter
from processors.core.runner import InMessage, OutMessage, RunContext
from processors.report.learning_readiness import LearningNeeds
from processors.report.run_report import read_processes
from processors.report.schedule import ReportSchedule, interim_report_for, report_stem
from processors.sink.landing import LANDING_TABLE, Peeked, ScoreLanding
from processors.sink.migrations import apply_migrations
from processors.sink.query_server import QueryServer
from processors.sink.rows import (
    KafkaCoordinates,
    Row,
    RowError,
    TableSpec,
    build_row,
    table_for_topic,
)
from processors.sink.writer import ClickHouseWriter, SinkError

__all__ = ["SinkProcessor", "relax_gc"]

log = logging.getLogger(__name__)


def relax_gc() -> None:
    """Collect garbage far less often in a sink process (call once, at its start).

    A batch makes ~100,000 short-lived objects (messages, peeked fields, container pieces),
    none of them in a reference cycle; at CPython's default threshold (a young collection every
    700 allocations, and the older generations scanned every 10) the collector ran hundreds of
    times a batch and cost about 2.7 µs of the ~12 µs a score spends in the sink's own work.
    Memory is still freed at once by reference counting; only cycles wait longer.
    """
    gc.freeze()  # what was loaded so far (modules, the engine) is never scanned again
    gc.set_threshold(100_000, 50, 100)


class SinkProcessor:
    name = "sink"
    inputs = tuple(TOPICS)

    @staticmethod
    def consumer_config(settings: Settings) -> dict[str, int]:
        """A batch of 20,000 scores nearly fills librdkafka's prefetch queue (64 MB), so
        fetching pauses while the sink stores it, and the one fetch then in flight asks only
        for empty partitions: the broker holds it ``fetch.wait.max.ms`` (500 ms by default)
        before the partition with data can be fetched again. At 100 ms one round of the sink
        bench in eleven stalled; at 500 ms three rounds in five did (about 1 s each;
        BENCHMARKS.md). Not on the durable embedded broker: it lists a partition's stored
        batches on every fetch, and at 100 ms the sink fell to about 1 image a second there
        (its fetches of ``images.raw`` starved behind the others) where 500 ms kept up."""
        return {} if settings.broker.durable else {"fetch.wait.max.ms": 100}

    def __init__(self, serve_queries: bool = True) -> None:
        self.serve_queries = serve_queries
        self.lock = threading.Lock()
        self.server: QueryServer | None = None
        # Distinct ids per kind, for the local supervisor's "every stage is done" check; bounded,
        # so a run of days keeps constant memory (exact while duplicates arrive close together).
        self._seen: dict[str, RecentIds] = {
            k: RecentIds()
            for k in (
                "images",
                "scores",
                "candidate_scores",
                "candidates",
                "dlq_source",
                "dlq_images",
                "dlq_other",
                "control_events",
                "revisions",
                "revised_in",
                "candidates_expected",
            )
        }

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        # wait_s: a restarted sink may find a `skyloop sql` reading the chdb files directly
        self.client = connect(
            ctx.settings.resolved_clickhouse_dsn,
            wait_s=HELD_WAIT_S,
            **client_options(ctx.settings),
        )
        apply_migrations(self.client)
        self.writer = ClickHouseWriter(self.client)
        self.landing = ScoreLanding(ctx.codec) if ctx.settings.sink.avro_landing else None
        self.reports_dir = ctx.settings.data_dir / "report"
        self.schedule = ReportSchedule(ctx.settings.report.interval_s, datetime.now(UTC))
        if self.serve_queries:
            # queries get a client of their own, made read-only (the sink's stays writable)
            dsn, options = ctx.settings.resolved_clickhouse_dsn, client_options(ctx.settings)
            token = os.environ.get(TOKEN_ENV) or new_token()
            self.server = QueryServer(lambda: connect(dsn, **options), self.lock, token).start()
            ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
            write_private(
                ctx.settings.data_dir / "sink.json", {"port": self.server.port, "token": token}
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            (self.ctx.settings.data_dir / "sink.json").unlink(missing_ok=True)
        self.client.close()

    def _count(self, topic: str, record: Mapping[str, Any]) -> None:
        seen = self._seen
        if topic == "images.raw":
            seen["images"].add(record["image_id"])
        elif topic == "scores":
            self._count_score(
                record["image_id"], record["role"], record["is_candidate"], record["calibrated"]
            )
        elif topic == "candidates":
            seen["candidates"].add(record["image_id"])
        elif topic == "scores.revised":
            seen["revisions"].add(
                f"{record['image_id']}|{record['model_version']}|{record['revision']}"
            )
            if record["is_candidate"] and not record["was_candidate"]:  # detect localizes it
                seen["revised_in"].add(record["image_id"])
                seen["candidates_expected"].add(record["image_id"])
        elif topic == "control.events":
            seen["control_events"].add(record["event_id"])
        elif topic == "images.dlq":
            origin = record["original_topic"]
            key = (
                "dlq_source"
                if origin.startswith("source:")
                else ("dlq_images" if origin == "images.raw" else "dlq_other")
            )
            seen[key].add(f"{origin}/{record['partition']}/{record['offset']}/{record['key']!r}")

    def _count_score(self, image_id: str, role: str, is_candidate: bool, calibrated: bool) -> None:
        if role == "production" or (role == "canary" and calibrated):  # the served decision
            self._seen["scores"].add(image_id)
            if is_candidate:
                self._seen["candidate_scores"].add(image_id)
                self._seen["candidates_expected"].add(image_id)

    def _unreadable_dead_letter(self, msg: InMessage, exc: Exception) -> DeadLetter:
        self.ctx.progress.add("unreadable_dead_letters")
        return dead_letter(
            original_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=msg.key,
            raw=msg.value,
            error_class=type(exc).__name__,
            message=str(exc),
            processor="sink",
        )

    def _write_report(self, stem: str, at: datetime, title: str, note: str) -> None:
        """One report of ``at``'s UTC day; errors are logged and counted, never raised."""
        mine = self.ctx.progress.path  # the run's progress folder holds every process's file
        progress = mine.parent if mine is not None else None
        try:
            from processors.report.daily import generate_report  # matplotlib: ~1 s at start

            generate_report(
                self.client,
                self.reports_dir,
                day=at.date(),
                title=title,
                stem=stem,
                note=note,
                flag_window=self.ctx.settings.drift.window,
                learning_needs=LearningNeeds.of(self.ctx.settings),
                processes=read_processes(progress) if progress else None,
            )
        except Exception:  # a report is a by-product: no failure of it may cost a batch
            log.exception("sink: report %s not written", stem)
            self.ctx.progress.add("report_errors")
        else:
            self.ctx.progress.add("reports")

    def _write_reports(self, stored: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """The interim reports the stored control events call for, then the periodic one when
        due. The caller holds ``self.lock`` and has inserted the batch's rows."""
        for topic, record in stored:
            if topic != "control.events":
                continue
            try:
                interim = interim_report_for(record)
            except (KeyError, TypeError, ValueError):  # e.g. an unreadable ``until``: stored
                log.exception("sink: no interim report for event %s", record.get("event_id"))
                self.ctx.progress.add("report_errors")
                continue
            if interim is not None:
                self._write_report(interim.stem, interim.at, "skyloop interim report", interim.note)
        now = datetime.now(UTC)
        if self.schedule.due(now):
            every = self.schedule.interval.total_seconds()
            note = f"Periodic report (every {every:g} s), written {now:%Y-%m-%d %H:%M:%S} UTC"
            self._write_report(report_stem(now, "periodic"), now, "skyloop periodic report", note)
            # counted from the end of the write, so a slow report cannot make the next one due
            self.schedule.written(datetime.now(UTC))

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        """Store the batch: every row inserted, then the reports it calls for, under the lock.

        Order: scores of the current schema go to ClickHouse as Avro (:mod:`.landing`); if
        ClickHouse refuses them, the whole batch takes the record path instead → the record
        path decodes and builds every other row (a message that does not fit becomes an output
        dead letter) → all rows inserted, one INSERT per table → the interim and periodic
        reports, which therefore read every row of this batch → the progress counts → the dead
        letters returned; the runner produces them and only then commits the offsets. The SQL
        endpoint shares the client, so inserts and reports hold ``self.lock``.
        """
        landed, by_record = self._split(batch)
        if landed and not self._land(landed):
            landed, by_record = [], list(batch)
        outputs, built, stored = self._rows(by_record)
        with self.lock:
            self.writer.insert_rows(built)
            self._write_reports(stored)
        for _, (image_id, role, is_candidate, calibrated, _) in landed:
            self._count_score(image_id, role, is_candidate, calibrated)
        for topic, record in stored:
            self._count(topic, record)
        for key, ids in self._seen.items():
            self.ctx.progress.set(key, ids.count)
        return outputs

    def _split(
        self, batch: Sequence[InMessage]
    ) -> tuple[list[tuple[InMessage, Peeked]], list[InMessage]]:
        """Scores the landing path takes (with their peeked fields), and the other messages."""
        landed: list[tuple[InMessage, Peeked]] = []
        by_record: list[InMessage] = []
        if self.landing is None:
            return landed, list(batch)
        for msg in batch:
            if msg.topic == "scores" and self.landing.accepts(msg.value):
                try:
                    landed.append((msg, self.landing.peek(msg.value)))
                    continue
                except (IndexError, ValueError):  # garbled: the record path says why
                    pass
            by_record.append(msg)
        return landed, by_record

    def _land(self, landed: Sequence[tuple[InMessage, Peeked]]) -> bool:
        """Insert the landed scores; False (logged, counted) when ClickHouse refused them."""
        assert self.landing is not None  # _split lands nothing without it
        container = self.landing.block(
            "scores", [(msg.partition, msg.offset, msg.value, peeked[4]) for msg, peeked in landed]
        )
        try:
            with self.lock:
                self.writer.insert_avro(LANDING_TABLE, container)
        except SinkError as exc:
            log.warning(
                "sink: %d scores refused as Avro, storing them as rows: %s", len(landed), exc
            )
            self.ctx.progress.add("landing_fallbacks")
            return False
        return True

    def _rows(
        self, messages: Sequence[InMessage]
    ) -> tuple[
        list[OutMessage],
        dict[str, tuple[TableSpec, list[Row]]],
        list[tuple[str, Mapping[str, Any]]],
    ]:
        """Decode and build the rows of ``messages``: (dead letters, rows per table, records)."""
        outputs: list[OutMessage] = []
        built: dict[str, tuple[TableSpec, list[Row]]] = {}
        stored: list[tuple[str, Mapping[str, Any]]] = []
        for msg in messages:
            spec = table_for_topic(msg.topic)
            at = KafkaCoordinates(msg.topic, msg.partition, msg.offset)
            try:
                record: Mapping[str, Any] = self.ctx.codec.decode(
                    msg.value, TOPICS[msg.topic].schema
                )
                row = build_row(spec, record, at)
            except (CodecError, RowError) as exc:
                if msg.topic != "images.dlq":
                    outputs.append(self.ctx.dead_letter(msg, exc))
                    continue
                # Dead-lettering a dead letter could loop; store it as it is, with the reason.
                record = self._unreadable_dead_letter(msg, exc)
                row = build_row(spec, record, at)
            built.setdefault(spec.table, (spec, []))[1].append(row)
            stored.append((msg.topic, record))
            reason = self._refusal(msg) if spec.topic == "control.events" else None
            if reason is not None:
                outputs.append(self.ctx.dead_letter(msg, RefusedEvent(reason)))
        return outputs, built, stored

    def _refusal(self, msg: InMessage) -> str | None:
        """Why the control fold refused the event ``msg`` holds (None: it was applied).

        Asks the runner's follower, which folds the same log; one that has not reached the
        offset within 30 s makes the runner retry the batch, as a store outage does."""
        follower = self.ctx.extra.get("follower")
        if follower is None:  # not run by a Runner: no fold to ask
            return None
        try:
            reason: str | None = follower.refusal_at(msg.offset, timeout_s=30.0)
        except TimeoutError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        return reason
