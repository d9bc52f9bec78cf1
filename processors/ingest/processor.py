"""The ingest processor: image sources → ``images.raw`` (and failures → ``images.dlq``).

Consumes: an :class:`ImageSource` (not Kafka). Produces: ImageRecord keyed by image_id on the
source's partition (per-source order kept), DeadLetter for items a source could not read or
that break a record limit. Folds: ``control.events`` for paused sources and pipeline pauses.
Guarantees: every item taken from a source ends up on exactly one of the two topics (at least
once; re-ingesting yields the same image_id, so downstream dedupes); ``run`` returns only
after the producer has flushed everything it produced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.imaging import MAX_PIXEL_BYTES
from processors.core.kafka import ControlFollower, make_producer, partition_for
from processors.core.metrics import DEAD_LETTERS, MESSAGES_OUT
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, DeadLetter
from processors.core.runner import StopSignal
from processors.ingest.base import ImageSource, RawImage, SourceFailure, to_record

__all__ = ["IngestSummary", "run_ingest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestSummary:
    published: int
    dead_letters: int
    seconds: float


def _failure_letter(item: SourceFailure) -> DeadLetter:
    return DeadLetter(
        original_topic=f"source:{item.source}",
        partition=-1,
        offset=-1,
        key=item.key.encode(),
        raw=item.raw,
        error_class=item.error_class,
        message=item.message[:2000],
        processor="ingest",
        at=datetime.now(UTC),
    )


def run_ingest(
    settings: Settings,
    bootstrap: str,
    source: ImageSource,
    *,
    limit: int | None = None,
    stop: StopSignal | None = None,
    progress_dir: Path | None = None,
) -> IngestSummary:
    """Publish up to ``limit`` items of ``source`` (all when None) and flush before returning."""
    codec = default_codec()
    stop = stop or StopSignal()
    progress = ProgressFile(progress_dir, "ingest")
    producer = make_producer(settings, bootstrap)
    follower = ControlFollower(settings, bootstrap).start()
    follower.wait_caught_up(timeout_s=30)
    partitions = TOPICS["images.raw"].partitions
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    published = dead = taken = 0
    started = time.perf_counter()
    progress.set("done", False)
    try:
        for item in source:
            if stop.is_set() or (limit is not None and taken >= limit):
                break
            taken += 1
            while follower.state.pipeline_paused and not stop.is_set():
                time.sleep(0.2)
            if isinstance(item, RawImage) and len(item.pixels) > MAX_PIXEL_BYTES:
                item = SourceFailure(
                    item.source,
                    "oversized",
                    item.pixels[:1024],
                    "OversizedImage",
                    f"cutout is {len(item.pixels)} bytes; the limit is {MAX_PIXEL_BYTES}",
                )
            if isinstance(item, SourceFailure):
                letter = _failure_letter(item)
                producer.produce(
                    settings.topic("images.dlq"),
                    key=letter["key"],
                    value=codec.encode(letter, "skyloop.DeadLetter"),
                    on_delivery=on_delivery,
                )
                DEAD_LETTERS.labels("ingest", item.error_class).inc()
                dead += 1
            else:
                record = to_record(item)
                producer.produce(
                    settings.topic("images.raw"),
                    key=record["image_id"].encode(),
                    value=codec.encode(record, "skyloop.ImageRecord"),
                    partition=partition_for(record["source"], partitions),
                    on_delivery=on_delivery,
                )
                MESSAGES_OUT.labels("ingest", "images.raw").inc()
                published += 1
            producer.poll(0)
            progress.set("published", published)
            progress.set("dead_letters", dead)
            progress.write()
        if producer.flush(60) != 0 or errors:
            raise RuntimeError(f"ingest: messages not delivered: {errors[:3]}")
    finally:
        follower.close()
    progress.set("published", published)
    progress.set("dead_letters", dead)
    progress.set("done", True)
    progress.write(force=True)
    return IngestSummary(published, dead, time.perf_counter() - started)
