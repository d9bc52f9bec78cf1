"""The bounded hot log on the embedded broker: a rotation deletes the data topics only after
every group has handled them, and nothing is lost or handled twice across it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from processors.core.compaction import Compacted, client_config, compact_in_child, read_changelog
from processors.core.config import Settings, load_settings
from processors.core.control import ControlState
from processors.core.kafka import ensure_topics, make_consumer, make_producer
from processors.core.records import TOPICS
from processors.core.retention import HotLog, broker_rss_bytes, read_signal, write_signal
from processors.core.runner import InMessage, OutMessage, RunContext, Runner
from processors.core.stack import EmbeddedBroker

RECORD = 200_000  # bytes per record: enough for the broker's memory to show it


class Counting:
    """Records every images.raw value it handles; ``gate`` blocks it (a lagging group)."""

    inputs = ("images.raw",)

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()

    def setup(self, ctx: RunContext) -> None:
        pass

    def close(self) -> None:
        pass

    def process(self, batch: Sequence[InMessage], state: ControlState) -> list[OutMessage]:
        while not self.gate.wait(0.1):
            pass
        self.seen.extend(m.value[:16] for m in batch)
        return []


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


@pytest.fixture
def hot_settings(tmp_path: Path, unique: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        topic_prefix=f"t{unique}.",
        group_prefix=f"g{unique}",
        session_timeout_ms=6000,
        log_retention_bytes=1,  # rotate as soon as anything is held
        log_retention_s=0,
    )


def _produce(settings: Settings, bootstrap: str, start: int, n: int) -> list[bytes]:
    producer = make_producer(settings, bootstrap)
    keys = [f"record-{i:08d}".encode() for i in range(start, start + n)]
    for i, key in enumerate(keys):
        value = key + bytes(RECORD - len(key))
        producer.produce(settings.topic("images.raw"), key=key, value=value, partition=i % 4)
    assert producer.flush(30) == 0
    return [k + bytes(16 - len(k)) for k in keys]


def _wait(predicate: object, hotlog: HotLog | None = None, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if hotlog is not None:
            hotlog.tick({"done": True}, ingest_alive=False)
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _start(runner: Runner) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def test_rotation_waits_for_every_group_and_loses_nothing(
    broker: EmbeddedBroker, hot_settings: Settings, tmp_path: Path
) -> None:
    settings, bootstrap = hot_settings, broker.bootstrap_servers
    progress = tmp_path / "progress"
    ensure_topics(settings, bootstrap)
    fast, slow = Counting("fast"), Counting("slow")
    slow.gate.clear()  # the slow group lags: it holds its first batch
    runners = [Runner(p, settings, bootstrap, progress_dir=progress) for p in (fast, slow)]
    threads = [_start(r) for r in runners]
    first = _produce(settings, bootstrap, 0, 60)
    # a table's changelog: 5 keys written 3 times each; compacted while its writer is down
    changelog = f"{settings.group('stats')}-table-changelog"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(changelog, 4, 1)])[changelog].result()
    writer = make_producer(settings, bootstrap, **{"linger.ms": 0})
    for round_ in range(3):
        for key in range(5):
            writer.produce(changelog, key=b"k%d" % key, value=b"v%d" % round_, partition=key % 4)
            assert writer.flush(10) == 0  # one record per batch, as Faust writes them
    down: list[bool] = [False]
    compacted_down: list[bool] = []

    def around(rotate: Callable[[], None]) -> None:
        down[0] = True  # the controller is stopped around the rotation
        rotate()
        down[0] = False

    def compact_changelog() -> list[Compacted]:
        compacted_down.append(down[0])
        return compact_in_child(settings, bootstrap, [changelog])

    hotlog = HotLog(
        settings,
        bootstrap,
        progress,
        lambda: broker_rss_bytes(broker.pid),
        lambda: len(fast.seen) >= len(first) and len(slow.seen) >= len(first),
        ["fast", "slow"],
        around,
        compact=compact_changelog,
    )
    hotlog.floor = 0  # the whole broker counts as held: a rotation is due at once
    assert _wait(lambda: len(fast.seen) == len(first))
    held = broker_rss_bytes(broker.pid)
    # the lagging group blocks the rotation: nothing deleted, the records still there
    assert not _wait(lambda: hotlog.rotations > 0, hotlog, timeout_s=5)
    assert read_signal(progress) == (1, "hold")
    assert settings.topic("images.raw") in admin.list_topics(timeout=10).topics
    slow.gate.set()
    assert _wait(lambda: hotlog.rotations == 1, hotlog), "the rotation never happened"
    assert read_signal(progress) == (1, "open")
    assert sorted(fast.seen) == sorted(first) and sorted(slow.seen) == sorted(first)
    assert hotlog.floor < held, "deleting the topics gave no memory back"
    assert compacted_down == [True], "the changelog was not compacted, or not while down"
    kept = read_changelog(client_config(settings, bootstrap), changelog)
    assert sorted(r[:2] for rs in kept.values() for r in rs) == [
        (b"k%d" % key, b"v2") for key in range(5)
    ]
    assert [(c.records_before, c.records_after) for c in hotlog.compacted] == [(15, 5)]
    # the next epoch: consumers start again from offset 0 of the new topics, each record once
    second = _produce(settings, bootstrap, 60, 30)
    both = sorted(first + second)
    assert _wait(lambda: len(fast.seen) >= len(both) and len(slow.seen) >= len(both))
    time.sleep(1)
    assert sorted(fast.seen) == both and sorted(slow.seen) == both
    for runner in runners:
        runner.stop.event.set()
    for thread in threads:
        thread.join(30)
    probe = make_consumer(settings, bootstrap, settings.group("slow"))
    parts = [TopicPartition(settings.topic("images.raw"), p) for p in range(4)]
    assert sum(tp.offset for tp in probe.committed(parts, timeout=10)) == len(second)
    probe.close()


def test_unacknowledged_release_deletes_nothing(
    broker: EmbeddedBroker, hot_settings: Settings, tmp_path: Path
) -> None:
    """A group that never lets go (here: one that is not running) keeps the epoch: the
    rotation gives up after its timeout and reopens, and every record is still readable."""
    settings, bootstrap = hot_settings, broker.bootstrap_servers
    progress = tmp_path / "progress"
    ensure_topics(settings, bootstrap)
    first = _produce(settings, bootstrap, 0, 20)
    hotlog = HotLog(
        settings,
        bootstrap,
        progress,
        lambda: broker_rss_bytes(broker.pid),
        lambda: True,
        ["absent"],
        lambda rotate: rotate(),
        drain_timeout_s=2,
    )
    hotlog.floor = 0
    assert _wait(lambda: hotlog.aborted == 1, hotlog, timeout_s=20)
    assert hotlog.rotations == 0 and read_signal(progress) == (1, "open")
    # nothing was deleted, so the bound is still measured from the old floor: due at once
    assert hotlog.floor == 0 and hotlog.due(time.monotonic())
    reader = Counting("reader")
    runner = Runner(reader, settings, bootstrap, progress_dir=progress)
    thread = _start(runner)
    assert _wait(lambda: len(reader.seen) >= len(first))
    runner.stop.event.set()
    thread.join(30)
    assert sorted(reader.seen) == sorted(first)


def test_real_kafka_topics_get_the_bounds_as_broker_retention(
    kafka_bootstrap: str, hot_settings: Settings
) -> None:
    """On a real Kafka the broker retains: ``skyloop init`` creates the data topics with the
    hot log's bounds and ``control.events`` unlimited (the embedded broker stores them too)."""
    from confluent_kafka.admin import ConfigResource

    settings = hot_settings.model_copy(
        update={"broker": hot_settings.broker.model_copy(update={"log_retention_bytes": 2**30})}
    )
    ensure_topics(settings, kafka_bootstrap, configs=True)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wanted = {
        name: ConfigResource("topic", settings.topic(name)) for name in ("scores", "control.events")
    }
    found = {
        name: {k: c.value for k, c in admin.describe_configs([res])[res].result().items()}
        for name, res in wanted.items()
    }
    partitions = sum(t.partitions for name, t in TOPICS.items() if name != "control.events")
    assert found["scores"]["retention.bytes"] == str(2**30 // partitions)
    assert found["control.events"]["retention.bytes"] == "-1"
    assert found["control.events"]["retention.ms"] == "-1"


def test_a_group_behind_the_sink_blocks_the_drain(
    kafka_bootstrap: str, hot_settings: Settings
) -> None:
    """The drain also asks every reader group's committed offsets: one behind the sink's on any
    partition of a data topic it reads holds the rotation (the sink has everything stored)."""
    from processors.core.retention import groups_past

    settings = hot_settings
    ensure_topics(settings, kafka_bootstrap)
    _produce(settings, kafka_bootstrap, 0, 8)  # two records on each partition of images.raw

    def commit(group: str, offset: int) -> None:
        client = make_consumer(settings, kafka_bootstrap, settings.group(group))
        parts = [TopicPartition(settings.topic("images.raw"), p, offset) for p in range(4)]
        client.commit(offsets=parts, asynchronous=False)
        client.close()

    readers = {"score": ("images.raw",), "stats": ("scores", "images.dlq", "candidates")}
    commit("sink", 2)
    commit("score", 1)
    assert not groups_past(settings, kafka_bootstrap, readers, "sink")
    commit("score", 2)
    assert groups_past(settings, kafka_bootstrap, readers, "sink")


def test_ingest_holds_flushed_until_the_epoch_opens(tmp_path: Path) -> None:
    from processors.core.progress import ProgressFile
    from processors.core.retention import hold_ingest, write_signal

    flushed: list[float] = []
    progress = ProgressFile(tmp_path, "ingest")
    assert not hold_ingest(tmp_path, lambda: flushed.append(1), progress, lambda: False)
    write_signal(tmp_path, 3, "hold")
    held: list[bool] = []
    thread = threading.Thread(
        target=lambda: held.append(
            hold_ingest(tmp_path, lambda: flushed.append(1), progress, lambda: False)
        )
    )
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and flushed == [1]
    assert json.loads((tmp_path / "ingest.json").read_text())["hotlog_held"] == 3
    write_signal(tmp_path, 3, "release")
    time.sleep(0.3)
    assert thread.is_alive()  # still held while the consumers let go
    write_signal(tmp_path, 3, "open")
    thread.join(5)
    assert held == [True]


@pytest.mark.parametrize("phase_at_start", ["hold", "release"])
def test_a_consumer_restarted_during_a_rotation_still_releases_it(
    tmp_path: Path, phase_at_start: str
) -> None:
    """A batch loop killed and restarted while epoch 2 is held (or being released) must answer
    that epoch's release; epochs opened before its start are not asked of it."""
    from processors.core.retention import Released, write_signal

    write_signal(tmp_path, 1, "open")
    assert not Released(tmp_path, every_s=0).asked()  # epoch 1 opened before the start
    write_signal(tmp_path, 2, phase_at_start)
    restarted = Released(tmp_path, every_s=0)
    write_signal(tmp_path, 2, "release")
    assert restarted.asked()
    write_signal(tmp_path, 2, "open")
    assert not Released(tmp_path, every_s=0).asked()


def test_the_controllers_offset_guard_starts_over_in_each_epoch() -> None:
    """Offsets restart at 0 in a rotated topic: a position of the old epoch must not make the
    controller skip the new epoch's records, and old epochs' positions are dropped."""
    from processors.controller.state import SourceState
    from processors.core.retention import epoch_topic

    src = SourceState("synthetic")
    for offset in range(100):
        src.mark(epoch_topic("scores", 0), 2, offset)
    assert src.seen(epoch_topic("scores", 0), 2, 50)
    assert not src.seen(epoch_topic("scores", 1), 2, 0)  # the new epoch's first record
    src.mark(epoch_topic("scores", 1), 2, 0)
    src.mark(epoch_topic("images.dlq", 1), 2, 0)
    assert src.seen(epoch_topic("scores", 1), 2, 0)
    assert sorted(src.offsets) == ["images.dlq#1:2", "scores#1:2"]


def test_a_resumed_run_goes_on_from_its_last_epoch(tmp_path: Path) -> None:
    """Numbering epochs from 0 again after a resume would reach an epoch whose position keys
    the controller's table still holds (and resume past them): the next is the last one + 1."""
    progress = tmp_path / "progress"
    write_signal(progress, 3, "open")
    held = [0]
    settings = load_settings(data_dir=tmp_path / "data", log_retention_bytes=100)
    hotlog = HotLog(
        settings, "127.0.0.1:9", progress, lambda: held[0], lambda: False, [], lambda r: r()
    )
    hotlog.tick({}, ingest_alive=True)
    assert read_signal(progress) == (3, "open")  # nothing held: not due
    held[0] = 100
    hotlog.tick({}, ingest_alive=True)
    assert read_signal(progress) == (4, "hold")
