"""The sink processor against the embedded broker and real chdb: rows, dead letters, live SQL."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processors.core.clickhouse import connect
from processors.core.codec import MAGIC, default_codec
from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_producer
from processors.core.progress import read_progress
from processors.core.runner import Runner, StopSignal
from processors.ingest.base import to_record
from processors.ingest.synthetic import SyntheticSky
from processors.sink.processor import SinkProcessor


@contextmanager
def running_sink(settings: Settings, bootstrap: str, progress: Path) -> Iterator[StopSignal]:
    stop = StopSignal()
    runner = Runner(
        SinkProcessor(),
        settings,
        bootstrap,
        stop=stop,
        progress_dir=progress,
        batch_size=50,
        max_wait_s=0.2,
    )
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.event.set()
        thread.join(30)
        assert not errors, errors
        assert not thread.is_alive()


def wait_for(predicate: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_every_message_lands_in_a_table_or_as_a_dead_letter(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    codec = default_codec()
    producer = make_producer(settings, kafka_bootstrap)
    images = [to_record(SyntheticSky(seed=3).image(n)) for n in range(5)]
    for rec in images:
        producer.produce(
            settings.topic("images.raw"),
            key=rec["image_id"].encode(),
            value=codec.encode(rec, "skyloop.ImageRecord"),
        )
    producer.produce(settings.topic("images.raw"), key=b"garbage", value=b"not avro at all")
    producer.produce(settings.topic("scores"), key=b"unknown", value=MAGIC + b"\x01" * 8 + b"\x00")
    producer.produce(settings.topic("images.dlq"), key=b"bad-dlq", value=b"\x00broken dead letter")
    # the same image twice (at-least-once redelivery) must be one row under FINAL
    producer.produce(
        settings.topic("images.raw"),
        key=images[0]["image_id"].encode(),
        value=codec.encode(images[0], "skyloop.ImageRecord"),
    )
    assert producer.flush(10) == 0

    progress = tmp_path / "progress"
    with running_sink(settings, kafka_bootstrap, progress):
        wait_for(lambda: read_progress(progress, "sink").get("consumed", 0) >= 11)
        # while the sink runs, it answers SQL for other processes over loopback
        port = json.loads((settings.data_dir / "sink.json").read_text())["port"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/sql", data=b"SELECT count() FROM images FINAL", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["rows"] == [[5]]
    assert not (settings.data_dir / "sink.json").exists()

    client = connect(settings.resolved_clickhouse_dsn)
    try:
        assert client.query("SELECT count() FROM images FINAL").result_rows == [(5,)]
        rows = client.query(
            "SELECT original_topic, error_class, message FROM dead_letters FINAL"
        ).result_rows
    finally:
        client.close()
    by_topic = {topic: (error, message) for topic, error, message in rows}
    assert set(by_topic) == {"images.raw", "scores", "images.dlq"}
    assert by_topic["images.raw"][0] == "CorruptMessageError"
    assert "header" in by_topic["images.raw"][1]
    assert by_topic["scores"][0] == "UnknownSchemaError"
    assert by_topic["images.dlq"][0] == "CorruptMessageError"
