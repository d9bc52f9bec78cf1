"""The sink processor: every topic → its ClickHouse table.

Consumes ``images.raw``, ``scores``, ``candidates``, ``control.events`` and ``images.dlq``.
Produces nothing on Kafka; writes rows with :class:`ClickHouseWriter` (tables created from
``infra/clickhouse`` migrations at start). Guarantees: the runner commits a batch's offsets only
after ``process`` returned, i.e. after every row of the batch is in ClickHouse; redelivered
rows are absorbed by ReplacingMergeTree. A message that cannot be decoded, or whose record
does not fit its table, goes to the dead-letter topic (and so, on a later batch, into
``dead_letters``); a dead letter that itself cannot be decoded is stored in ``dead_letters``
directly, wrapped with the reason. Nothing consumed is dropped.

While it runs, the sink owns the chdb path and answers ``skyloop sql`` over a loopback HTTP
endpoint whose port it writes to ``<data_dir>/sink.json``. It also keeps distinct-id counts in
its progress file, which the local supervisor uses to know when every stage is done.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from processors.core.clickhouse import connect
from processors.core.control import ControlState
from processors.core.exceptions import CodecError
from processors.core.records import TOPICS, DeadLetter, dead_letter
from processors.core.runner import InMessage, OutMessage, RunContext
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
from processors.sink.writer import ClickHouseWriter

__all__ = ["SinkProcessor"]


class SinkProcessor:
    name = "sink"
    inputs = tuple(TOPICS)

    def __init__(self, serve_queries: bool = True) -> None:
        self.serve_queries = serve_queries
        self.lock = threading.Lock()
        self.server: QueryServer | None = None
        self._seen: dict[str, set[str]] = {
            k: set()
            for k in (
                "images",
                "scores",
                "candidate_scores",
                "candidates",
                "dlq_source",
                "dlq_images",
                "dlq_other",
                "control_events",
            )
        }

    def setup(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.client = connect(ctx.settings.resolved_clickhouse_dsn)
        apply_migrations(self.client)
        self.writer = ClickHouseWriter(self.client)
        if self.serve_queries:
            self.server = QueryServer(self.client, self.lock).start()
            ctx.settings.data_dir.mkdir(parents=True, exist_ok=True)
            (ctx.settings.data_dir / "sink.json").write_text(json.dumps({"port": self.server.port}))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            (self.ctx.settings.data_dir / "sink.json").unlink(missing_ok=True)
        self.client.close()

    def _count(self, topic: str, record: Mapping[str, Any]) -> None:
        seen = self._seen
        if topic == "images.raw":
            seen["images"].add(record["image_id"])
        elif topic == "scores" and (
            record["role"] == "production" or (record["role"] == "canary" and record["calibrated"])
        ):  # the image's served decision
            seen["scores"].add(record["image_id"])
            if record["is_candidate"]:
                seen["candidate_scores"].add(record["image_id"])
        elif topic == "candidates":
            seen["candidates"].add(record["image_id"])
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

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        outputs: list[OutMessage] = []
        built: dict[str, tuple[TableSpec, list[Row]]] = {}
        stored: list[tuple[str, Mapping[str, Any]]] = []
        for msg in batch:
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
        with self.lock:
            self.writer.insert_rows(built)
        for topic, record in stored:
            self._count(topic, record)
        for key, ids in self._seen.items():
            self.ctx.progress.set(key, len(ids))
        return outputs
