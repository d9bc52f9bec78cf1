"""Quarantine of a message that keeps failing, against the embedded broker: dead-lettered after
k attempts (an exception, or the worker dying while it is in flight), the rest processed in
order, offsets committed past it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.exceptions import ConfigError
from processors.core.faults import ENV, parse
from processors.core.kafka import ensure_topics, make_consumer, make_producer
from processors.core.quarantine import InFlight
from processors.core.runner import Runner, StopSignal
from processors.core.supervisor import RESTART_EXIT
from tests.core.poison_child import Copy
from tests.core.test_runner import run_until

REPO = Path(__file__).resolve().parents[2]
VALUES = [f"message-{i}".encode() for i in range(10)]


@pytest.fixture
def produced(settings: Settings, kafka_bootstrap: str) -> list[bytes]:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    for value in VALUES:
        producer.produce(settings.topic("images.raw"), key=value, value=value, partition=0)
    assert producer.flush(10) == 0
    return VALUES


def read(settings: Settings, bootstrap: str, topic: str, n: int, wait_s: float = 15) -> list:
    consumer = make_consumer(settings, bootstrap, settings.group(f"reader-{topic}"))
    consumer.subscribe([settings.topic(topic)])
    got: list = []
    deadline = time.monotonic() + wait_s
    while len(got) < n and time.monotonic() < deadline:
        got.extend(m for m in consumer.consume(10, 0.5) if not m.error())
    consumer.close()
    return got


def committed(settings: Settings, bootstrap: str) -> int:
    consumer = make_consumer(settings, bootstrap, settings.group("copy"))
    try:
        (tp,) = consumer.committed([TopicPartition(settings.topic("images.raw"), 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


def test_a_message_that_raises_is_dead_lettered_after_k_attempts_the_rest_processed(
    settings: Settings,
    kafka_bootstrap: str,
    produced: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "copy:raise:key=message-3")
    copy = Copy()
    runner = Runner(
        copy, settings, kafka_bootstrap, stop=StopSignal(), batch_size=4, max_wait_s=0.1
    )
    assert not run_until(runner, lambda: committed(settings, kafka_bootstrap) >= 10, 60)
    assert committed(settings, kafka_bootstrap) == 10
    out = [m.value() for m in read(settings, kafka_bootstrap, "candidates", 9)]
    good = [v for v in produced if v != b"message-3"]
    assert out == good  # each once, in order: the batch was bisected, not replayed whole
    (dlq,) = read(settings, kafka_bootstrap, "images.dlq", 1)
    letter = default_codec().decode(dlq.value(), "skyloop.DeadLetter")
    assert (letter["original_topic"], letter["partition"], letter["offset"]) == ("images.raw", 0, 3)
    assert letter["raw"] == b"message-3" and letter["processor"] == "copy"
    assert letter["error_class"] == "InjectedFault"
    assert "after 3 failed attempts" in letter["message"]
    assert "innermost frames" in letter["message"] and "faults.py" in letter["message"]
    assert runner.ctx.progress.counts["quarantined"] == 1


def test_a_processor_failing_on_every_message_stops_instead(
    settings: Settings,
    kafka_bootstrap: str,
    produced: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "copy:raise:key=message-")
    strict = settings.model_copy(
        update={"batch": settings.batch.model_copy(update={"poison_limit": 2})}
    )
    runner = Runner(
        Copy(), strict, kafka_bootstrap, stop=StopSignal(), batch_size=4, max_wait_s=0.1
    )
    errors = run_until(runner, lambda: False, 30)
    assert errors and "the processor is failing" in str(errors[0])
    assert committed(settings, kafka_bootstrap) < 0  # nothing committed
    # a controlled stop is no death: the in-flight record holds nothing in flight
    path = settings.data_dir / "inflight" / f"copy.{socket.gethostname()}.json"
    assert path.is_file()
    record = InFlight(path)
    assert not record.died


def test_a_worker_dying_on_a_message_every_time_dead_letters_it_after_k_deaths(
    settings: Settings, kafka_bootstrap: str, produced: list[bytes], tmp_path: Path
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKYLOOP_")},
        "PYTHONPATH": str(REPO),
        "SKYLOOP_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "SKYLOOP_GROUP_PREFIX": settings.kafka.group_prefix,
        "SKYLOOP_DATA_DIR": str(settings.data_dir),
        # a dead worker's membership lapses after the session timeout, which the next one's
        # join waits out: 3 s rather than the default 6 s keeps four deaths quick
        "SKYLOOP_SESSION_TIMEOUT_MS": "3000",
        ENV: "copy:exit:images.raw/0/5",
    }
    progress = tmp_path / "progress"
    codes = []
    for _ in range(6):  # a supervisor: restart the worker while it dies
        child = subprocess.run(
            [sys.executable, "-m", "tests.core.poison_child", kafka_bootstrap, str(progress), "9"],
            env={**env, RESTART_EXIT: str(codes[-1])} if codes else env,
            cwd=REPO,
            timeout=120,
            capture_output=True,
        )
        codes.append(child.returncode)
        if child.returncode == 0:
            break
    assert codes == [70, 70, 70, 0], child.stderr.decode()[-3000:]
    assert committed(settings, kafka_bootstrap) == 10
    out = [m.value() for m in read(settings, kafka_bootstrap, "candidates", 9)]
    good = [v for v in produced if v != b"message-5"]
    assert sorted(set(out)) == sorted(good)  # all but the poison message, some redelivered
    assert list(dict.fromkeys(out)) == good  # in order
    (dlq,) = read(settings, kafka_bootstrap, "images.dlq", 1)
    letter = default_codec().decode(dlq.value(), "skyloop.DeadLetter")
    assert (letter["offset"], letter["raw"]) == (5, b"message-5")
    assert letter["error_class"] == "WorkerDiedError"
    assert "died 3 times" in letter["message"] and "last deaths: 70, 70, 70" in letter["message"]
    # the record is pruned once the commit passed it
    record = InFlight(progress / "copy.inflight.json")
    assert not record.died and not record.suspect and not record.deaths


def test_fault_specs_parse_and_refuse_nonsense() -> None:
    (fault,) = parse("score:kill:images.raw/2/17")
    assert (fault.topic, fault.partition, fault.offset) == ("images.raw", 2, 17)
    assert fault.matches("images.raw", 2, 17, None) and not fault.matches("images.raw", 2, 18, None)
    with pytest.raises(ConfigError, match="PROCESSOR:ACTION:TARGET"):
        parse("score:explode:images.raw/0/1")
    with pytest.raises(ConfigError, match="TOPIC/PARTITION/OFFSET"):
        parse("score:raise:images.raw/x")


def test_the_in_flight_record_counts_deaths_and_forgets_what_was_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processors.core.processor import InMessage

    batch = [InMessage("images.raw", 1, o, b"k", b"v") for o in range(10, 14)]
    path = tmp_path / "w.inflight.json"
    first = InFlight(path)
    assert not first.died and not first.is_suspect(batch)
    first.begin_batch(batch)  # ... and the process dies here
    monkeypatch.setenv(RESTART_EXIT, "-9")
    second = InFlight(path)
    assert second.died and second.exits == ["-9"]
    assert [second.deaths_of(m) for m in batch] == [1, 1, 1, 1] and second.is_suspect(batch)
    second.begin_batch(batch)
    second.in_flight(batch[2:3])  # alone now, and dies again
    third = InFlight(path)
    assert [third.deaths_of(m) for m in batch] == [1, 1, 2, 1]
    third.abandon()  # a controlled exit is no death
    assert [InFlight(path).deaths_of(m) for m in batch] == [1, 1, 2, 1]
    third.committed({("images.raw", 1): 14})
    fourth = InFlight(path)
    assert not fourth.died and not fourth.suspect and not fourth.deaths
