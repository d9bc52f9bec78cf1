"""``skyloop tail`` on the embedded broker: records decoded, payloads summarised, bad ones shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from processors.cli import main
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.events import EventType, new_event
from processors.core.exceptions import ConfigError
from processors.core.kafka import ensure_topics, make_producer, produce_control_event
from processors.core.tail import tail, tail_start
from processors.ingest.sources.items import RawImage, to_record


def _image(n: int) -> RawImage:
    return RawImage(
        source="sky",
        survey="test",
        format="png",
        pixels=bytes([n]) * 4000,
        width=8,
        height=8,
        bands=1,
        observed_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def _publish(settings: Settings, bootstrap: str) -> list[str]:
    ensure_topics(settings, bootstrap)
    producer = make_producer(settings, bootstrap)
    codec = default_codec()
    ids = []
    for n in range(3):
        record = to_record(_image(n))
        ids.append(record["image_id"])
        producer.produce(
            settings.topic("images.raw"),
            key=record["image_id"].encode(),
            value=codec.encode(record, "skyloop.ImageRecord"),
            partition=n % 2,
        )
    producer.produce(settings.topic("images.raw"), key=b"garbage", value=b"\xc3\x01nonsense")
    producer.flush(10)
    produce_control_event(
        producer,
        settings,
        new_event(EventType.PIPELINE_PAUSED, "pipeline", "operator:test", {"reason": "tail"}),
    )
    return ids


def test_tail_decodes_summarises_and_shows_bad_records(
    settings: Settings, kafka_bootstrap: str
) -> None:
    ids = _publish(settings, kafka_bootstrap)
    lines: list[str] = []
    start = tail_start("beginning")
    printed = tail(settings, kafka_bootstrap, "images.raw", start, idle_s=2, write=lines.append)
    records = [json.loads(line) for line in lines]
    assert printed == len(records) == 4
    good = [r for r in records if "value" in r]
    assert sorted(r["key"] for r in good) == sorted(ids)
    pixels = good[0]["value"]["pixels"]
    assert pixels["bytes"] == 4000 and len(pixels["sha256"]) == 16  # summarised, not dumped
    assert all(len(line) < 2000 for line in lines)
    (bad,) = [r for r in records if "error" in r]
    assert bad["key"] == "garbage" and "value" not in bad and bad["value_bytes"] == 10

    only: list[str] = []
    tail(settings, kafka_bootstrap, "images.raw", start, key=ids[1], idle_s=2, write=only.append)
    assert [json.loads(line)["key"] for line in only] == [ids[1]]
    first: list[str] = []
    assert tail(settings, kafka_bootstrap, "images.raw", start, count=1, write=first.append) == 1

    later = tail_start((datetime.now(UTC) + timedelta(hours=1)).isoformat())
    assert tail(settings, kafka_bootstrap, "images.raw", later, idle_s=1, write=lines.append) == 0


def test_skyloop_tail_reads_the_control_log_and_refuses_unknown_input(
    settings: Settings,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _publish(settings, kafka_bootstrap)
    monkeypatch.setenv("SKYLOOP_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SKYLOOP_TOPIC_PREFIX", settings.kafka.topic_prefix)
    assert main(["tail", "control.events", "--idle", "2"]) == 0
    (event,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert event["value"]["type"] == "pipeline.paused" and event["key"] == "pipeline"
    with pytest.raises(ConfigError, match="--from 'yesterday'"):
        tail_start("yesterday")
    with pytest.raises(SystemExit):
        main(["tail", "images.cooked"])
