"""The cold tier of ``skyloop replay`` rescore: selected images the hot log no longer holds.

The hot log is bounded (the embedded broker's rotations delete the data topics, a real Kafka's
retention deletes old segments), but ClickHouse stores every image with its pixels. A rescore
first reads ``images.raw`` (the hot pass, :mod:`processors.replay`); then this module reads
the selected images that ClickHouse stored before the replay started and that the hot pass did
not score, oldest first, and runs them through the same pinned scorer, producing the same
outputs with the same keys.

Invariants: each selected image stored before the start is scored once by the replay, by the
hot pass when the hot log still holds it, else here: the ids of every image the hot log holds
from before the start (:func:`hot_ids`, whatever the replay's group had already committed)
are excluded. Images are read from ClickHouse in pages (``PAGE`` at a time, so memory
is bounded) through :class:`~processors.core.warehouse_rows.SqlRows` (the live sink's endpoint, or a
client of the configured DSN); outputs are produced and flushed page by page. A finished cold
pass leaves a marker (:func:`marker_path`), so the same replay run again does nothing, as its
hot pass does; one interrupted midway has no marker and scores its cold images again (ClickHouse
keeps one row per identity). A stored image whose pixels no longer decode becomes a dead letter
as on the hot path (origin offset -1: it did not come from the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.exceptions import CodecError
from processors.core.kafka import ControlFollower, make_producer, partition_for
from processors.core.processor import InMessage, RunContext
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, ImageRecord
from processors.core.runner import produce_outputs
from processors.core.warehouse_rows import SqlRows, stored_images

__all__ = [
    "PAGE",
    "ColdPass",
    "cold_ids",
    "hot_ids",
    "marker_path",
    "selection_sql",
]

log = logging.getLogger(__name__)

PAGE = 256
_ID_PAGE = 100_000
_IMAGE = "skyloop.ImageRecord"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _at(at: datetime) -> str:
    return f"toDateTime64({_quote(at.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3])}, 3, 'UTC')"


def selection_sql(
    before: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    sources: frozenset[str] | None = None,
) -> str:
    """The WHERE clause of the images stored before ``before`` that a selection takes.

    >>> from datetime import UTC
    >>> selection_sql(datetime(2026, 12, 6, tzinfo=UTC), sources=frozenset({"o'k"}))
    "ingested_at < toDateTime64('2026-12-06 00:00:00.000', 3, 'UTC') AND source IN ('o\\\\'k')"
    """
    where = [f"ingested_at < {_at(before)}"]
    if since is not None:
        where.append(f"observed_at >= {_at(since)}")
    if until is not None:
        where.append(f"observed_at < {_at(until)}")
    if sources is not None:
        where.append(f"source IN ({', '.join(_quote(s) for s in sorted(sources))})")
    return " AND ".join(where)


def cold_ids(sql: SqlRows, where: str, hot: set[str]) -> list[str]:
    """Ids of the stored images matching ``where`` that are not in ``hot``, oldest first."""
    ids: list[tuple[Any, str]] = []
    last = ""
    while True:
        rows = sql.rows(
            f"SELECT image_id, min(observed_at) AS observed_at FROM images WHERE ({where}) "
            f"AND image_id > {_quote(last)} GROUP BY image_id ORDER BY image_id LIMIT {_ID_PAGE}"
        )
        ids.extend((r["observed_at"], r["image_id"]) for r in rows if r["image_id"] not in hot)
        if len(rows) < _ID_PAGE:
            break
        last = rows[-1]["image_id"]
    return [image_id for _at_, image_id in sorted(ids)]


def hot_ids(settings: Settings, bootstrap: str, before_ms: int, idle_s: float = 2.0) -> set[str]:
    """Image ids of the ``images.raw`` records stamped before ``before_ms`` (the key, or the
    decoded record's id when it has none).

    Read from each partition's start by a client outside every group; a partition ends at its
    first record stamped at or after ``before_ms``, the scan when no older record came for
    ``idle_s`` (never from end offsets, ARCHITECTURE.md, "The local stack")."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from processors.core.kafka import kafka_security

    topic = settings.topic("images.raw")
    partitions = range(TOPICS["images.raw"].partitions)
    client = Consumer(
        {
            **kafka_security(settings),
            "bootstrap.servers": bootstrap,
            "group.id": f"{settings.kafka.group_prefix}.replay-scan",
            "enable.auto.commit": False,
        }
    )
    client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    ids: set[str] = set()
    codec = default_codec()
    open_partitions, last = set(partitions), time.monotonic()
    try:
        while open_partitions and time.monotonic() - last < idle_s:
            for message in client.consume(1000, 0.2):
                if message.error() is not None or message.partition() not in open_partitions:
                    continue
                if message.timestamp()[1] >= before_ms:
                    open_partitions.discard(message.partition())
                    continue
                last = time.monotonic()
                key = message.key()
                if key:  # ingest keys images by id
                    ids.add(key.decode(errors="replace"))
                    continue
                with suppress(CodecError):  # unreadable: dead-lettered when first consumed
                    ids.add(str(codec.decode(message.value() or b"", _IMAGE)["image_id"]))
    finally:
        client.close()
    return ids


def marker_path(settings: Settings, group: str) -> Path:
    """Where a finished cold pass of the replay whose group is ``group`` is recorded."""
    return settings.data_dir / "replays" / f"{group}.cold.json"


@dataclass
class ColdPass:
    """Runs ``process`` (the pinned, wrapped scorer of the replay) over stored images.

    ``processor`` is the replay's (:class:`processors.replay._Replay`): set up on a context
    with a control follower, it pins every state to the replayed model, admits, scores, counts.
    """

    settings: Settings
    bootstrap: str
    name: str
    processor: Any
    delivery_errors: list[str] = field(default_factory=list)

    def run(self, sql: SqlRows, ids: list[str]) -> int:
        """Score the stored images ``ids`` (in that order); the number handed to the scorer."""
        if not ids:
            return 0
        follower = ControlFollower(self.settings, self.bootstrap).start()
        producer = make_producer(self.settings, self.bootstrap)
        ctx = RunContext(
            self.settings, self.bootstrap, self.name, default_codec(), ProgressFile(None, self.name)
        )
        ctx.extra.update(follower=follower, producer=producer, stopped=lambda: False)
        done = 0
        try:
            follower.wait_caught_up(timeout_s=60)
            self.processor.setup(ctx)
            for batch in self._batches(stored_images(sql, ids), ctx):
                outputs = self.processor.process(batch, follower.state)
                produce_outputs(producer, self.settings, self.name, outputs, self.delivery_errors)
                done += len(batch)
                log.info("replay: %d of %d stored images rescored", done, len(ids))
        finally:
            self.processor.close()
            producer.flush(10)
            follower.close()
        return done

    def _batches(self, images: Iterator[ImageRecord], ctx: RunContext) -> Iterator[list[InMessage]]:
        partitions = TOPICS["images.raw"].partitions
        size = self.settings.batch.size
        batch: list[InMessage] = []
        for record in images:
            value = ctx.codec.encode(record, _IMAGE)
            partition = partition_for(record["source"], partitions)
            batch.append(InMessage("images.raw", partition, -1, record["image_id"].encode(), value))
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch
