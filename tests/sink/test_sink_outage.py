"""The sink when ClickHouse goes away mid-stream: it retries the batch in hand with back-off,
consumes and commits nothing more meanwhile, and stores every row exactly once after the
database is back (no loss, no duplicate under FINAL), without a restart."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import TopicPartition

from processors.core.clickhouse import Client, connect
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_consumer, make_producer
from processors.core.metrics import REGISTRY
from processors.core.progress import read_progress
from processors.core.records import TOPICS
from tests.sink.conftest import score
from tests.sink.test_sink_processor import running_sink, wait_for


def _committed(settings: Settings, bootstrap: str) -> int:
    consumer = make_consumer(settings, bootstrap, settings.group("sink"))
    try:
        topic = settings.topic("scores")
        parts = [TopicPartition(topic, p) for p in range(TOPICS["scores"].partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


def _stored(client: Client) -> tuple[int, int]:
    """(distinct scores under FINAL, uniq images in the hourly aggregate)."""
    final = int(client.command("SELECT count() FROM scores FINAL"))
    hourly = int(client.command("SELECT uniqMerge(images) FROM hourly_scores"))
    return final, hourly


def test_clickhouse_unavailable_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"store_retry_max_s": 0.5})
    ensure_topics(settings, kafka_bootstrap)
    codec = default_codec()
    producer = make_producer(settings, kafka_bootstrap)

    def produce(first: int, count: int) -> None:
        for n in range(first, first + count):
            record = score(f"img-{n:04d}", source=("synth", "ztf")[n % 2])
            producer.produce(
                settings.topic("scores"),
                key=record["image_id"].encode(),
                value=codec.encode(record, "skyloop.ScoreRecord"),
                partition=n % TOPICS["scores"].partitions,
            )
        assert producer.flush(10) == 0

    progress = tmp_path / "progress"
    before = REGISTRY.get_sample_value("skyloop_store_retries_total", {"processor": "sink"}) or 0
    with running_sink(settings, kafka_bootstrap, progress):
        produce(0, 100)
        wait_for(lambda: read_progress(progress, "sink").get("consumed", 0) >= 100)
        admin = connect(settings.resolved_clickhouse_dsn)  # same engine, its own session
        try:
            assert _stored(admin) == (100, 100)
            # the database loses the table: every insert into it now fails
            admin.command("DETACH TABLE scores")
            produce(100, 150)
            wait_for(lambda: read_progress(progress, "sink").get("store_retries", 0) >= 3)
            stalled = read_progress(progress, "sink")
            assert stalled["store_unavailable"] is True
            assert stalled["consumed"] == 100  # nothing more counted as done...
            assert _committed(settings, kafka_bootstrap) == 100  # ...nor committed
            produce(250, 50)  # the stream goes on while the store is down
            admin.command("ATTACH TABLE scores")
            wait_for(lambda: read_progress(progress, "sink").get("consumed", 0) >= 300)
            assert read_progress(progress, "sink")["store_unavailable"] is False
            assert _stored(admin) == (300, 300)
            ids = admin.query("SELECT image_id FROM scores FINAL ORDER BY image_id").result_rows
            assert [i for (i,) in ids] == [f"img-{n:04d}" for n in range(300)]
        finally:
            admin.close()
    assert _committed(settings, kafka_bootstrap) == 300
    retries = REGISTRY.get_sample_value("skyloop_store_retries_total", {"processor": "sink"})
    assert retries is not None and retries - before >= 3
