"""A ``skyloop worker stats`` process over a fixed score stream, and what its topics hold.

Shared by the controller's kill and compaction tests (tests/controller/test_restart.py,
test_compaction.py): each builds runs of the real worker (Faust, changelog-backed tables) as a
child process on the embedded broker, each run with its own topics, group and data dir, and
compares their :class:`Outcome` with one clean run's (made once per session in conftest.py).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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

N, ONSET, SOURCE = 1100, 600, "sim"
CODEC = default_codec()


def make_records(folder: Path) -> list[ScoreRecord]:
    """The score stream: the real scoring decisions on synthetic features, a drift at ONSET."""
    rng = np.random.default_rng(11)
    features = rng.gamma(2.0, 1.0, size=(N, 64)).astype(np.float32)
    features[ONSET:, :16] += 1.5
    stream = StreamFeatures(features, rng.normal(-8.0, 0.5, N), np.zeros(N, bool), [""] * N)
    store = ArtifactStore(folder / "artifacts")
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
        """Every (key, value) of a topic, all partitions, each in offset order."""
        return self.read_all([topic])[topic]

    def read_all(self, topics: list[str]) -> dict[str, list[tuple[Any, Any]]]:
        """Every (key, value) of each topic, as :meth:`read`, in one pass.

        Reads until the topics have been quiet for 2 s, not up to the high watermark: the
        embedded broker reports it too low after batched writes (ARCHITECTURE.md, "The local
        stack").
        """
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex}"}
        )
        by_partition: dict[tuple[str, int], list[tuple[Any, Any]]] = {}
        try:
            assigned = []
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                assigned += [TopicPartition(topic, p, 0) for p in sorted(meta.partitions)]
            consumer.assign(assigned)
            quiet_since = time.monotonic()
            while time.monotonic() - quiet_since < 2.0:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                where = (str(msg.topic()), int(msg.partition() or 0))
                by_partition.setdefault(where, []).append((msg.key(), msg.value()))
                quiet_since = time.monotonic()
        finally:
            consumer.close()
        return {
            topic: [kv for (t, _p), kvs in sorted(by_partition.items()) if t == topic for kv in kvs]
            for topic in topics
        }

    def changelog(self, name: str) -> str:
        """The changelog topic of the worker's table ``name``."""
        return f"{self.settings.group('stats')}-{name}-changelog"

    @staticmethod
    def fold(changelog: list[tuple[Any, Any]]) -> dict[Any, Any]:
        """A table as its changelog rebuilds it: the last value per key, tombstones delete."""
        state: dict[Any, Any] = {}
        for key, value in changelog:
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state

    def table(self, name: str) -> dict[Any, Any]:
        """The table ``name`` as its changelog rebuilds it."""
        return self.fold(self.read(self.changelog(name)))

    def finished(self) -> bool:
        head = self.table("controller").get(f'"source|{SOURCE}"'.encode())
        if head is None:
            return False
        offsets = SourceState.from_bytes(head).offsets
        return all(offsets.get(f"scores:{p}", -1) >= last for p, last in self.last.items())

    def outcome(self) -> Outcome:
        """What the run left on its topics, read in one pass (once it is stopped)."""
        events, controller, lane_windows, revised = topics = [
            self.settings.topic("control.events"),
            self.changelog("controller"),
            self.changelog("lane_windows"),
            self.settings.topic("scores.revised"),
        ]
        read = self.read_all(topics)
        # loose ring slots folded into their blocks (processors.controller.tables.folded): runs
        # whose batches fell differently hold the same ring under different keys
        table = self.fold(read[controller])
        return Outcome(
            data=self.data,
            gaps=self.gaps(),
            events=[CODEC.decode(v, "skyloop.ControlEvent") for _k, v in read[events]],
            controller_state=folded({json.loads(k): v for k, v in table.items()}),
            lane_windows=self.fold(read[lane_windows]),
            revisions={  # (image, revision, revised verdict)
                (r["image_id"], r["revision"], r["is_candidate"])
                for r in (CODEC.decode(v, "skyloop.ScoreRevision") for _k, v in read[revised])
            },
        )


@dataclass(frozen=True)
class Outcome:
    """What a stopped run left on its topics (:meth:`Run.outcome`): what the tests compare."""

    data: Path
    gaps: list[str]
    events: list[dict[str, Any]]
    controller_state: dict[str, bytes]
    lane_windows: dict[Any, Any]
    revisions: set[tuple[str, int, bool]]
