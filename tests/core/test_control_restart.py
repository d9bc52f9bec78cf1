"""A control follower asked for the log's end rides out a broker restart.

Just after a broker comes back the client's metadata no longer knows the control partition:
``get_watermark_offsets`` fails with "unknown partition" at once. A scorer asking then used to
crash (and reload its model: a kill-broker recovery of 16 s instead of 4). ``log_end`` retries
within the caller's time budget; a broker that stays away still fails, after that budget.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from processors.core.config import Settings
from processors.core.control import new_event
from processors.core.kafka import (
    ControlFollower,
    ensure_topics,
    make_producer,
    produce_control_event,
)
from processors.core.stack import EmbeddedBroker


def _events(settings: Settings, bootstrap: str, n: int) -> None:
    """``n`` control events, each flushed alone as the controller does (a batched produce
    leaves the embedded broker's high watermark short: ARCHITECTURE.md, "The local stack")."""
    producer = make_producer(settings, bootstrap)
    for i in range(n):
        event = new_event("pipeline.paused", "pipeline", "op", {"reason": f"r{i}"})
        produce_control_event(producer, settings, event)
        producer.flush(10)


def _kill(broker: EmbeddedBroker) -> None:
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while broker.alive:
        time.sleep(0.05)


@pytest.mark.skipif(
    bool(os.environ.get("SKYLOOP_KAFKA_BOOTSTRAP")), reason="restarts the embedded broker"
)
def test_the_log_end_is_found_again_after_the_broker_restarts(
    settings: Settings, tmp_path: Path
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "b.log", storage_dir=tmp_path / "store") as broker:
        ensure_topics(settings, broker.bootstrap_servers)
        _events(settings, broker.bootstrap_servers, 3)
        follower = ControlFollower(settings, broker.bootstrap_servers).start()
        try:
            assert follower.wait_caught_up(timeout_s=20)
            _kill(broker)
            broker.restart()
            assert follower.wait_caught_up(timeout_s=30)
            _events(settings, broker.bootstrap_servers, 2)
            assert follower.wait_caught_up(timeout_s=30)
            assert follower.state.events_applied == 5
        finally:
            follower.close()


@pytest.mark.skipif(
    bool(os.environ.get("SKYLOOP_KAFKA_BOOTSTRAP")), reason="stops the embedded broker"
)
def test_a_broker_that_stays_away_fails_the_ask_after_its_budget(
    settings: Settings, tmp_path: Path
) -> None:
    with EmbeddedBroker(log_path=tmp_path / "b.log") as broker:
        ensure_topics(settings, broker.bootstrap_servers)
        follower = ControlFollower(settings, broker.bootstrap_servers).start()
        try:
            assert follower.wait_caught_up(timeout_s=20)
            _kill(broker)
            started = time.monotonic()
            with pytest.raises(KafkaException):
                follower.log_end(timeout_s=2)
            assert 2 <= time.monotonic() - started < 15
        finally:
            follower.close()
