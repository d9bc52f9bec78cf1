"""The shared runner loop against the embedded broker: commit only after delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from confluent_kafka import TopicPartition

from processors.core.config import Settings
from processors.core.control import ControlState
from processors.core.kafka import ensure_topics, make_consumer, make_producer
from processors.core.metrics import MESSAGES_IN, REGISTRY
from processors.core.runner import InMessage, OutMessage, RunContext, Runner, StopSignal


class Echo:
    """Copies every images.raw message to images.dlq; optionally fails on a given batch."""

    name = "echo"
    inputs = ("images.raw",)

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[bytes] = []

    def setup(self, ctx: RunContext) -> None:
        pass

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        self.seen.extend(m.value for m in batch)
        if self.fail:
            raise RuntimeError("processing failed")
        return [OutMessage("images.dlq", m.key or b"", m.value) for m in batch]


def run_until(runner: Runner, predicate: object, timeout_s: float = 30) -> list[BaseException]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not predicate() and thread.is_alive() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)
    runner.stop.event.set()
    thread.join(30)
    assert not thread.is_alive()
    return errors


def committed(settings: Settings, bootstrap: str) -> int:
    consumer = make_consumer(settings, bootstrap, settings.group("echo"))
    try:
        parts = consumer.committed(
            [TopicPartition(settings.topic("images.raw"), p) for p in range(4)], timeout=10
        )
        return sum(max(tp.offset, 0) for tp in parts)
    finally:
        consumer.close()


@pytest.fixture
def produced(settings: Settings, kafka_bootstrap: str) -> list[bytes]:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    values = [f"message-{i}".encode() for i in range(10)]
    for value in values:
        producer.produce(settings.topic("images.raw"), key=value, value=value, partition=0)
    assert producer.flush(10) == 0
    return values


def test_outputs_are_delivered_and_offsets_committed(
    settings: Settings, kafka_bootstrap: str, produced: list[bytes]
) -> None:
    echo = Echo()
    runner = Runner(
        echo, settings, kafka_bootstrap, stop=StopSignal(), batch_size=4, max_wait_s=0.1
    )
    before = MESSAGES_IN.labels("echo", "images.raw")._value.get()
    assert not run_until(runner, lambda: len(echo.seen) >= 10)
    assert sorted(echo.seen) == sorted(produced)
    assert committed(settings, kafka_bootstrap) == 10
    assert MESSAGES_IN.labels("echo", "images.raw")._value.get() - before == 10
    assert REGISTRY.get_sample_value("skyloop_batch_duration_seconds_count", {"processor": "echo"})
    # every message consumed: no partition of images.raw is behind (Tansu may overstate the
    # high watermark of a batched partition, never understate it)
    lags = [
        s.value
        for m in REGISTRY.collect()
        if m.name == "skyloop_consumer_lag_messages"
        for s in m.samples
        if s.labels["processor"] == "echo"
    ]
    assert lags and all(lag >= 0 for lag in lags)
    assert REGISTRY.get_sample_value("process_resident_memory_bytes", {}) > 0
    # a Runner kept after its run holds no producer: librdkafka's threads stop with the last
    # reference, and one kept alive reconnects to a stopped broker forever (log spam)
    assert "producer" not in runner.ctx.extra

    # the outputs are on the output topic
    consumer = make_consumer(settings, kafka_bootstrap, settings.group("reader"))
    consumer.subscribe([settings.topic("images.dlq")])
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got) < 10 and time.monotonic() < deadline:
        got.extend(m.value() for m in consumer.consume(10, 0.5) if not m.error())
    consumer.close()
    assert sorted(got) == sorted(produced)


def test_a_failed_batch_is_not_committed_and_is_redelivered(
    settings: Settings, kafka_bootstrap: str, produced: list[bytes]
) -> None:
    # a processor failing on every message is not quarantining poison: past poison_limit
    # messages in a row it stops, uncommitted (tests/core/test_quarantine.py for poison)
    failing = Echo(fail=True)
    strict = settings.model_copy(
        update={"batch": settings.batch.model_copy(update={"poison_limit": 1})}
    )
    runner = Runner(
        failing, strict, kafka_bootstrap, stop=StopSignal(), batch_size=4, max_wait_s=0.1
    )
    errors = run_until(runner, lambda: False)
    assert errors and "processing failed" in str(errors[0].__cause__)
    assert committed(settings, kafka_bootstrap) == 0

    healthy = Echo()
    runner = Runner(
        healthy, settings, kafka_bootstrap, stop=StopSignal(), batch_size=4, max_wait_s=0.1
    )
    assert not run_until(runner, lambda: len(healthy.seen) >= 10)
    assert sorted(healthy.seen) == sorted(produced)  # nothing lost
    assert committed(settings, kafka_bootstrap) == 10


class Sizes:
    """Records the size of every batch it is handed; outputs nothing."""

    name = "sizes"
    inputs = ("images.raw",)

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (messages, value bytes)

    def setup(self, ctx: RunContext) -> None:
        pass

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        self.batches.append((len(batch), sum(len(m.value) for m in batch)))
        return []


def test_a_batch_holds_at_most_max_batch_bytes_give_or_take_one_chunk(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    value = bytes(10_000)
    for i in range(3000):  # 30 MB
        producer.produce(settings.topic("images.raw"), key=b"%d" % i, value=value, partition=i % 4)
    assert producer.flush(30) == 0
    sizes = Sizes()
    runner = Runner(
        sizes,
        settings,
        kafka_bootstrap,
        stop=StopSignal(),
        batch_size=3000,
        max_wait_s=2.0,
        max_batch_bytes=5_000_000,
    )
    assert not run_until(runner, lambda: sum(n for n, _ in sizes.batches) >= 3000, 60)
    assert sum(n for n, _ in sizes.batches) == 3000
    # the count bound alone would take all 30 MB at once; a chunk is at most 1000 messages
    assert len(sizes.batches) >= 2
    assert max(size for _, size in sizes.batches) < 5_000_000 + 1000 * len(value)
