"""`skyloop replay` on the embedded broker: rescoring and rebuilding ClickHouse from topics."""

from __future__ import annotations

import io
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from processors.core.clickhouse import connect
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.records import TOPICS
from processors.ingest.processor import run_ingest
from processors.ingest.sources import Interleaved, source_from_spec
from processors.replay import ReplaySelection, run_replay

IMAGES = 24


def _ingest(settings: Settings, bootstrap: str, n: int = IMAGES) -> None:
    from processors.core.kafka import ensure_topics

    ensure_topics(settings, bootstrap)
    source = Interleaved([source_from_spec("synthetic"), source_from_spec("hubble")])
    run_ingest(settings, bootstrap, source, limit=n)


def _read_all(settings: Settings, bootstrap: str, topic: str, idle_s: float = 3.0) -> list[dict]:
    """Every record of ``topic`` (read until ``idle_s`` passes without one)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"{settings.kafka.group_prefix}.reader"}
    )
    consumer.assign(
        [TopicPartition(settings.topic(topic), p, 0) for p in range(TOPICS[topic].partitions)]
    )
    codec, records, last = default_codec(), [], time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for m in consumer.consume(100, 0.2):
                if m.error() is None:
                    records.append(codec.decode(m.value(), TOPICS[topic].schema))
                    last = time.monotonic()
    finally:
        consumer.close()
    return records


def test_rebuild_writes_every_topic_into_clickhouse_idempotently(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    _ingest(settings, kafka_bootstrap)
    target = settings.model_copy(update={"clickhouse_dsn": f"chdb://{tmp_path / 'rebuilt'}"})
    out = io.StringIO()
    first = run_replay(target, kafka_bootstrap, "rebuild", name="r1", idle_s=3.0, out=out)
    assert first.replayed == IMAGES and first.skipped == 0
    assert f"replay rebuild, hot log: read {IMAGES}" in out.getvalue()  # progress, last line
    again = run_replay(target, kafka_bootstrap, "rebuild", name="r1", idle_s=3.0, out=out)
    assert again.replayed == 0  # the same name resumes from its committed offsets: nothing left
    fresh = run_replay(target, kafka_bootstrap, "rebuild", name="r2", idle_s=3.0, out=out)
    assert fresh.replayed == IMAGES
    client = connect(str(target.clickhouse.dsn))
    try:
        assert client.query("SELECT count() FROM images FINAL").result_rows[0][0] == IMAGES
        ids = client.query("SELECT uniqExact(image_id) FROM images").result_rows[0][0]
        assert ids == IMAGES
    finally:
        client.close()


def test_rescore_scores_the_selected_images_once_without_touching_live_groups(
    settings: Settings, kafka_bootstrap: str
) -> None:
    settings = settings.model_copy(update={"reference_size": 20, "calibration_wait_s": 0.0})
    _ingest(settings, kafka_bootstrap)
    images = _read_all(settings, kafka_bootstrap, "images.raw", idle_s=1.0)
    synthetic = {r["image_id"] for r in images if r["source"] == "synthetic"}
    assert 0 < len(synthetic) < IMAGES
    selection = ReplaySelection(sources=frozenset({"synthetic"}))
    out = io.StringIO()
    summary = run_replay(
        settings, kafka_bootstrap, "rescore", name="s1", selection=selection, idle_s=3.0, out=out
    )
    assert summary.replayed == len(synthetic)
    assert summary.skipped == IMAGES - len(synthetic)
    scores = _read_all(settings, kafka_bootstrap, "scores")
    assert sorted(s["image_id"] for s in scores) == sorted(synthetic)  # each exactly once
    assert {s["role"] for s in scores} == {"production"}  # the version that serves live
    # idempotent: the same replay again finds nothing left to do
    again = run_replay(
        settings, kafka_bootstrap, "rescore", name="s1", selection=selection, idle_s=3.0, out=out
    )
    assert again.replayed == 0
    # live consumer groups were never touched
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": settings.group("score")})
    try:
        committed = probe.committed(
            [TopicPartition(settings.topic("images.raw"), p) for p in range(4)], timeout=10
        )
    finally:
        probe.close()
    assert all(tp.offset < 0 for tp in committed)


def test_records_produced_after_the_start_are_not_replayed(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    _ingest(settings, kafka_bootstrap, 8)
    target = settings.model_copy(update={"clickhouse_dsn": f"chdb://{tmp_path / 'ch'}"})
    import threading

    def late() -> None:
        time.sleep(4.0)  # after the replay started and joined its group
        _ingest(settings, kafka_bootstrap, 16)

    thread = threading.Thread(target=late)
    thread.start()
    summary = run_replay(
        target, kafka_bootstrap, "rebuild", name="late", idle_s=3.0, out=io.StringIO()
    )
    thread.join()
    assert summary.replayed == 8


def _rotate(settings: Settings, bootstrap: str, topic: str) -> None:
    """Delete ``topic`` and create it again, empty, as the hot log's rotation does."""
    from confluent_kafka.admin import AdminClient

    from processors.core.kafka import ensure_topics

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([settings.topic(topic)], operation_timeout=10).values():
        future.result(timeout=15)
    deadline = time.monotonic() + 15
    while settings.topic(topic) in admin.list_topics(timeout=5).topics:
        assert time.monotonic() < deadline, f"{topic} was not deleted"
        time.sleep(0.2)
    ensure_topics(settings, bootstrap)


def test_rescore_reads_what_the_hot_log_no_longer_holds_from_clickhouse(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    from processors.core.warehouse_rows import ClickHouseRows

    settings = settings.model_copy(
        update={
            "reference_size": 20,
            "calibration_wait_s": 0.0,
            "clickhouse_dsn": f"chdb://{tmp_path / 'ch'}",
        }
    )
    _ingest(settings, kafka_bootstrap, 16)
    stored = run_replay(settings, kafka_bootstrap, "rebuild", name="store", idle_s=3.0)
    assert stored.replayed == 16  # ClickHouse holds them all
    old = {r["image_id"]: r["source"] for r in _read_all(settings, kafka_bootstrap, "images.raw")}
    _rotate(settings, kafka_bootstrap, "images.raw")
    _ingest(settings, kafka_bootstrap, 6)  # the same sources again: their first 6 images
    hot = {r["image_id"] for r in _read_all(settings, kafka_bootstrap, "images.raw", idle_s=1.0)}
    assert len(hot) == 6 and hot < set(old)
    cold = ClickHouseRows(str(settings.clickhouse.dsn))
    try:
        out = io.StringIO()
        summary = run_replay(
            settings, kafka_bootstrap, "rescore", name="c1", idle_s=3.0, out=out, cold=cold
        )
        assert (summary.replayed, summary.cold) == (16, 10)
        assert "10 stored images older than the hot log" in out.getvalue()
        scores = _read_all(settings, kafka_bootstrap, "scores")
        assert sorted(s["image_id"] for s in scores) == sorted(old)  # each exactly once
        # run again under its name, the replay is finished: nothing from either tier
        again = run_replay(
            settings, kafka_bootstrap, "rescore", name="c1", idle_s=3.0, out=out, cold=cold
        )
        assert (again.replayed, again.cold) == (0, 0)
        assert "done by an earlier run of this name" in out.getvalue()
        # a selection applies to the cold tier too
        synthetic = {i for i, source in old.items() if source == "synthetic"}
        picked = run_replay(
            settings,
            kafka_bootstrap,
            "rescore",
            name="c2",
            selection=ReplaySelection(sources=frozenset({"synthetic"})),
            idle_s=3.0,
            out=out,
            cold=cold,
        )
        assert picked.replayed == len(synthetic)
        assert picked.cold == len(synthetic - hot) > 0
    finally:
        cold.close()
