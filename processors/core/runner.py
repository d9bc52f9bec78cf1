"""The one loop every processor runs: consume a batch → process → produce → flush → commit.

A processor is mostly pure logic (a :class:`Processor`; the contract types are in
:mod:`processors.core.processor` and re-exported here); this module owns the Kafka plumbing,
the control-state following, dead letters, metrics and shutdown.

Guarantees, in order, for each batch:
1. Before the first batch, the control log is replayed to its end (``ControlFollower``); each
   batch is processed against one consistent ``ControlState`` snapshot, the newest applied.
2. ``process`` returns the output messages (and writes side effects such as ClickHouse rows
   itself, before returning).
3. Outputs are produced and the producer is flushed; any delivery error stops the processor
   *without* committing, so the batch is redelivered after restart (at-least-once).
4. Only then are the consumed offsets committed (synchronously).
When ``process`` raises :class:`StoreUnavailableError` (the sink's ClickHouse is down or refuses
the batch), the runner pauses its partitions, keeps polling so it stays in its group, and calls
``process`` again on the *same* batch with exponential back-off (jittered, capped at
``store_retry_max_s``) until it succeeds; then it resumes and produces and commits as above. So
a store outage holds one batch in memory, consumes nothing more, commits nothing it has not
stored, and ends by itself when the store returns. A stop signal during the back-off stops the
runner without committing (the batch is redelivered after restart).
A message that keeps failing (``process`` raises on it, or the worker dies while it is in
flight) is dead-lettered after ``batch.poison_attempts`` tries and skipped; the rest of its batch
is processed, in order (:mod:`processors.core.quarantine`, with its durable in-flight record).
A message over ``kafka.max_message_bytes`` is dead-lettered unread; a keyless one is processed
like any other (:mod:`processors.core.admission`).
On SIGTERM/SIGINT the loop finishes the batch in hand, commits it, and closes the clients.
A processor with ``pausable = True`` (the scorer) honours ``pipeline.paused``: between batches
the runner pauses its partitions (librdkafka drops what it prefetched and later resumes from
the first uncommitted-and-unprocessed offset), keeps polling so it stays in its group, and
resumes them on ``pipeline.resumed``. Nothing past the last finished batch is committed.
A processor's ``consumer_config(settings)`` (optional) adds librdkafka settings to its
consumer's.
A worker may join its group before it imports its processor (:func:`join_group`, passed as
``joined``): a broker answers a group's first join only after a delay (the embedded one: half
the session timeout), and the join then overlaps the imports and the model's loading.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

from processors.core import faults
from processors.core.admission import admit
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.exceptions import StoreUnavailableError
from processors.core.kafka import ControlFollower, make_consumer, make_producer
from processors.core.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    CONTROL_OFFSET,
    MESSAGES_IN,
    MESSAGES_OUT,
    PIPELINE_PAUSED,
    STORE_RETRIES,
)
from processors.core.processor import (
    DeliveryError,
    InMessage,
    OutMessage,
    Processor,
    RunContext,
    StopSignal,
)
from processors.core.progress import ProgressFile
from processors.core.quarantine import InFlight, Quarantine
from processors.core.retention import Released

__all__ = [
    "InMessage",
    "OutMessage",
    "Processor",
    "RunContext",
    "Runner",
    "StopSignal",
    "join_group",
    "produce_outputs",
]

log = logging.getLogger(__name__)


def join_group(
    settings: Settings, bootstrap: str, name: str, inputs: Sequence[str], **config: Any
) -> Consumer:
    """A consumer in group ``settings.group(name)``, subscribed to the topics ``inputs`` (base
    names) now. librdkafka sends the join from its own thread, so it proceeds while the caller
    imports and loads; the assignment is taken at the first poll. ``config``: librdkafka
    settings added to :func:`~processors.core.kafka.make_consumer`'s."""
    consumer = make_consumer(settings, bootstrap, settings.group(name), **config)
    consumer.subscribe([settings.topic(t) for t in inputs])
    return consumer


class Runner:
    """Runs one processor until stopped. See the module docstring for the guarantees."""

    def __init__(
        self,
        processor: Processor,
        settings: Settings,
        bootstrap: str,
        *,
        stop: StopSignal | None = None,
        progress_dir: Path | None = None,
        batch_size: int | None = None,
        max_wait_s: float | None = None,
        max_batch_bytes: int | None = None,
        joined: Consumer | None = None,
    ) -> None:
        """``joined``: a consumer already subscribed to the processor's inputs in its group
        (:func:`join_group`); without it the runner makes and subscribes its own."""
        self.processor = faults.wrap(processor)  # itself unless SKYLOOP_FAULTS names it
        self.settings = settings
        self.bootstrap = bootstrap
        self.stop = stop or StopSignal()
        self.batch_size = batch_size or settings.batch.size
        self.max_wait_s = (
            max_wait_s if max_wait_s is not None else settings.batch.max_wait_ms / 1000
        )
        self.max_batch_bytes = max_batch_bytes
        self.ctx = RunContext(
            settings,
            bootstrap,
            processor.name,
            default_codec(),
            ProgressFile(progress_dir, processor.name),
        )
        record = (
            progress_dir / f"{processor.name}.inflight.json"
            if progress_dir is not None
            # replicas may share a data dir; a restarted container keeps its host name
            else settings.data_dir / "inflight" / f"{processor.name}.{socket.gethostname()}.json"
        )
        self.quarantine = Quarantine(
            self.ctx, InFlight(record), settings.batch.poison_attempts, settings.batch.poison_limit
        )
        self._delivery_errors: list[str] = []  # why outputs were not delivered, if any
        self._paused = False
        self._hotlog = Released(progress_dir)  # hot-log rotations (core/retention.py)
        self._joined = joined

    def run(self) -> None:
        settings, name = self.settings, self.processor.name
        follower = ControlFollower(settings, self.bootstrap).start()
        producer = make_producer(settings, self.bootstrap)
        topics = [settings.topic(t) for t in self.processor.inputs]
        consumer = self._joined
        if consumer is None:
            # join the group first: the broker answers a first join only after a delay (the
            # embedded one: half the session timeout), which then overlaps the model's loading
            tune = getattr(self.processor, "consumer_config", None)
            tuned = tune(settings) if tune is not None else {}
            consumer = join_group(settings, self.bootstrap, name, self.processor.inputs, **tuned)
        self.ctx.extra["follower"] = follower
        self.ctx.extra["producer"] = producer
        self.ctx.extra["stopped"] = self.stop.is_set
        try:
            if not follower.wait_caught_up(timeout_s=60):
                log.warning("%s: control log not caught up after 60 s; continuing", name)
            self.processor.setup(self.ctx)
            if self.quarantine.record.died:
                log.warning("%s: died with messages in flight; those go one at a time", name)
            prefix_len = len(settings.kafka.topic_prefix)
            bases: dict[str, str] = {}  # topic name -> base name, computed once per topic
            self.ctx.progress.set("ready", True)
            self.ctx.progress.write(force=True)
            pausable = bool(getattr(self.processor, "pausable", False))
            while not self.stop.is_set():
                if self._hotlog.asked():  # between batches: everything consumed is committed
                    self._hotlog.release(consumer, topics, self.ctx.progress, self.stop.is_set)
                    continue
                if pausable and self._hold(consumer, follower.state):
                    continue
                raw = self._consume(consumer)
                batch: list[InMessage] = []
                for m in raw:
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("%s: consume error: %s", name, err)
                        continue
                    topic = m.topic() or ""
                    base = bases.get(topic)
                    if base is None:
                        base = bases[topic] = topic[prefix_len:]
                    batch.append(
                        InMessage(
                            base,
                            m.partition() or 0,
                            m.offset() or 0,
                            m.key(),
                            m.value() or b"",
                            m.timestamp()[1],
                        )
                    )
                if not batch:
                    self.ctx.progress.write()
                    continue
                self._handle(batch, producer, consumer, follower.state)
        finally:
            self.quarantine.record.abandon()  # a stop, or an error: nothing died in flight
            self.quarantine.record.close()
            try:
                self.processor.close()
            finally:
                self.ctx.progress.write(force=True)
                producer.flush(10)
                consumer.close()
                follower.close()
                # the producer has no close: it stops when the last reference goes, and a
                # Runner kept after its run (a bench, a test) must not hold it to a dead broker
                self.ctx.extra.pop("producer", None)

    def _consume(self, consumer: Any) -> list[Any]:
        """Up to ``batch_size`` messages, waiting at most ``max_wait_s`` for them to come, and,
        with ``max_batch_bytes``, no more (give or take one chunk) than that many value bytes:
        a batch of large records (images) then holds a bounded amount of memory."""
        if self.max_batch_bytes is None:
            return list(consumer.consume(self.batch_size, self.max_wait_s))
        deadline = time.monotonic() + self.max_wait_s
        messages: list[Any] = []
        size = 0
        while len(messages) < self.batch_size and size < self.max_batch_bytes:
            left = deadline - time.monotonic()
            if left <= 0 and messages:
                break
            chunk = consumer.consume(min(self.batch_size - len(messages), 1000), max(left, 0))
            if not chunk:
                break
            messages.extend(chunk)
            size += sum(len(m.value() or b"") for m in chunk)
        return messages

    @staticmethod
    def _poll_paused(consumer: Any, timeout_s: float) -> None:
        """Poll to serve the group protocol while paused. Paused partitions return nothing; a
        partition assigned during this very call might: rewind it, so nothing is skipped."""
        for message in consumer.consume(1, timeout_s):
            if message.error() is None:
                consumer.seek(
                    TopicPartition(message.topic(), message.partition(), message.offset())
                )

    def _process(
        self, batch: list[InMessage], state: ControlState, consumer: Any
    ) -> list[OutMessage]:
        """``process`` the batch, retried while the store is unavailable (module docstring)."""
        name = self.processor.name
        held = False

        def wait_polling(seconds: float) -> None:
            nonlocal held
            assignment = consumer.assignment()
            if assignment:
                consumer.pause(assignment)
            held = True
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
                self._poll_paused(consumer, min(left, 0.2))

        def log_retry(retry: RetryCallState) -> None:
            STORE_RETRIES.labels(name).inc()
            self.ctx.progress.add("store_retries")
            self.ctx.progress.set("store_unavailable", True)
            self.ctx.progress.write(force=True)
            assert retry.outcome is not None and retry.next_action is not None
            log.warning(
                "%s: store unavailable (attempt %d, next in %.1f s): %s",
                name,
                retry.attempt_number,
                retry.next_action.sleep,
                retry.outcome.exception(),
            )

        retrying = Retrying(
            retry=retry_if_exception_type(StoreUnavailableError),
            wait=wait_exponential_jitter(
                multiplier=0.1, max=self.settings.sink.store_retry_max_s, jitter=0.1
            ),
            stop=stop_when_event_set(self.stop.event),
            sleep=wait_polling,
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            outputs = retrying(self.processor.process, batch, state)
        finally:
            if held:
                assignment = consumer.assignment()
                if assignment:
                    consumer.resume(assignment)
        if held:
            log.warning("%s: store available again; batch stored", name)
            self.ctx.progress.set("store_unavailable", False)
        return outputs

    def _record_lag(self, consumer: Any, last: dict[tuple[str, int], int]) -> None:
        """Consumer lag per partition from the high watermarks the last fetches brought
        (``cached=True`` asks the broker nothing, so this never blocks the loop)."""
        for (topic, partition), offset in last.items():
            tp = TopicPartition(self.settings.topic(topic), partition)
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0:
                lag = max(0, high - offset - 1)
                CONSUMER_LAG.labels(self.processor.name, topic, str(partition)).set(lag)

    def _hold(self, consumer: Any, state: ControlState) -> bool:
        """Pause or resume the assignment by ``state.pipeline_paused``; True while paused."""
        paused = state.pipeline_paused is not None
        PIPELINE_PAUSED.set(1 if paused else 0)
        assignment = consumer.assignment()
        if paused:
            if assignment:
                consumer.pause(assignment)
            if not self._paused:
                log.warning("%s: pipeline paused (%s)", self.processor.name, state.pipeline_paused)
                self.ctx.progress.set("paused", True)
                self.ctx.progress.write(force=True)
            self._paused = True
            self._poll_paused(consumer, 0.2)
            return True
        if self._paused:
            if assignment:
                consumer.resume(assignment)
            log.warning("%s: pipeline resumed", self.processor.name)
            self.ctx.progress.set("paused", False)
            self.ctx.progress.write(force=True)
            self._paused = False
        return False

    def _handle(
        self, batch: list[InMessage], producer: Any, consumer: Any, state: ControlState
    ) -> None:
        name, settings = self.processor.name, self.settings
        started = time.perf_counter()
        for topic, count in Counter(m.topic for m in batch).items():
            MESSAGES_IN.labels(name, topic).inc(count)
        last: dict[tuple[str, int], int] = {}
        for m in batch:
            last[(m.topic, m.partition)] = max(m.offset, last.get((m.topic, m.partition), -1))
        try:
            call = lambda b: self._process(b, state, consumer)  # noqa: E731
            limit = settings.kafka.max_message_bytes
            admitted, outputs = admit(batch, limit, self.ctx)  # oversized: dead letters
            if admitted:
                outputs += self.quarantine.run(admitted, call, last)
            self._produce(outputs, producer)
        except BaseException:
            self.quarantine.record.abandon()  # a controlled exit: nothing died in flight
            log.error("%s: batch failed, not committed:\n%s", name, traceback.format_exc())
            raise
        consumer.commit(
            offsets=[TopicPartition(settings.topic(t), p, o + 1) for (t, p), o in last.items()],
            asynchronous=False,
        )
        self.quarantine.record.committed({tp: o + 1 for tp, o in last.items()})
        self.ctx.progress.add("consumed", len(batch))
        self.ctx.progress.add("produced", len(outputs))
        self.ctx.progress.set("control_offset", state.offset)
        self.ctx.progress.write()
        CONTROL_OFFSET.labels(name).set(state.offset)
        self._record_lag(consumer, last)
        BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)

    def _produce(self, outputs: list[OutMessage], producer: Any) -> None:
        produce_outputs(
            producer, self.settings, self.processor.name, outputs, self._delivery_errors
        )


def produce_outputs(
    producer: Any,
    settings: Settings,
    name: str,
    outputs: Sequence[OutMessage],
    errors: list[str],
) -> None:
    """Produce ``outputs`` in order and flush; a delivery error (collected in ``errors``)
    raises :class:`DeliveryError`, so the caller commits nothing (at-least-once)."""

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for out in outputs:
        kwargs: dict[str, Any] = {"key": out.key, "value": out.value, "on_delivery": delivered}
        if out.partition is not None:
            kwargs["partition"] = out.partition
        producer.produce(settings.topic(out.topic), **kwargs)
        producer.poll(0)
        MESSAGES_OUT.labels(name, out.topic).inc()
    if producer.flush(60) != 0 or errors:
        raise DeliveryError(f"{name}: outputs not delivered: {errors[:3]}")
