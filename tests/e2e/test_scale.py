"""Two scorers in one consumer group share images.raw and rebalance when one is killed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processors.core.clickhouse import connect
from processors.core.config import Settings
from processors.core.kafka import ensure_topics
from processors.core.progress import read_progress
from processors.core.supervisor import Supervisor
from processors.ingest.processor import run_ingest
from processors.ingest.sources import Interleaved, source_from_spec

pytestmark = pytest.mark.e2e

# one source per partition of images.raw (partition = crc32(source) % 4): 3, 1, 2, 0
SOURCES = ["synthetic", "hubble", "synthetic?name=sky-a", "synthetic?name=sky-b"]
PER_ROUND = 64


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, sups: list[Supervisor]):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for sup in sups:
            for child in sup.failed():
                pytest.fail(f"{child.name} died: {child.tail()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ingest(settings: Settings, bootstrap: str, n: int) -> None:
    run_ingest(settings, bootstrap, Interleaved([source_from_spec(s) for s in SOURCES]), limit=n)


def test_two_scorers_share_partitions_and_one_takes_over_when_the_other_dies(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_topics(settings, kafka_bootstrap)
    base = {
        "SKYLOOP_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SKYLOOP_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "SKYLOOP_GROUP_PREFIX": settings.kafka.group_prefix,
        "SKYLOOP_DATA_DIR": str(tmp_path / "data"),
        "SKYLOOP_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'clickhouse'}",
        "SKYLOOP_SESSION_TIMEOUT_MS": "6000",
        "SKYLOOP_REFERENCE_SIZE": "20",
        "SKYLOOP_CALIBRATION_WAIT_S": "0",
        "SKYLOOP_BATCH_SIZE": "8",
        "SKYLOOP_TORCH_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    for key in [k for k in os.environ if k.startswith("SKYLOOP_")]:
        monkeypatch.delenv(key)  # the children get exactly these settings
    progress = {name: tmp_path / "progress" / name for name in ("a", "b", "sink")}
    sups = [
        Supervisor(tmp_path / "logs" / name, {**base, "SKYLOOP_PROGRESS_DIR": str(progress[name])})
        for name in ("a", "b", "sink")
    ]
    a, b, sink = sups
    try:
        sink.start("sink", "sink", restart=False)
        a.start("score", "score", restart=False)
        scorer_b = b.start("score", "score", restart=False)
        _wait(
            lambda: all(
                read_progress(p, n).get("ready")
                for p, n in (
                    (progress["a"], "score"),
                    (progress["b"], "score"),
                    (progress["sink"], "sink"),
                )
            ),
            240,
            "workers to start",
            sups,
        )
        _ingest(settings, kafka_bootstrap, PER_ROUND)

        def scored(name: str) -> int:
            return int(read_progress(progress[name], "score").get("scored", 0))

        def stored() -> int:
            return int(read_progress(progress["sink"], "sink").get("scores", 0))

        _wait(lambda: stored() >= PER_ROUND, 240, "the first round", sups)
        # progress files are written at most every 0.2 s: the scorers' may trail the sink's
        _wait(lambda: scored("a") + scored("b") >= PER_ROUND, 10, "the scorers' counts", sups)
        # both scored a share: the group split the four partitions between them
        assert scored("a") > 0 and scored("b") > 0
        a_before = scored("a")

        os.kill(scorer_b.proc.pid, signal.SIGKILL)
        scorer_b.proc.wait(30)
        b.children.clear()  # killed on purpose: not a failure to report
        _ingest(settings, kafka_bootstrap, 2 * PER_ROUND)  # new images on every partition
        _wait(lambda: stored() >= 2 * PER_ROUND, 300, "the survivor to take over", sups)
        # the survivor scored the second round alone, the dead one's partitions included
        assert scored("a") - a_before >= PER_ROUND
    finally:
        for sup in sups:
            sup.stop_all()

    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        images = one("SELECT count() FROM images FINAL")
        assert images == 2 * PER_ROUND
        assert one("SELECT uniqExact(source) FROM images FINAL") == len(SOURCES)
        production = "SELECT image_id, model_version FROM scores FINAL WHERE role = 'production'"
        assert one(f"SELECT count() FROM ({production})") == images
        # exactly one score per image and model version: none lost, none twice
        assert one(f"SELECT uniqExact(image_id, model_version) FROM ({production})") == images
        assert (
            one(
                "SELECT count() FROM images WHERE image_id NOT IN "
                "(SELECT image_id FROM scores FINAL WHERE role = 'production')"
            )
            == 0
        )
    finally:
        client.close()
