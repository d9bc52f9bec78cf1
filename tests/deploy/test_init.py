"""`skyloop init`: the deployment's init job, on the embedded broker and real chdb."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from processors.cli import main
from processors.core.clickhouse import connect
from processors.core.records import TOPICS
from processors.sink.migrations import MIGRATIONS_TABLE, load_migrations


def test_init_creates_every_topic_and_table_and_is_idempotent(
    kafka_bootstrap: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"i{unique}."
    dsn = f"chdb://{(tmp_path / 'ch').resolve()}"
    monkeypatch.setenv("SKYLOOP_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("SKYLOOP_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("SKYLOOP_CLICKHOUSE_DSN", dsn)
    assert main(["init", "--data-dir", str(tmp_path)]) == 0
    assert main(["init", "--data-dir", str(tmp_path)]) == 0  # a second run changes nothing

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    for spec in TOPICS.values():
        assert len(topics[prefix + spec.name].partitions) == spec.partitions, spec.name
    client = connect(dsn)
    try:
        versions = client.query(f"SELECT version FROM {MIGRATIONS_TABLE} FINAL").result_rows
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
    finally:
        client.close()
    assert sorted(v for (v,) in versions) == [m.version for m in load_migrations()]
    assert {"images", "scores", "candidates", "control_events", "dead_letters"} <= tables


def test_init_without_a_broker_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SKYLOOP_BOOTSTRAP_SERVERS", raising=False)
    assert main(["init", "--data-dir", str(tmp_path)]) == 2
    assert "SKYLOOP_BOOTSTRAP_SERVERS" in capsys.readouterr().err


def test_init_gives_up_after_wait_when_the_broker_does_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKYLOOP_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert main(["init", "--data-dir", str(tmp_path), "--wait", "0"]) == 1
    assert "init: topics failed" in capsys.readouterr().err
