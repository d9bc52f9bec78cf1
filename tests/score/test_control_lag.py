"""The scorer's control-lag bound against the embedded broker: waits while the controller's
group is too far behind on ``scores``, returns when it reads on, never waits for a controller
that has never committed, and scores past a stalled one until it moves again."""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, TopicPartition

from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_producer
from processors.core.records import CONTROLLER_GROUP, TOPICS
from processors.score.control_lag import ControlLag


def _with_lag(settings: Settings, bound: int, stall_s: float) -> Settings:
    score = settings.score.model_copy(update={"max_control_lag": bound, "control_stall_s": stall_s})
    return settings.model_copy(update={"score": score})


def _produce_scores(settings: Settings, bootstrap: str, per_partition: int) -> None:
    """One record per produce request: the embedded broker reports a partition's high
    watermark as its last batch's first offset + 1 (a batch of n records undercounts n - 1)."""
    producer = make_producer(settings, bootstrap)
    for partition in range(TOPICS["scores"].partitions):
        for i in range(per_partition):
            producer.produce(settings.topic("scores"), b"x", f"k{i}".encode(), partition)
            producer.flush(10)


class _Controller:
    """Commits offsets on ``scores`` as the controller's group would."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.topic = settings.topic("scores")
        self.client = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": settings.group(CONTROLLER_GROUP),
                "enable.auto.commit": False,
            }
        )

    def read_to(self, offset: int) -> None:
        parts = [TopicPartition(self.topic, p, offset) for p in range(TOPICS["scores"].partitions)]
        self.client.commit(offsets=parts, asynchronous=False)

    def close(self) -> None:
        self.client.close()


def test_no_controller_yet_and_a_disabled_bound_never_wait(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    _produce_scores(settings, kafka_bootstrap, 100)
    lag = ControlLag(_with_lag(settings, 16, 5.0), kafka_bootstrap)
    off = ControlLag(_with_lag(settings, 0, 5.0), kafka_bootstrap)
    try:
        assert lag.measure() is None  # the controller's group never committed
        assert lag.hold(lambda: False) < 1.0
        assert off.hold(lambda: False) == 0.0
    finally:
        lag.close()
        off.close()


def test_waits_while_the_controller_is_behind_and_goes_on_when_it_reads(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    partitions = TOPICS["scores"].partitions
    _produce_scores(settings, kafka_bootstrap, 50)
    controller = _Controller(settings, kafka_bootstrap)
    lag = ControlLag(_with_lag(settings, 40, 30.0), kafka_bootstrap)
    try:
        controller.read_to(10)
        assert lag.measure() == (40 * partitions, 10 * partitions)
        catch_up = threading.Timer(1.5, controller.read_to, args=(45,))
        catch_up.start()
        waited = lag.hold(lambda: False)
        catch_up.join()
        assert 1.2 <= waited < 10  # held until the controller read on, not until a timeout
        measured = lag.measure()
        assert measured is not None and measured[0] == 5 * partitions
        # within the bound with room for 20 more: no wait, and no question to the broker
        asked = lag.measured
        assert lag.hold(lambda: False, produced=19) == 0.0 and lag.measured == asked
        assert lag.hold(lambda: False, produced=1) < 1.0 and lag.measured == asked + 1
        stop = threading.Event()
        controller.read_to(0)
        threading.Timer(0.5, stop.set).start()
        assert 0.4 < lag.hold(stop.is_set, produced=100) < 5  # a stop ends the wait
    finally:
        lag.close()
        controller.close()


def test_a_stalled_controller_is_scored_past_until_it_moves_again(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    _produce_scores(settings, kafka_bootstrap, 50)
    controller = _Controller(settings, kafka_bootstrap)
    lag = ControlLag(_with_lag(settings, 8, 1.0), kafka_bootstrap)
    try:
        controller.read_to(5)
        started = time.monotonic()
        waited = lag.hold(lambda: False)
        assert 0.9 <= waited < 5 and lag.stalled == 1
        assert lag.hold(lambda: False, produced=32) < 0.5  # stalled: no more waiting
        assert time.monotonic() - started < 8
        controller.read_to(20)  # it moves again, still too far behind: waited for again
        assert lag.hold(lambda: False, produced=32) >= 0.9 and lag.stalled == 2
    finally:
        lag.close()
        controller.close()
