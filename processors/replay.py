"""``skyloop replay``: reprocess the topics under a consumer group of its own.

Two modes:

- **rescore**: ``images.raw`` (all of it, an ``observed_at`` range, some sources) through the
  scorer with a chosen model version into ``scores`` (the live detector turns served
  candidates into ``candidates``). The model is the production slot of the control log, a
  registered version (``skyloop models``) or the configured backbone; every other model slot
  is left out and pauses are ignored, so the replay scores each selected image exactly once
  with that version, against that version's calibrations in the log. Its records are role
  ``production`` when the version is the one serving live, else ``shadow`` (never served: the
  live pipeline's decisions and reports stay those of its production model).
- **rebuild**: every topic through the ClickHouse sink into the configured database; the
  tables are ReplacingMergeTrees keyed by record identity, so rows already there are replaced
  by the same rows (optionally the tables are truncated first).

Guarantees. The replay's group (``<group_prefix>.replay.<name>``) is its own: live groups'
offsets are never touched. Outputs are keyed by image id (the same keys as live) and the
sink's tables dedupe them, so a replay is idempotent: run again under the same name it resumes
from its committed offsets (a finished one does nothing); under a new name it redoes the same
rows. Offsets are committed after outputs are delivered (the runner's order). The replay
covers what the topics held when it started: a record with a broker timestamp at or after the
start is not replayed and ends its partition; a replay is done when every partition has ended
or no record from before the start arrived for ``idle_s``. It never reads the end offset (the
embedded broker's is wrong for batched records, ARCHITECTURE.md, "The local stack").
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState, ModelSlot
from processors.core.exceptions import CodecError, ConfigError, SkyloopError
from processors.core.kafka import ControlFollower
from processors.core.records import TOPICS
from processors.core.runner import InMessage, OutMessage, RunContext, Runner, StopSignal
from processors.core.warehouse_rows import SqlRows
from processors.replay_progress import ReplayProgress, ReplayReading, watching

__all__ = [
    "ReplayBoundary",
    "ReplaySelection",
    "ReplaySummary",
    "pin_model",
    "run_replay",
]

Mode = Literal["rescore", "rebuild"]


@dataclass(frozen=True)
class ReplaySelection:
    """Which images a rescore takes: ``since <= observed_at < until`` and one of ``sources``.

    >>> from datetime import UTC
    >>> sel = ReplaySelection(since=datetime(2026, 12, 1, tzinfo=UTC), sources=frozenset({"a"}))
    >>> sel.matches(datetime(2026, 12, 2, tzinfo=UTC), "a"), sel.matches(sel.since, "b")
    (True, False)
    """

    since: datetime | None = None
    until: datetime | None = None
    sources: frozenset[str] | None = None

    def matches(self, observed_at: datetime, source: str) -> bool:
        if self.sources is not None and source not in self.sources:
            return False
        if self.since is not None and observed_at < self.since:
            return False
        return self.until is None or observed_at < self.until


class ReplayBoundary:
    """Where a replay ends, from record timestamps and silence, never from end offsets.

    ``admit`` says whether a record is from before the start; one that is not ends its
    partition. ``finished`` once every expected partition ended, or nothing from before the
    start arrived for ``idle_s`` (counted from ``arm``, which allows for the group join).

    >>> b = ReplayBoundary(started_ms=1000, partitions={("t", 0), ("t", 1)}, idle_s=5.0)
    >>> b.arm(now=0.0)
    >>> b.admit("t", 0, 999, now=1.0), b.admit("t", 0, 1000, now=1.0), b.finished(now=2.0)
    (True, False, False)
    >>> b.admit("t", 1, 1500, now=3.0), b.finished(now=3.0)
    (False, True)
    """

    def __init__(self, started_ms: int, partitions: set[tuple[str, int]], idle_s: float) -> None:
        self.started_ms = started_ms
        self.open = set(partitions)
        self.idle_s = idle_s
        self._last: float | None = None
        self._lock = threading.Lock()

    def arm(self, now: float | None = None, grace_s: float = 0.0) -> None:
        """Start the idle clock ``grace_s`` from ``now`` (the group join takes a while)."""
        with self._lock:
            self._last = (time.monotonic() if now is None else now) + grace_s

    def admit(
        self, topic: str, partition: int, timestamp_ms: int, now: float | None = None
    ) -> bool:
        with self._lock:
            if timestamp_ms < self.started_ms:  # -1 (no timestamp) included
                self._last = time.monotonic() if now is None else now
                return True
            self.open.discard((topic, partition))
            return False

    def finished(self, now: float | None = None) -> bool:
        with self._lock:
            if not self.open:
                return True
            now = time.monotonic() if now is None else now
            return self._last is not None and now - self._last >= self.idle_s


def pin_model(state: ControlState, slot: ModelSlot | None) -> ControlState:
    """``state`` with ``slot`` (None: the configured backbone) as the only model, never paused."""
    return dataclasses.replace(
        state, production=slot, shadow=None, canary=None, pipeline_paused=None
    )


class _PinnedFollower:
    """The control follower as the replayed scorer sees it: every state pinned to one model."""

    def __init__(self, follower: ControlFollower, pin: Callable[[ControlState], ControlState]):
        self._follower = follower
        self._pin = pin

    @property
    def state(self) -> ControlState:
        return self._pin(self._follower.state)

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        return self._follower.wait_caught_up(timeout_s)

    def wait_until(self, predicate: Callable[[ControlState], bool], timeout_s: float) -> bool:
        return self._follower.wait_until(lambda s: predicate(self._pin(s)), timeout_s)


@dataclass
class ReplaySummary:
    mode: Mode
    group: str
    model_version: str | None
    consumed: int = 0
    replayed: int = 0
    skipped: int = 0
    outputs: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0
    """From the first record read to the last batch done: the group join and the idle wait
    that ends a replay are not in it."""
    first_at: float | None = None
    cold: int = 0
    """Images rescored from ClickHouse: stored, selected, no longer in the hot log."""

    @property
    def per_second(self) -> float:
        """Records replayed per second of ``busy_seconds``."""
        return self.replayed / self.busy_seconds if self.busy_seconds > 0 else 0.0


class _Replay:
    """A processor that admits records by boundary (and selection), then runs ``inner``."""

    pausable = False

    def __init__(
        self,
        name: str,
        inner: Any,
        boundary: ReplayBoundary,
        summary: ReplaySummary,
        selection: ReplaySelection | None,
        pin: Callable[[ControlState], ControlState] | None,
        shadow_role: bool,
    ) -> None:
        self.name = name
        self.inputs: tuple[str, ...] = tuple(inner.inputs)
        self.inner = inner
        self.boundary = boundary
        self.summary = summary
        self.selection = selection
        self.pin = pin
        self.shadow_role = shadow_role
        self.codec = default_codec()

    def setup(self, ctx: RunContext) -> None:
        if self.pin is not None:
            follower = ctx.extra["follower"]
            ctx.extra["follower"] = _PinnedFollower(follower, self.pin)
        self.inner.setup(ctx)
        # the runner subscribes after setup; the first join waits about half the session
        # timeout, a rebalance up to all of it
        self.boundary.arm(grace_s=ctx.settings.kafka.session_timeout_ms / 1000)

    def close(self) -> None:
        self.inner.close()

    def _selected(self, msg: InMessage) -> bool:
        if self.selection is None:
            return True
        try:
            record = self.codec.decode(msg.value, "skyloop.ImageRecord")
        except CodecError:
            return False  # dead-lettered when it was first consumed
        return self.selection.matches(record["observed_at"], record["source"])

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        if self.summary.first_at is None:
            self.summary.first_at = time.monotonic()
        admitted = [m for m in batch if self.boundary.admit(m.topic, m.partition, m.timestamp_ms)]
        chosen = [m for m in admitted if self._selected(m)]
        self.summary.consumed += len(batch)
        self.summary.skipped += len(batch) - len(chosen)
        if not chosen:
            return []
        outputs = self.inner.process(chosen, self.pin(state) if self.pin else state)
        self.summary.replayed += len(chosen)
        if self.shadow_role:
            outputs = [self._as_shadow(o) for o in outputs]
        self.summary.outputs += len(outputs)
        self.summary.busy_seconds = time.monotonic() - self.summary.first_at
        return list(outputs)

    def _as_shadow(self, out: OutMessage) -> OutMessage:
        if out.topic != "scores":
            return out
        record = self.codec.decode(out.value, "skyloop.ScoreRecord")
        record["role"] = "shadow"
        return dataclasses.replace(out, value=self.codec.encode(record, "skyloop.ScoreRecord"))


def _model_slot(settings: Settings, bootstrap: str, model: str | None) -> tuple[Any, bool, str]:
    """The slot to pin (None: configured backbone), whether its records are shadow, its version."""
    from processors.score.models import backbone_spec_from_settings

    follower = ControlFollower(settings, bootstrap).start()
    try:
        if not follower.wait_caught_up(timeout_s=60):
            raise SkyloopError("could not read control.events to its end within 60 s")
        state = follower.state
    finally:
        follower.close()
    live = state.production.version if state.production else None
    configured = backbone_spec_from_settings(settings.score)
    if model is None or model == live:
        slot = state.production
    elif model in state.registered:
        slot = state.registered[model]
    elif model in (configured.name, "configured"):
        slot = None
    else:
        known = sorted({*state.registered, *([live] if live else []), "configured"})
        raise ConfigError(f"--model {model!r}: unknown version; accepted: {', '.join(known)}")
    version = slot.version if slot is not None else "configured backbone"
    serving_live = slot == state.production
    return slot, not serving_live, version


def run_replay(
    settings: Settings,
    bootstrap: str,
    mode: Mode,
    *,
    name: str,
    selection: ReplaySelection | None = None,
    model: str | None = None,
    idle_s: float = 10.0,
    truncate: bool = False,
    batch_size: int | None = None,
    out: TextIO = sys.stderr,
    cold: SqlRows | None = None,
) -> ReplaySummary:
    """Replay until the boundary (module docstring); progress on ``out``
    (:mod:`processors.replay_progress`). A
    rescore with ``cold`` (ClickHouse's rows) then scores the selected images stored before the
    start that the hot log no longer held (:mod:`processors.replay_cold`)."""
    started = time.monotonic()
    processor_name = f"replay.{name}"
    if mode == "rescore":
        from processors.score.processor import ScoreProcessor

        slot, shadow, version = _model_slot(settings, bootstrap, model)
        inner: Any = ScoreProcessor()
        # decisions pinned to one state: nothing to wait for from a live controller
        settings = settings.model_copy(
            update={"score": settings.score.model_copy(update={"max_control_lag": 0})}
        )

        def pin(state: ControlState) -> ControlState:
            return pin_model(state, slot)

        topics: tuple[str, ...] = ("images.raw",)
    else:
        from processors.sink.processor import SinkProcessor

        if truncate:
            _truncate(settings)
        inner, shadow, version = SinkProcessor(serve_queries=False), False, None
        pin = None  # type: ignore[assignment]
        topics = tuple(inner.inputs)
        selection = None
    summary = ReplaySummary(mode, settings.group(processor_name), version)
    boundary = ReplayBoundary(
        int(time.time() * 1000),
        {(t, p) for t in topics for p in range(TOPICS[t].partitions)},
        idle_s,
    )
    replay = _Replay(processor_name, inner, boundary, summary, selection, pin, shadow)
    stop = StopSignal()
    runner = Runner(
        replay,
        settings,
        bootstrap,
        stop=stop,
        batch_size=batch_size or (2000 if mode == "rebuild" else None),
        max_wait_s=0.5,
    )
    view = ReplayProgress(out, mode)
    total = _hot_estimate(settings, bootstrap, summary.group, topics)

    def hot() -> ReplayReading:
        if boundary.finished():
            stop.event.set()
        return ReplayReading(
            "hot log", summary.consumed, summary.replayed, summary.skipped, total, True
        )

    try:
        with watching(view, hot, started):
            runner.run()
        if mode == "rescore" and cold is not None:
            summary.cold = _cold_pass(
                settings, bootstrap, replay, boundary, selection, cold, view, started
            )
    finally:
        view.close()
    summary.seconds = time.monotonic() - started
    return summary


def _hot_estimate(
    settings: Settings, bootstrap: str, group: str, topics: Sequence[str]
) -> int | None:
    """About how many records the replay's group has left on ``topics`` (watermarks against its
    committed offsets); None when the broker does not tell."""
    from confluent_kafka import KafkaException

    from processors.core.group_lag import GroupProbe

    total = 0
    for base in topics:
        probe = GroupProbe(settings, bootstrap, group, base, timeout_s=5.0)
        try:
            total += sum(p.high - max(p.committed, p.low) for p in probe.positions())
        except KafkaException:
            return None
        finally:
            probe.close()
    return total


def _cold_pass(
    settings: Settings,
    bootstrap: str,
    replay: _Replay,
    boundary: ReplayBoundary,
    selection: ReplaySelection | None,
    sql: SqlRows,
    view: ReplayProgress,
    started: float,
) -> int:
    import json

    from processors.replay_cold import ColdPass, cold_ids, hot_ids, marker_path, selection_sql

    marker = marker_path(settings, replay.summary.group)
    if marker.is_file():
        view.note("replay rescore: its ClickHouse part was done by an earlier run of this name")
        return 0
    chosen = selection or ReplaySelection()
    before = datetime.fromtimestamp(boundary.started_ms / 1000, tz=UTC)
    where = selection_sql(before, chosen.since, chosen.until, chosen.sources)
    ids = cold_ids(sql, where, hot_ids(settings, bootstrap, boundary.started_ms))
    view.note(f"replay rescore: {len(ids)} stored images older than the hot log")
    summary = replay.summary
    consumed, replayed_before, skipped = summary.consumed, summary.replayed, summary.skipped

    def reading() -> ReplayReading:
        return ReplayReading(
            "ClickHouse",
            summary.consumed - consumed,
            summary.replayed - replayed_before,
            summary.skipped - skipped,
            len(ids),
        )

    with watching(view, reading, started):
        ColdPass(settings, bootstrap, replay.name, replay).run(sql, ids)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"images": len(ids), "before": before.isoformat()}) + "\n")
    return replay.summary.replayed - replayed_before


def _truncate(settings: Settings) -> None:
    from processors.core.clickhouse import client_options, connect
    from processors.sink.migrations import apply_migrations

    client = connect(settings.resolved_clickhouse_dsn, **client_options(settings))
    try:
        apply_migrations(client)
        for table in ("images", "scores", "candidates", "control_events", "dead_letters"):
            client.command(f"TRUNCATE TABLE IF EXISTS {table}")
    finally:
        client.close()
