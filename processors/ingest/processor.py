"""The ingest processor: image sources → ``images.raw`` (and failures → ``images.dlq``).

Consumes: an :class:`ImageSource` (not Kafka). Produces: ImageRecord keyed by image_id on the
source's partition (per-source order kept), DeadLetter for items a source could not read or
that break a record limit. Folds: ``control.events``: a pipeline pause holds every draw; a
paused source is not drawn from until resumed or its pause's ``until`` has passed; several
sources share the draws by the weights of ``source.weights_set``, with a floor
(``source_weight_floor``; :func:`processors.core.allocation.allocate`).

Guarantees:
- every item taken from a source ends up on exactly one of the two topics (at least once;
  re-ingesting yields the same image_id, so downstream dedupes), and each item is produced
  before the next one is asked for (no item is taken and then left behind at a limit or stop);
- sources that commit (a Kafka topic) commit only after delivery, in this order: producer
  flush (every message produced so far acknowledged, else :class:`DeliveryError` and no
  commit) → ``source.commit()``; this runs every ``commit_interval_s`` while items flow, at
  the source's own quiet points (through its ``deliver`` hook), and once at the end;
- it never runs more than ``ingest_max_lag`` images ahead of the scorers
  (:mod:`processors.ingest.backpressure`), so pauses and weights act within seconds;
- nothing is dropped silently: what a source cut or failed is in its counters
  (``source.stats``), reported per source in the progress file and :class:`IngestSummary`;
- ``run_ingest`` returns only after the producer has flushed everything it produced; its
  progress file says ``done`` only then.

Progress file (``<progress_dir>/ingest.json``, for ``skyloop run``): ``published`` and
``dead_letters`` (messages produced), ``images`` and ``dead_letter_keys`` (distinct image ids
and distinct (source, key) of dead letters: what downstream counts after dedupe), ``limit``,
``sources`` (per source name: the same four counts plus the source's own counters) and ``done``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processors.core.allocation import allocate
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.dedupe import RecentIds
from processors.core.imaging import MAX_PIXEL_BYTES
from processors.core.kafka import ControlFollower, make_producer, partition_for
from processors.core.metrics import DEAD_LETTERS, MESSAGES_OUT
from processors.core.progress import ProgressFile
from processors.core.records import TOPICS, DeadLetter, dead_letter
from processors.core.retention import hold_ingest
from processors.core.runner import DeliveryError, StopSignal
from processors.ingest.backpressure import ScoreLag
from processors.ingest.interleaved import Interleaved
from processors.ingest.skip import StoredSkip
from processors.ingest.sources.base import BaseSource, ImageSource, source_counters, source_parts
from processors.ingest.sources.items import (
    RawImage,
    SourceFailure,
    SourceItem,
    image_id_for,
    to_record,
)

__all__ = ["IngestSummary", "describe_source", "draw_shares", "run_ingest"]

log = logging.getLogger(__name__)

_OWN_COUNTS = ("published", "images", "dead_letters", "dead_letter_keys")
BACKPRESSURE_EVERY = 32  # items between looks at the scorers' lag


@dataclass(frozen=True)
class IngestSummary:
    """What one ``run_ingest`` call produced.

    ``published``/``dead_letters`` count messages; ``images``/``dead_letter_keys`` count
    distinct image ids and distinct (source, key) pairs among them. ``sources`` maps each source
    name to those four counts plus the source's own counters (``packets``, ``read``, ``cut``,
    ``cut.<reason>``, ``failed.<error_class>``, ... for a ZTF source).
    """

    published: int
    images: int
    dead_letters: int
    dead_letter_keys: int
    seconds: float
    sources: dict[str, dict[str, int]] = field(default_factory=dict)


def describe_source(name: str, counts: Mapping[str, int]) -> str:
    """One line for people, e.g. ``ztf: 27 packets, 25 alerts read, 25 published (19 distinct
    images), 0 cut, 2 failed (UnreadablePacket 2)``.

    >>> describe_source("synthetic", {"published": 3, "images": 3, "dead_letters": 0})
    'synthetic: 3 published (3 distinct images), 0 dead letters'
    """
    parts: list[str] = []
    if "packets" in counts:
        parts.append(f"{counts['packets']} packets")
    if "read" in counts:
        parts.append(f"{counts['read']} alerts read")
    for unit in ("files", "targets"):
        if unit in counts:
            parts.append(f"{counts[unit]} {unit}")
    parts.append(
        f"{counts.get('published', 0)} published ({counts.get('images', 0)} distinct images)"
    )
    if counts.get("skipped_stored"):
        parts.append(f"{counts['skipped_stored']} skipped (stored before a resume)")
    for total, prefix in (("cut", "cut."), ("failed", "failed.")):
        if total in counts:
            detail = ", ".join(
                f"{key[len(prefix) :]} {value}"
                for key, value in sorted(counts.items())
                if key.startswith(prefix)
            )
            parts.append(f"{counts[total]} {total}" + (f" ({detail})" if detail else ""))
    if counts.get("dead_letters", 0) != counts.get("failed", -1):
        parts.append(f"{counts.get('dead_letters', 0)} dead letters")
    return f"{name}: " + ", ".join(parts)


def _failure_letter(item: SourceFailure) -> DeadLetter:
    return dead_letter(
        original_topic=f"source:{item.source}",
        partition=-1,
        offset=-1,
        key=item.key.encode(),
        raw=item.raw,
        error_class=item.error_class,
        message=item.message,
        processor="ingest",
        source=item.source,
    )


class _Tally:
    """Messages and distinct ids, overall and per source (what the progress file reports)."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(_OWN_COUNTS, 0)
        self.per_source: dict[str, dict[str, int]] = {}
        # bounded: an endless run keeps constant memory (see processors.core.dedupe)
        self._images = RecentIds()
        self._letters = RecentIds()

    def _add(self, source: str, key: str) -> None:
        self.totals[key] += 1
        counts = self.per_source.setdefault(source, dict.fromkeys(_OWN_COUNTS, 0))
        counts[key] += 1

    def image(self, source: str, image_id: str) -> None:
        self._add(source, "published")
        digest = bytes.fromhex(image_id)
        if self._images.add(digest):
            self._add(source, "images")

    def letter(self, source: str, key: str) -> None:
        self._add(source, "dead_letters")
        if self._letters.add((source, key)):
            self._add(source, "dead_letter_keys")

    def sources(self, source: ImageSource) -> dict[str, dict[str, int]]:
        merged = {name: dict(counts) for name, counts in self.per_source.items()}
        for name, counters in source_counters(source).items():
            merged.setdefault(name, dict.fromkeys(_OWN_COUNTS, 0)).update(counters)
        return merged


def run_ingest(
    settings: Settings,
    bootstrap: str,
    source: ImageSource,
    *,
    limit: int | None = None,
    duration_s: float | None = None,
    stop: StopSignal | None = None,
    progress_dir: Path | None = None,
    commit_interval_s: float = 5.0,
    skip: StoredSkip | None = None,
) -> IngestSummary:
    """Publish up to ``limit`` items of ``source`` (all when None), for at most ``duration_s``
    seconds (None: no bound), and flush before returning. ``skip``: what a resumed run
    already stored, dropped unpublished (not counted against ``limit``; :mod:`.skip`).

    See the module docstring for the order of flush and commit and what is counted. Raises
    :class:`DeliveryError` (nothing more committed) when a message is not delivered.
    """
    codec = default_codec()
    stop = stop or StopSignal()
    progress = ProgressFile(progress_dir, "ingest")
    producer = make_producer(settings, bootstrap)
    follower = ControlFollower(settings, bootstrap).start()
    follower.wait_caught_up(timeout_s=30)
    backpressure = ScoreLag(settings, bootstrap)
    partitions = TOPICS["images.raw"].partitions
    errors: list[str] = []
    committers = [
        p
        for p in source_parts(source)
        if isinstance(p, BaseSource) and p.capabilities.commits_after_delivery
    ]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    def deliver() -> None:
        if producer.flush(60) != 0 or errors:
            raise DeliveryError(f"ingest: messages not delivered: {errors[:3]}")

    def deliver_and_commit() -> None:
        deliver()
        for part in committers:
            part.commit()

    for part in committers:
        part.deliver = deliver

    def shares(names: Sequence[str]) -> dict[str, float]:
        floor = settings.sources.weight_floor
        allocation = draw_shares(follower.state, names, floor, datetime.now(UTC))
        progress.set("shares", allocation)
        return allocation

    if isinstance(source, Interleaved):
        source.shares = shares
    single = None if isinstance(source, Interleaved) else source.name

    tally = _Tally()
    taken = 0
    started = last_commit = time.perf_counter()
    progress.set("done", False)
    progress.set("limit", limit)
    items: Iterator[SourceItem] = iter(source)
    if skip is not None:
        items = skip.filter(items)
        progress.set("skipped_stored", 0)
    try:
        while not stop.is_set() and (limit is None or taken < limit):
            if taken % BACKPRESSURE_EVERY == 0:  # a hot-log rotation (core/retention.py)
                hold_ingest(progress_dir, deliver_and_commit, progress, stop.is_set)
            if duration_s is not None and time.perf_counter() - started >= duration_s:
                break
            if taken % BACKPRESSURE_EVERY == 0 and backpressure.hold(stop.is_set):
                progress.set("backpressure_s", round(backpressure.waited_s, 1))
            item = next(items, None)
            if item is None:
                break
            taken += 1
            while not stop.is_set() and _held(follower.state, single):
                progress.set("paused", True)
                progress.write()
                time.sleep(0.2)
            progress.set("paused", False)
            _publish(settings, codec, producer, partitions, item, tally, on_delivery)
            producer.poll(0)
            if committers and time.perf_counter() - last_commit >= commit_interval_s:
                deliver_and_commit()
                last_commit = time.perf_counter()
            if skip is not None:
                progress.set("skipped_stored", skip.total(source))
            _write_progress(progress, tally, source)
        deliver_and_commit()
        if skip is not None:
            progress.set("skipped_stored", skip.total(source))
    finally:
        close: Callable[[], None] | None = getattr(items, "close", None)
        if close is not None:
            close()
        follower.close()
        backpressure.close()
    _write_progress(progress, tally, source, done=True)
    summary = IngestSummary(
        published=tally.totals["published"],
        images=tally.totals["images"],
        dead_letters=tally.totals["dead_letters"],
        dead_letter_keys=tally.totals["dead_letter_keys"],
        seconds=time.perf_counter() - started,
        sources=tally.sources(source),
    )
    for name, counts in sorted(summary.sources.items()):
        log.info("ingest: %s", describe_source(name, counts))
    return summary


def draw_shares(
    state: ControlState, names: Sequence[str], floor: float, now: datetime
) -> dict[str, float]:
    """Each running source's share of the draws at ``now``: paused sources get none, the others
    share by ``state.source_weights`` with ``floor`` (:func:`~processors.core.allocation.
    allocate`). Every multi-source run draws through this (via ``Interleaved.shares``)."""
    active = [n for n in names if not state.is_source_paused(n, now)]
    return allocate(state.source_weights, active, floor)


def _held(state: ControlState, source: str | None) -> bool:
    """Whether ingest must wait: the pipeline is paused, or (one source) that source is."""
    if state.pipeline_paused is not None:
        return True
    return source is not None and state.is_source_paused(source, datetime.now(UTC))


def _publish(
    settings: Settings,
    codec: Any,
    producer: Any,
    partitions: int,
    item: SourceItem,
    tally: _Tally,
    on_delivery: Callable[[Any, Any], None],
) -> None:
    """Produce one item: an ImageRecord, or a DeadLetter for a failure or an oversized cutout."""
    if isinstance(item, RawImage) and len(item.pixels) > MAX_PIXEL_BYTES:
        item = SourceFailure(
            item.source,
            image_id_for(item.source, item.pixels),
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
            partition=partition_for(item.source, TOPICS["images.dlq"].partitions),
            on_delivery=on_delivery,
        )
        DEAD_LETTERS.labels("ingest", item.error_class).inc()
        tally.letter(item.source, item.key)
        return
    record = to_record(item)
    producer.produce(
        settings.topic("images.raw"),
        key=record["image_id"].encode(),
        value=codec.encode(record, "skyloop.ImageRecord"),
        partition=partition_for(record["source"], partitions),
        on_delivery=on_delivery,
    )
    MESSAGES_OUT.labels("ingest", "images.raw").inc()
    tally.image(record["source"], record["image_id"])


def _write_progress(
    progress: ProgressFile, tally: _Tally, source: ImageSource, *, done: bool = False
) -> None:
    for key, value in tally.totals.items():
        progress.set(key, value)
    progress.set("sources", tally.sources(source))
    progress.set("done", done)
    progress.write(force=done)
