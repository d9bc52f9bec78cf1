"""The stats/controller worker killed mid-stream (kill -9) and restarted, against a clean run.

Real parts only: the score stream is made by the real scoring decisions (decide + OODEnsemble)
on synthetic features with a drift, produced to the embedded broker; ``skyloop worker stats``
runs as a child process (Faust, changelog-backed tables); its tables are read back from their
changelog topics, as a restarted worker restores them. Expected: the killed-and-restarted
worker ends with tables equal to the clean run's, its first reference window survives the kill
(the first calibration is the clean run's, same id and same artifact), and no control event is
emitted twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from processors.controller.controller import ControllerConfig
from processors.controller.state import SourceState
from processors.controller.tables import folded
from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings, load_settings
from processors.core.kafka import ensure_topics, make_producer, partition_for
from processors.core.progress import read_progress
from processors.core.records import TOPICS, ScoreRecord
from tools.bench.policy_sim import StreamFeatures
from tools.bench.policy_sim import replay as simulate

pytestmark = pytest.mark.e2e

N, ONSET, SOURCE = 1100, 600, "sim"
CODEC = default_codec()


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[ScoreRecord]:
    rng = np.random.default_rng(11)
    features = rng.gamma(2.0, 1.0, size=(N, 64)).astype(np.float32)
    features[ONSET:, :16] += 1.5
    stream = StreamFeatures(features, rng.normal(-8.0, 0.5, N), np.zeros(N, bool), [""] * N)
    store = ArtifactStore(tmp_path_factory.mktemp("sim") / "artifacts")
    result = simulate(stream, ControllerConfig(), keep_records=True, store=store)
    assert "drift.detected" in [e["type"] for e in result.events]  # the stream has a drift
    return result.records


class Run:
    """One stats worker setup: own topics, group and data dir, the same score records."""

    def __init__(self, bootstrap: str, tmp: Path, records: list[ScoreRecord]) -> None:
        token = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.data = tmp / token
        self.settings: Settings = load_settings(
            data_dir=self.data, topic_prefix=f"r{token}.", group_prefix=f"g{token}"
        )
        ensure_topics(self.settings, bootstrap)
        producer = make_producer(self.settings, bootstrap)
        self.last: dict[int, int] = {}
        partition = partition_for(SOURCE, TOPICS["scores"].partitions)
        for i, record in enumerate(records):
            producer.produce(
                self.settings.topic("scores"),
                key=record["image_id"].encode(),
                value=CODEC.encode(record, "skyloop.ScoreRecord"),
                partition=partition,
            )
            self.last[partition] = i
            producer.poll(0)
        producer.flush(30)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "SKYLOOP_BOOTSTRAP_SERVERS": self.bootstrap,
            "SKYLOOP_DATA_DIR": str(self.data),
            "SKYLOOP_PROGRESS_DIR": str(self.data / "progress"),
            "SKYLOOP_TOPIC_PREFIX": self.settings.kafka.topic_prefix,
            "SKYLOOP_GROUP_PREFIX": self.settings.kafka.group_prefix,
            "HF_HUB_OFFLINE": "1",
        }
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data / "stats.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processors.cli", "worker", "stats"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        (self.data / "progress" / "stats.json").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert self.proc is not None and self.proc.poll() is None, (
                f"stats worker exited: {(self.data / 'stats.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def gaps(self) -> list[str]:
        """The worker's complaints of records it was never handed (every process of this run)."""
        log = self.data / "stats.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return [line for line in lines if "records never seen" in line]

    def applied(self) -> int:
        return int(read_progress(self.data / "progress", "stats").get("applied", 0))

    def applied_since_restart(self, n: int) -> bool:
        """This process applied ``n`` scores, or read the whole stream: the process before it
        may have applied most of it before its kill (progress is written in steps)."""
        progress = read_progress(self.data / "progress", "stats")
        return int(progress.get("applied", 0)) >= n or int(progress.get("consumed", 0)) >= N

    def read(self, topic: str) -> list[tuple[Any, Any]]:
        """Every (key, value) of a topic, all partitions, each in offset order.

        Reads until the topic has been quiet for 2 s, not up to the high watermark: the
        embedded broker reports it too low after batched writes (ARCHITECTURE.md, "The local
        stack").
        """
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}"}
        )
        by_partition: dict[int, list[tuple[Any, Any]]] = {}
        try:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, 0) for p in sorted(meta.partitions)])
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 2.0:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                by_partition.setdefault(int(msg.partition() or 0), []).append(
                    (msg.key(), msg.value())
                )
                quiet_since = time.monotonic()
        finally:
            consumer.close()
        return [kv for p in sorted(by_partition) for kv in by_partition[p]]

    def table(self, name: str) -> dict[Any, Any]:
        """The table as its changelog rebuilds it: the last value per key, tombstones delete."""
        state: dict[Any, Any] = {}
        for key, value in self.read(f"{self.settings.group('stats')}-{name}-changelog"):
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state

    def controller_state(self) -> dict[str, bytes]:
        """The ``controller`` table with loose ring slots folded into their blocks
        (:func:`~processors.controller.tables.folded`): runs whose batches fell differently hold
        the same ring under different keys."""
        return folded({json.loads(k): v for k, v in self.table("controller").items()})

    def finished(self) -> bool:
        head = self.table("controller").get(f'"source|{SOURCE}"'.encode())
        if head is None:
            return False
        offsets = SourceState.from_bytes(head).offsets
        return all(offsets.get(f"scores:{p}", -1) >= last for p, last in self.last.items())

    def revisions(self) -> set[tuple[str, int, bool]]:
        """(image, revision, revised verdict) of every ``scores.revised`` record."""
        return {
            (r["image_id"], r["revision"], r["is_candidate"])
            for r in (
                CODEC.decode(value, "skyloop.ScoreRevision")
                for _key, value in self.read(self.settings.topic("scores.revised"))
            )
        }

    def events(self) -> list[dict[str, Any]]:
        return [
            CODEC.decode(value, "skyloop.ControlEvent")
            for _key, value in self.read(self.settings.topic("control.events"))
        ]


def test_a_killed_worker_restores_its_tables_and_emits_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path, records: list[ScoreRecord]
) -> None:
    clean = Run(kafka_bootstrap, tmp_path, records)
    killed = Run(kafka_bootstrap, tmp_path, records)
    try:
        clean.start()
        clean.wait(clean.finished, "the clean run to apply every score")
        clean.stop()

        killed.start()  # killed inside the first reference window, then after the drift
        killed.wait(lambda: killed.applied() >= 40, "the first 40 scores")
        killed.kill()
        killed.start()
        killed.wait(lambda: killed.applied_since_restart(400), "400 more scores after the restart")
        killed.kill()
        killed.start()
        killed.wait(killed.finished, "the restarted run to apply every score")
        killed.stop()
    finally:
        clean.stop()
        killed.stop()

    # Faust's own folder is the run's, not "<app id>-data" in whatever directory it started in
    assert (clean.data / "controller").is_dir()
    assert not clean.gaps() and not killed.gaps(), "records skipped"
    clean_events, killed_events = clean.events(), killed.events()
    ids = [e["event_id"] for e in killed_events]
    assert len(ids) == len(set(ids)), "an event was emitted twice"

    def described(events: list[dict[str, Any]]) -> list[str]:
        return [f"{e['type']} {e['params'].get('reason')} {e['event_id'][:8]}" for e in events]

    if ids != [e["event_id"] for e in clean_events]:
        print("killed:", *described(killed_events), sep="\n  ")
        print("clean:", *described(clean_events), sep="\n  ")
    assert ids == [e["event_id"] for e in clean_events]
    kinds = [e["type"] for e in clean_events]
    assert kinds[0] == "calibration.updated" and "drift.detected" in kinds
    first = killed_events[0]  # built from the reference window the kill interrupted
    assert first["params"]["reason"] == "initial"
    assert first["params"]["artifact_id"] == clean_events[0]["params"]["artifact_id"]
    assert killed.controller_state() == clean.controller_state()
    assert killed.table("lane_windows") == clean.table("lane_windows")
    # the drift's revision: the same decisions revised, however often a restart produced them
    assert "decisions.revised" in kinds
    revised = [clean.revisions(), killed.revisions()]
    assert revised[0] and revised[0] == revised[1]
