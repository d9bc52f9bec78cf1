"""run_ingest against the embedded broker: what reaches the topics, the counters, the commits."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_consumer
from processors.core.progress import read_progress
from processors.core.records import TOPICS
from processors.core.runner import StopSignal
from processors.ingest.processor import IngestSummary, describe_source, run_ingest
from processors.ingest.sources import Interleaved, source_from_spec
from processors.ingest.ztf import ZtfFileSource
from tests.ingest.conftest import MakeTopic, committed_offset

SCHEMAS = {"images.raw": "skyloop.ImageRecord", "images.dlq": "skyloop.DeadLetter"}


def _read(settings: Settings, bootstrap: str, base: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` records of a topic, decoded (all partitions; waits up to 20 s)."""
    consumer = make_consumer(settings, bootstrap, f"{settings.kafka.group_prefix}.reader")
    consumer.assign(
        [
            TopicPartition(settings.topic(base), p, OFFSET_BEGINNING)
            for p in range(TOPICS[base].partitions)
        ]
    )
    codec = default_codec()
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    try:
        while len(records) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append(codec.decode(msg.value() or b"", SCHEMAS[base]))
        extra = consumer.poll(1.0)  # nothing more than expected
        assert extra is None or extra.error() is not None, f"more than {n} records on {base}"
    finally:
        consumer.close()
    return records


def test_a_ztf_folder_reaches_the_topics_with_every_packet_counted(
    settings: Settings, kafka_bootstrap: str, ztf_alerts_dir: Path, tmp_path: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    packets = sorted(ztf_alerts_dir.glob("*.avro"))
    unreadable = [p for p in packets if p.name.startswith("unreadable_")]
    cut = [p for p in packets if p.name.startswith("sim_vpre2_877")]  # rb == 0
    source = Interleaved([source_from_spec(f"ztf:{ztf_alerts_dir}?min_rb=0.05")])
    summary = run_ingest(settings, kafka_bootstrap, source, progress_dir=tmp_path)

    published = len(packets) - len(unreadable) - len(cut)  # one alert per packet
    assert (summary.published, summary.dead_letters) == (published, len(unreadable))
    images = _read(settings, kafka_bootstrap, "images.raw", published)
    letters = _read(settings, kafka_bootstrap, "images.dlq", len(unreadable))
    assert summary.images == len({r["image_id"] for r in images}) < published  # re-serialized
    assert sorted(r["key"].decode() for r in letters) == [str(p) for p in unreadable]
    assert {(r["original_topic"], r["error_class"]) for r in letters} == {
        ("source:ztf", "UnreadablePacket")
    }
    ztf = summary.sources["ztf"]
    assert ztf["packets"] == len(packets) and ztf["read"] == len(packets) - len(unreadable)
    assert (ztf["cut"], ztf["cut.min_rb"], ztf["failed.UnreadablePacket"]) == (3, 3, 2)
    assert ztf["read"] == ztf["yielded"] + ztf["cut"] + ztf["failed"] - ztf["packets_failed"]
    assert ztf["published"] == published and ztf["images"] == summary.images
    progress = read_progress(tmp_path, "ingest")
    assert progress["done"] is True and progress["limit"] is None
    assert progress["sources"] == summary.sources
    assert (progress["published"], progress["images"]) == (published, summary.images)
    assert (progress["dead_letters"], progress["dead_letter_keys"]) == (2, 2)
    line = describe_source("ztf", ztf)
    assert f"{len(packets)} packets" in line and "3 cut (min_rb 3)" in line
    assert "2 failed (UnreadablePacket 2)" in line


def test_a_limit_takes_no_item_it_does_not_publish(
    settings: Settings, kafka_bootstrap: str, ztf_alerts_dir: Path
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    source = ZtfFileSource(ztf_alerts_dir)
    summary = run_ingest(settings, kafka_bootstrap, source, limit=4)
    assert summary.published + summary.dead_letters == 4
    assert source.stats.yielded + source.stats.failed == 4  # the 5th was never asked for


def test_a_kafka_alert_topic_is_committed_after_delivery(
    settings: Settings,
    kafka_bootstrap: str,
    ztf_alerts_dir: Path,
    make_topic: MakeTopic,
    tmp_path: Path,
) -> None:
    """An endless topic source (as ``skyloop worker ingest --source ztf:kafka://...``)."""
    ensure_topics(settings, kafka_bootstrap)
    packets = sorted(ztf_alerts_dir.glob("ZTF18abdqak*.avro"))
    values = [p.read_bytes() for p in packets] + [b"not a packet"]
    topic, group = make_topic(values)
    stop = StopSignal()
    spec = f"ztf:kafka://{kafka_bootstrap}/{topic}?group_id={group}"
    source = Interleaved([source_from_spec(spec, stop=stop.event)])
    result: list[IngestSummary] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_ingest(settings, kafka_bootstrap, source, stop=stop, progress_dir=tmp_path)
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while committed_offset(kafka_bootstrap, group, topic) < len(values):
            assert time.monotonic() < deadline, "the tail of the topic was never committed"
            time.sleep(0.5)
        # committed while still running (at the source's quiet point), and only after delivery
        assert worker.is_alive()
        assert len(_read(settings, kafka_bootstrap, "images.raw", len(packets))) == len(packets)
        assert len(_read(settings, kafka_bootstrap, "images.dlq", 1)) == 1
    finally:
        stop.event.set()
        worker.join(30)
    assert not worker.is_alive() and result
    assert (result[0].published, result[0].dead_letters) == (len(packets), 1)
    assert result[0].sources[source.name]["failed.NotAvro"] == 1
    assert read_progress(tmp_path, "ingest")["done"] is True

    # the group resumes after the committed tail: nothing is read twice
    again = source_from_spec(f"{spec}&idle_timeout_s=2")
    summary = run_ingest(settings, kafka_bootstrap, again)
    assert (summary.published, summary.dead_letters) == (0, 0)
