"""The chaos checker against a real `skyloop run`: clean data passes, injected faults are caught.

One short run on the embedded stack with the tap reading every topic. Mid-run, one score
message is produced a second time, byte for byte (a duplicate that ClickHouse's identity
absorbs under FINAL, so a FINAL-based count cannot see it); the checker must count it. After the
run, one image's production score is deleted from ClickHouse (a loss) and another image gets a
second production row under another model version (served twice); the checker must count each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.core.clickhouse import connect
from processors.core.progress import read_progress
from tools.chaos.checker import check, load_stored
from tools.chaos.live import LiveRun

pytestmark = pytest.mark.e2e

IMAGES = 64


def _copy_one_score(run: LiveRun) -> tuple[str, int, int]:
    """Produce the first production score again, same partition, same key and bytes."""
    assert run.tap is not None
    first = next(
        s
        for s in run.tap.snapshot()
        if s.topic == "scores" and s.identity and s.identity[2] == "production"
    )
    topic = f"{run.stack['topic_prefix']}scores"
    consumer = Consumer({"bootstrap.servers": run.stack["bootstrap"], "group.id": "chaos-copy"})
    consumer.assign([TopicPartition(topic, first.partition, first.offset)])
    try:
        message = consumer.consume(1, 30)[0]
    finally:
        consumer.close()
    producer = Producer({"bootstrap.servers": run.stack["bootstrap"]})
    producer.produce(topic, key=message.key(), value=message.value(), partition=first.partition)
    assert producer.flush(30) == 0
    return str(first.image_id), first.partition, first.offset


def test_the_checker_catches_an_injected_duplicate_and_loss(tmp_path: Path) -> None:
    run = LiveRun(tmp_path, IMAGES)
    try:
        run.start()
        assert run.wait(lambda: run.scored() >= 16, 300), "scoring never started"
        copied, _, _ = _copy_one_score(run)
        code = run.finish(600)
    finally:
        run.close()
    assert code == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    verdict = run.verdict()
    assert run.monitor.restarts == {}, "not a clean run: a worker restarted"
    assert verdict.images_in == verdict.images_out == IMAGES
    assert verdict.losses == 0 and verdict.tap_missing == 0, verdict.details
    assert verdict.duplicates == 1, verdict.details
    assert f"duplicate on scores: ('{copied}'" in verdict.details[0]

    client = connect(f"chdb://{(run.run_dir / 'clickhouse').resolve()}")
    try:
        # what the FINAL-based count said: nothing twice
        final = client.query(
            "SELECT count() - uniqExact(image_id, model_version, role) FROM scores FINAL"
        ).result_rows[0][0]
        assert final == 0
        images = [
            r[0] for r in client.query("SELECT image_id FROM images ORDER BY image_id").result_rows
        ]
        lost, twice = [i for i in images if i != copied][:2]
        client.command(f"DELETE FROM scores WHERE image_id = '{lost}'")
        client.command(
            "INSERT INTO scores SELECT * REPLACE ('injected' AS model_version) FROM scores FINAL "
            f"WHERE image_id = '{twice}' AND role = 'production'"
        )
        stored = load_stored(client)
    finally:
        client.close()
    seen = run.tap.snapshot() if run.tap is not None else []
    after = check(seen, run.monitor.windows(), read_progress(run.progress, "ingest"), stored)
    assert after.losses == 1, after.details
    assert any(f"lost: {lost}: production score not stored" == d for d in after.details)
    assert after.served_twice == 1 and after.duplicates == 2, after.details
