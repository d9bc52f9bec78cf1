"""The bounded hot log of the embedded broker: drain-and-rotate epochs.

The in-memory broker keeps every record it is sent and cannot delete records (no
``DeleteRecords``, no compaction); ``DeleteTopics`` frees a topic's memory at once. ClickHouse
stores every record, so the broker only has to hold what consumers have not processed yet.
When the broker has grown ``log_retention_bytes`` since the last rotation (its resident
memory, the very thing to bound), or ``log_retention_s`` have passed with records in the log,
the supervisor (:class:`HotLog`, driven by ``skyloop run``) rotates the data topics
(every topic but ``control.events``, which is the state and is kept whole):

1. **hold**: ingest flushes its producer, records the epoch as held, and produces nothing more;
2. **drain**: the supervisor waits until every stage has handled every ingested record (the
   run's stop condition, read from delivery-counted progress, never from end offsets);
3. **release**: every batch-loop consumer finishes its batch, commits, unsubscribes and polls
   until it has no partition left, then acknowledges; the controller (Faust) is stopped;
4. **rotate**: the data topics are deleted (their memory and committed offsets go with them)
   and created again, empty, with their partition counts; the controller's changelogs are
   compacted to their latest value per key (:mod:`processors.core.compaction`), so its state
   held by the broker stays bounded by its live keys;
5. **open**: the consumers subscribe again and start from offset 0 (no committed offset, so
   ``auto.offset.reset=earliest``); the controller is started again (it rewinds partitions
   without a commit to their earliest offset); ingest goes on.

Invariant: a topic is deleted only after every group and the sink are past its end: the
drain predicate holds and every consumer has acknowledged the release (a lagging group blocks
the rotation; a drain that does not finish within ``drain_timeout_s`` reopens without deleting
anything). Why not delete a topic under a live consumer: librdkafka (2.16) crashes (SIGSEGV in
its metadata cache) when the embedded broker answers a fetch for a deleted topic, and aiokafka
stays at its old position on the recreated topic (measured; ARCHITECTURE.md, "The local stack").

The channel is a JSON file ``hotlog.json`` in the run's progress folder, ``{"epoch", "phase"}``;
workers acknowledge in their own progress files (``hotlog_held``, ``hotlog_released``). On a
real Kafka nothing of this runs: retention is the broker's (``retention.bytes``/``retention.ms``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka.admin import AdminClient

from processors.core.compaction import Compacted
from processors.core.config import Settings
from processors.core.exceptions import StackError
from processors.core.kafka import ensure_topics, kafka_security
from processors.core.progress import ProgressFile, read_progress
from processors.core.records import TOPICS

__all__ = [
    "DATA_TOPICS",
    "HotLog",
    "Released",
    "broker_rss_bytes",
    "epoch_topic",
    "groups_past",
    "hold_ingest",
    "live_epoch",
    "read_signal",
    "rotate_topics",
    "write_signal",
]

log = logging.getLogger(__name__)

SIGNAL_FILE = "hotlog.json"
DATA_TOPICS = tuple(name for name in TOPICS if name != "control.events")
"""The topics a rotation deletes: every one but ``control.events`` (kept whole: the state)."""

HOLD, RELEASE, OPEN = "hold", "release", "open"


def write_signal(progress_dir: Path, epoch: int, phase: str) -> None:
    """Publish the rotation's phase (atomic: temp file + rename)."""
    progress_dir.mkdir(parents=True, exist_ok=True)
    tmp = progress_dir / f"{SIGNAL_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"epoch": epoch, "phase": phase}))
    tmp.replace(progress_dir / SIGNAL_FILE)


def read_signal(progress_dir: Path | None) -> tuple[int, str]:
    """The current (epoch, phase); (0, "open") when no rotation was ever asked for."""
    if progress_dir is None:
        return 0, OPEN
    try:
        data = json.loads((progress_dir / SIGNAL_FILE).read_text())
        return int(data["epoch"]), str(data["phase"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0, OPEN


def hold_ingest(
    progress_dir: Path | None,
    flush: Callable[[], None],
    progress: ProgressFile,
    stopped: Callable[[], bool],
    poll_s: float = 0.1,
) -> bool:
    """Ingest's side: while a rotation holds, flush (every record produced so far acknowledged,
    so the progress counts are exact), say so (``hotlog_held``) and produce nothing until the
    epoch is open again. Returns whether it held."""
    epoch, phase = read_signal(progress_dir)
    if phase == OPEN:
        return False
    flush()
    progress.set("hotlog_held", epoch)
    progress.write(force=True)
    while not stopped() and read_signal(progress_dir)[1] != OPEN:
        time.sleep(poll_s)
    return True


class Released:
    """A batch-loop consumer's side (used by :class:`processors.core.runner.Runner`).

    :meth:`asked` is cheap (reads the signal at most every ``every_s``); :meth:`release`
    unsubscribes, polls until nothing is assigned, acknowledges, waits for the epoch to open,
    and subscribes again. Call it only between batches: what was consumed is committed.
    """

    def __init__(
        self, progress_dir: Path | None, every_s: float = 0.25, settle_s: float = 2.0
    ) -> None:
        self.progress_dir = progress_dir
        self.every_s = every_s
        self.settle_s = settle_s
        self._next = 0.0
        # epochs opened before our start are not ours to release; one being held or released
        # is: a consumer restarted during a rotation's hold (a crash, kill -9) must still let
        # go of it, or the rotation waits out its whole drain timeout with ingest held
        epoch, phase = read_signal(progress_dir)
        self._done = epoch if phase == OPEN else epoch - 1

    def asked(self) -> bool:
        if self.progress_dir is None or time.monotonic() < self._next:
            return False
        self._next = time.monotonic() + self.every_s
        epoch, phase = read_signal(self.progress_dir)
        return phase == RELEASE and epoch > self._done

    def release(
        self, consumer: Any, topics: list[str], progress: ProgressFile, stopped: Callable[[], bool]
    ) -> None:
        epoch, _ = read_signal(self.progress_dir)
        consumer.unsubscribe()
        # serve the revocation, then keep polling a while: the fetchers of the revoked
        # partitions stop asynchronously, and one that fetches a deleted topic kills the
        # process (module docstring); nothing is returned while unsubscribed
        settled = time.monotonic() + self.settle_s
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (consumer.assignment() or time.monotonic() < settled):
            consumer.consume(1, 0.1)
        progress.set("hotlog_released", epoch)
        progress.write(force=True)
        while not stopped() and read_signal(self.progress_dir) == (epoch, RELEASE):
            time.sleep(0.1)
        self._done = epoch
        consumer.subscribe(topics)
        progress.set("hotlog_epoch", epoch)
        progress.write(force=True)


def live_epoch(progress_dir: Path | None) -> int:
    """The epoch of the data topics that exist now: a rotation of epoch k deletes epoch k-1's
    topics and says ``open`` for k once the new ones exist."""
    epoch, phase = read_signal(progress_dir)
    return epoch if phase == OPEN else max(epoch - 1, 0)


def epoch_topic(topic: str, epoch: int) -> str:
    """A position key's topic for ``epoch`` (offsets restart at 0 in each): ``scores``, then
    ``scores#1``, ``scores#2``, ...

    >>> epoch_topic("scores", 0), epoch_topic("scores", 3)
    ('scores', 'scores#3')
    """
    return topic if epoch == 0 else f"{topic}#{epoch}"


def broker_rss_bytes(pid: int | None) -> int:
    """Resident memory of the broker process (0 when it is gone)."""
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0
    return 0


def rotate_topics(
    settings: Settings, bootstrap: str, topics: Iterable[str] = DATA_TOPICS, timeout_s: float = 30
) -> None:
    """Delete ``topics`` and create them again, empty (every consumer of them released)."""
    admin = AdminClient({**kafka_security(settings), "bootstrap.servers": bootstrap})
    names = [settings.topic(t) for t in topics]
    for name, future in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            future.result()
        except Exception as exc:  # an already missing topic is what we want
            log.warning("hot log: deleting %s: %s", name, exc)
    deadline = time.monotonic() + timeout_s
    while set(names) & set(admin.list_topics(timeout=timeout_s).topics):
        if time.monotonic() > deadline:
            raise StackError(f"topics {names} still listed {timeout_s:.0f}s after deletion")
        time.sleep(0.05)
    ensure_topics(settings, bootstrap, timeout_s)


def groups_past(
    settings: Settings, bootstrap: str, groups: Mapping[str, Iterable[str]], reference: str
) -> bool:
    """Whether every group in ``groups`` (group suffix -> data topics it reads) has committed,
    on every partition, at least what ``reference`` (the sink's group: it reads every topic and
    has stored everything when the drain predicate holds) has committed. Committed offsets,
    never end offsets (wrong on the embedded broker for batched records). Clients that only
    ask for committed offsets are safe across a deletion (no fetch)."""
    from confluent_kafka import Consumer, TopicPartition

    def committed(group: str, topics: Iterable[str]) -> list[int]:
        client = Consumer(
            {
                **kafka_security(settings),
                "bootstrap.servers": bootstrap,
                "group.id": settings.group(group),
                "enable.auto.commit": False,
            }
        )
        try:
            parts = [
                TopicPartition(settings.topic(t), p)
                for t in topics
                for p in range(TOPICS[t].partitions)
            ]
            return [max(tp.offset, 0) for tp in client.committed(parts, timeout=10)]
        finally:
            client.close()

    for group, topics in groups.items():
        data = [t for t in topics if t in DATA_TOPICS]
        pairs = zip(committed(group, data), committed(reference, data), strict=True)
        if any(at < ref for at, ref in pairs):
            return False
    return True


@dataclass
class Rotation:
    epoch: int
    phase: str
    started: float


class HotLog:
    """The supervisor's side: decides when to rotate and walks the phases (module docstring).

    ``broker_bytes()`` is what the broker holds now (its resident memory,
    :func:`broker_rss_bytes`); ``drained()`` is the run's stop condition with ingest held;
    ``consumers`` are the progress
    names of the batch-loop workers that must acknowledge a release; ``around(rotate)`` runs
    ``rotate`` with the Faust controller down (``Supervisor.recycle``; the identity when there
    is none); ``compact`` (optional) compacts its changelogs then, after the data topics are
    rotated. :meth:`tick` never blocks for long; call it from the supervisor's loop.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        progress_dir: Path,
        broker_bytes: Callable[[], int],
        drained: Callable[[], bool],
        consumers: Iterable[str],
        around: Callable[[Callable[[], None]], object],
        out: TextIO | None = None,
        drain_timeout_s: float = 300.0,
        compact: Callable[[], Sequence[Compacted]] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.progress_dir = progress_dir
        self.broker_bytes = broker_bytes
        self.drained = drained
        self.consumers = tuple(consumers)
        self.around = around
        self.out = out
        self.drain_timeout_s = drain_timeout_s
        self.compact = compact
        self.compacted: list[Compacted] = []
        self.bound = settings.broker.log_retention_bytes
        self.max_age_s = settings.broker.log_retention_s
        self.floor = broker_bytes()
        self.epoch_started = time.monotonic()
        # a resumed run goes on from its last epoch: numbering again from 0 would reach an
        # epoch whose position keys the controller's table still holds, and resume past them
        self.epoch = read_signal(progress_dir)[0]
        self.rotations = 0
        self.aborted = 0
        self.current: Rotation | None = None

    @property
    def enabled(self) -> bool:
        return self.bound > 0 or self.max_age_s > 0

    def held_bytes(self) -> int:
        """What the broker grew since the last rotation (its resident memory over the floor)."""
        return max(0, self.broker_bytes() - self.floor)

    def due(self, now: float) -> bool:
        held = self.held_bytes()
        if self.bound > 0 and held >= self.bound:
            return True
        aged = self.max_age_s > 0 and now - self.epoch_started >= self.max_age_s
        return aged and held > 0

    def tick(self, ingest: dict[str, Any], ingest_alive: bool) -> None:
        """One step; ``ingest`` is ingest's progress, ``ingest_alive`` whether it still runs."""
        if not self.enabled:
            return
        now = time.monotonic()
        rot = self.current
        if rot is None:
            if self.due(now):
                self.epoch += 1
                self.current = Rotation(self.epoch, HOLD, now)
                write_signal(self.progress_dir, self.epoch, HOLD)
            return
        if now - rot.started > self.drain_timeout_s:
            self._say(
                f"hot log: epoch {rot.epoch} did not drain in {self.drain_timeout_s:.0f}s; kept "
                "(nothing deleted); the next rotation is due at once"
            )
            self.aborted += 1
            self._open(rot, now, keep_floor=True)
            return
        if rot.phase == HOLD:
            held = ingest.get("hotlog_held") == rot.epoch or ingest.get("done") or not ingest_alive
            if held and self.drained():
                rot.phase = RELEASE
                write_signal(self.progress_dir, rot.epoch, RELEASE)
            return
        if rot.phase == RELEASE:
            acked = all(
                read_progress(self.progress_dir, name).get("hotlog_released") == rot.epoch
                for name in self.consumers
            )
            if not acked:
                return
            before = self.broker_bytes()

            compacted: list[Compacted] = []
            compact_s = [0.0]

            def rotate() -> None:  # with the controller down; it starts in the open epoch
                rotate_topics(self.settings, self.bootstrap)
                if self.compact is not None:
                    start = time.monotonic()
                    compacted.extend(self.compact())
                    compact_s[0] = time.monotonic() - start
                self._open(rot, now)

            self.around(rotate)
            self.rotations += 1
            self.compacted = compacted
            kept = (
                f"; changelogs {sum(c.records_before for c in compacted)} -> "
                f"{sum(c.records_after for c in compacted)} records, "
                f"{sum(c.bytes_before for c in compacted) / 2**20:.1f} -> "
                f"{sum(c.bytes_after for c in compacted) / 2**20:.1f} MB in {compact_s[0]:.1f}s"
                if compacted
                else ""
            )
            self._say(
                f"hot log: rotated epoch {rot.epoch} "
                f"(broker {before / 2**20:.0f} -> {self.floor / 2**20:.0f} MB, "
                f"{time.monotonic() - rot.started:.1f}s{kept})"
            )

    def _open(self, rot: Rotation, now: float, keep_floor: bool = False) -> None:
        """Open the next epoch. ``keep_floor`` (a drain that gave up): what the broker holds
        was not deleted, so the floor stays where it was and the bound stays measured from it:
        a stage that cannot keep up (a crash-looping sink) holds ingest through rotation after
        rotation instead of letting the broker grow by one bound per timeout."""
        time.sleep(0.2)  # the allocator hands freed pages back
        if not keep_floor:
            self.floor = self.broker_bytes()
        self.epoch_started = time.monotonic()
        self.current = None
        write_signal(self.progress_dir, rot.epoch, OPEN)

    def _say(self, line: str) -> None:
        log.info(line)
        if self.out is not None:
            self.out.write(f"\n{line}\n")
