"""The sink processor against the embedded broker and real chdb: rows, dead letters, live SQL,
and the run-time reports it writes (interim on a pipeline pause, periodic)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Producer

from processors.core.clickhouse import connect
from processors.core.codec import MAGIC, default_codec
from processors.core.config import Settings
from processors.core.control import new_event
from processors.core.kafka import ensure_topics, make_producer
from processors.core.progress import read_progress
from processors.core.query_token import TOKEN_HEADER
from processors.core.runner import Runner, StopSignal
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
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
        # (behind the token it wrote to sink.json, which only its owner may read)
        marker = json.loads((settings.data_dir / "sink.json").read_text())
        assert (settings.data_dir / "sink.json").stat().st_mode & 0o777 == 0o600
        request = urllib.request.Request(
            f"http://127.0.0.1:{marker['port']}/sql",
            data=b"SELECT count() FROM images FINAL",
            method="POST",
            headers={TOKEN_HEADER: marker["token"]},
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


def _produce_images(settings: Settings, producer: Producer, seed: int, count: int) -> None:
    codec = default_codec()
    for n in range(count):
        rec = to_record(SyntheticSky(seed=seed).image(n))
        producer.produce(
            settings.topic("images.raw"),
            key=rec["image_id"].encode(),
            value=codec.encode(rec, "skyloop.ImageRecord"),
        )


def test_pipeline_pause_writes_an_interim_report(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    _produce_images(settings, producer, seed=4, count=3)
    at = datetime.now(UTC).replace(microsecond=0)
    pause = new_event(
        "pipeline.paused",
        "pipeline",
        "controller",
        {"reason": "latency p99", "until": at + timedelta(minutes=10)},
        evidence={"latency_p99_ms": 950.0},
        at=at,
    )
    producer.produce(
        settings.topic("control.events"),
        key=b"pipeline",
        value=default_codec().encode(pause, "skyloop.ControlEvent"),
    )
    assert producer.flush(10) == 0

    progress = tmp_path / "progress"
    with running_sink(settings, kafka_bootstrap, progress):
        wait_for(lambda: read_progress(progress, "sink").get("reports", 0) >= 1)
    counts = read_progress(progress, "sink")
    assert (counts["reports"], counts.get("report_errors", 0)) == (1, 0)

    reports = settings.data_dir / "report"
    name = f"report-{at:%Y%m%dT%H%M%SZ}-paused.md"
    assert [p.name for p in reports.glob("*.md")] == [name]  # no periodic one at 86400 s
    md = (reports / name).read_text()
    assert md.startswith(f"# skyloop interim report — {at.date().isoformat()}\n")
    until = at + timedelta(minutes=10)
    shown = f"{until:%H:%M}" if until.date() == at.date() else f"{until:%Y-%m-%d %H:%M}"
    assert (
        f"> Interim report: pipeline paused (latency p99) at {at:%Y-%m-%d %H:%M} UTC, "
        f"until {shown} UTC\n" in md
    )
    # the pause is in the report it caused: the batch's rows go in before the report reads
    pauses = md[md.index("### Pauses and resumes") :]
    assert "| pipeline.paused | pipeline | controller | latency p99 |" in pauses


def test_periodic_reports_follow_report_interval_s(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"report_interval_s": 0.5})
    ensure_topics(settings, kafka_bootstrap)
    producer = make_producer(settings, kafka_bootstrap)
    reports = settings.data_dir / "report"
    progress = tmp_path / "progress"
    with running_sink(settings, kafka_bootstrap, progress):
        # the cadence is checked after each stored batch: keep batches coming
        deadline = time.monotonic() + 60
        seed = 10
        while len(list(reports.glob("*-periodic.md"))) < 2:
            assert time.monotonic() < deadline, "no periodic reports"
            _produce_images(settings, producer, seed=seed, count=2)
            assert producer.flush(10) == 0
            seed += 1
            time.sleep(0.3)
    counts = read_progress(progress, "sink")
    assert counts["reports"] >= 2 and counts.get("report_errors", 0) == 0
    names = sorted(p.name for p in reports.glob("*.md"))
    assert all(re.fullmatch(r"report-\d{8}T\d{6}Z-periodic\.md", n) for n in names), names
    md = (reports / names[-1]).read_text()
    assert "> Periodic report (every 0.5 s), written " in md
    assert "## Self-correction" in md and "## Sources" in md
    health = md[md.index("## Pipeline health") :]  # the sink's own process, from its file
    assert re.search(rf"^\| sink \| {os.getpid()} \| ", health, re.M), health


def test_a_failing_report_is_counted_and_costs_no_data(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / "report").write_text("a file where the report folder should be")
    producer = make_producer(settings, kafka_bootstrap)
    _produce_images(settings, producer, seed=7, count=4)
    pause = new_event("pipeline.paused", "pipeline", "operator", {"reason": "maintenance"})
    producer.produce(
        settings.topic("control.events"),
        key=b"pipeline",
        value=default_codec().encode(pause, "skyloop.ControlEvent"),
    )
    _produce_images(settings, producer, seed=8, count=2)  # batches after the failure
    assert producer.flush(10) == 0

    progress = tmp_path / "progress"
    with running_sink(settings, kafka_bootstrap, progress):
        wait_for(lambda: read_progress(progress, "sink").get("images", 0) >= 6)
    counts = read_progress(progress, "sink")
    assert counts["report_errors"] == 1 and "reports" not in counts
    client = connect(settings.resolved_clickhouse_dsn)
    try:
        assert client.command("SELECT count() FROM images FINAL") == 6
        stored = client.query("SELECT type, reason FROM control_events FINAL").result_rows
    finally:
        client.close()
    assert stored == [("pipeline.paused", "maintenance")]


def test_the_sink_holds_a_fetch_briefly_except_on_the_durable_broker(settings: Settings) -> None:
    assert SinkProcessor.consumer_config(settings) == {"fetch.wait.max.ms": 100}
    durable = settings.model_copy(
        update={"broker": settings.broker.model_copy(update={"durable": True})}
    )
    assert SinkProcessor.consumer_config(durable) == {}  # each fetch lists stored batches there
