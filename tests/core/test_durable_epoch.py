"""A durable broker's hot-log epoch outlives the run (processors.core.durable_epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.core.config import load_settings
from processors.core.durable_epoch import carry_epoch
from processors.core.kafka import ensure_topics
from processors.core.retention import (
    HotLog,
    folder_bytes,
    read_signal,
    rotate_topics,
    write_signal,
)
from processors.core.stack import EmbeddedBroker


def _carry(tmp_path: Path, state: tuple[int, str] | None) -> tuple[str, tuple[int, str], int]:
    mirror, progress = tmp_path / "state", tmp_path / "progress"
    if state is not None:
        write_signal(mirror, *state)
    settled: list[int] = []
    found = carry_epoch(mirror, progress, settle=lambda: settled.append(1))
    if state is not None:
        assert read_signal(mirror) == read_signal(progress)
    return found, read_signal(progress), len(settled)


def test_a_run_starts_in_the_epoch_of_the_topics_that_exist(tmp_path: Path) -> None:
    assert _carry(tmp_path / "a", None) == ("new", (0, "open"), 0)
    assert _carry(tmp_path / "b", (3, "open")) == ("open", (3, "open"), 0)
    # held: its drain had not finished, nothing was deleted: epoch 3's topics are still live
    assert _carry(tmp_path / "c", (4, "hold")) == ("abandoned", (3, "open"), 0)
    # released: drained, perhaps half deleted: finished, then open
    assert _carry(tmp_path / "d", (4, "release")) == ("finished", (4, "open"), 1)


def test_a_released_rotation_is_finished_on_the_durable_broker(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", topic_prefix="d.")
    with EmbeddedBroker(log_path=tmp_path / "b.log", storage_dir=tmp_path / "store") as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(settings, bootstrap)
        producer = Producer({"bootstrap.servers": bootstrap})
        for i in range(10):
            producer.produce(settings.topic("scores"), b"old", partition=i % 2)
        assert producer.flush(10) == 0
        write_signal(tmp_path / "state", 2, "release")  # the crash came after the drain
        found = carry_epoch(
            tmp_path / "state",
            tmp_path / "progress",
            settle=lambda: rotate_topics(settings, bootstrap),
        )
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
        try:
            ends = [
                consumer.get_watermark_offsets(TopicPartition(settings.topic("scores"), p), 10)
                for p in range(2)
            ]
        finally:
            consumer.close()
    assert found == "finished" and read_signal(tmp_path / "progress") == (2, "open")
    assert ends == [(0, 0), (0, 0)]  # epoch 2's topics, empty


def test_the_hot_log_writes_the_mirror_first_and_reads_a_folder_seldom(tmp_path: Path) -> None:
    progress, mirror = tmp_path / "progress", tmp_path / "state"
    settings = load_settings(data_dir=tmp_path / "data", log_retention_bytes=100)
    held, reads = [0], [0]

    def measure() -> int:
        reads[0] += 1
        return held[0]

    hotlog = HotLog(
        settings,
        "127.0.0.1:9",
        progress,
        measure,
        lambda: False,
        [],
        lambda rotate: rotate(),
        mirror_dir=mirror,
        measure_every_s=3600,
    )
    hotlog.tick({}, ingest_alive=True)
    held[0] = 100
    for _ in range(5):
        hotlog.tick({}, ingest_alive=True)
    assert read_signal(progress) == (0, "open"), "read again within measure_every_s"
    assert reads[0] == 2  # the floor at the start, then one reading
    hotlog._measured = (float("-inf"), 0)  # the interval passed
    hotlog.tick({}, ingest_alive=True)
    assert read_signal(mirror) == read_signal(progress) == (1, "hold")


def test_folder_bytes_sums_the_files_below(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").write_bytes(b"12345")
    (tmp_path / "a" / "b" / "y").write_bytes(b"123")
    assert folder_bytes(tmp_path) == 8
    assert folder_bytes(tmp_path / "absent") == 0


@pytest.mark.parametrize("phase", ["hold", "release"])
def test_a_run_on_a_memory_broker_carries_nothing(tmp_path: Path, phase: str) -> None:
    from processors.local_hotlog import carry_durable_epoch

    class MemoryBroker:
        storage_dir = None
        bootstrap_servers = "127.0.0.1:9"

    settings = load_settings(data_dir=tmp_path / "data")
    write_signal(tmp_path / "data" / "broker-state", 5, phase)  # left by another broker kind
    progress = tmp_path / "progress"
    assert carry_durable_epoch(settings, MemoryBroker(), progress) == "new"  # type: ignore[arg-type]
    assert read_signal(progress) == (0, "open")


def test_a_changelog_deleted_mid_compaction_is_written_back_from_its_journal(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from processors.core.compaction import _journal, compact, read_changelog, restore_journals

    config = {"bootstrap.servers": kafka_bootstrap}
    topic, journal = f"changelog-{unique}", tmp_path / "journal"
    admin = AdminClient(config)
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({**config, "linger.ms": 0})
    for round_ in range(3):
        for key in range(4):
            producer.produce(topic, key=b"k%d" % key, value=b"v%d" % round_, partition=key % 2)
            assert producer.flush(10) == 0
    # a compaction that completes leaves no journal
    assert [c.records_after for c in compact(config, [topic], journal_dir=journal)] == [4]
    assert not list(journal.glob("*"))
    kept = read_changelog(config, topic)
    # the crash: the journal was written and the topic deleted, nothing written back yet
    _journal(journal, topic, 2, kept)
    admin.delete_topics([topic], operation_timeout=10)[topic].result(20)
    assert restore_journals(config, journal) == 1
    back = read_changelog(config, topic)
    assert {p: [r[:2] for r in rs] for p, rs in back.items()} == {
        p: [r[:2] for r in rs] for p, rs in kept.items()
    }
    assert not list(journal.glob("*")) and restore_journals(config, journal) == 0
