"""A worker whose processor is slow to import joins its consumer group first
(:func:`processors.core.worker.join_then_run`), on the embedded broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from processors.core.config import Settings, load_settings
from processors.core.kafka import ensure_topics
from processors.core.worker import WorkerSpec, join_then_run
from tests.core.test_runner import Echo

SPEC = WorkerSpec(
    name="echo",
    summary="copies images.raw to images.dlq (a test's worker)",
    mode="batch loop",
    consumes=("images.raw",),
    produces=("images.dlq",),
    state=(),
    folds=(),
    emits=(),
    settings_sections=("batch",),
    group="echo",
    run="tests.core.test_join_first:SPEC",  # never imported: join_then_run is called directly
)


class Made(Exception):
    """Raised by the test's processor factory once it has looked at the group."""


@pytest.fixture
def worker_settings(tmp_path: Path, unique: str, kafka_bootstrap: str) -> Settings:
    settings = load_settings(
        data_dir=tmp_path / "data",
        topic_prefix=f"t{unique}.",
        group_prefix=f"g{unique}",
        session_timeout_ms=6000,
        bootstrap_servers=kafka_bootstrap,
    )
    ensure_topics(settings, kafka_bootstrap)
    return settings


def _group_state(admin: AdminClient, group: str) -> ConsumerGroupState:
    state: ConsumerGroupState = (
        admin.describe_consumer_groups([group], request_timeout=5)[group].result().state
    )
    return state


def test_the_worker_joins_its_group_before_it_makes_its_processor(
    worker_settings: Settings, kafka_bootstrap: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    group = worker_settings.group(SPEC.group)
    assert _group_state(admin, group) == ConsumerGroupState.EMPTY  # nobody has joined yet
    seen: list[ConsumerGroupState] = []

    def make_processor() -> Echo:
        # what a slow import would overlap: the join is under way (or done) already
        deadline = time.monotonic() + 15
        state = _group_state(admin, group)
        while state == ConsumerGroupState.EMPTY and time.monotonic() < deadline:
            time.sleep(0.2)
            state = _group_state(admin, group)
        seen.append(state)
        raise Made

    with pytest.raises(Made):
        join_then_run(SPEC, make_processor, worker_settings)
    assert seen and seen[0] not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)
    # the joined consumer was closed when the factory failed: it leaves the group
    deadline = time.monotonic() + 15
    while _group_state(admin, group) != ConsumerGroupState.EMPTY:
        assert time.monotonic() < deadline, "the early consumer still holds the group"
        time.sleep(0.2)


def test_a_processor_other_than_the_declared_one_is_refused(worker_settings: Settings) -> None:
    class Renamed(Echo):
        name = "other"

    with pytest.raises(ValueError, match=r"'echo'.*'other'"):
        join_then_run(SPEC, Renamed, worker_settings)
