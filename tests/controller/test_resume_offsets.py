"""Where a restarted controller resumes its inputs: after the highest offset its table says it
applied (written after the heads it stands for), never at a consumer group's commit that ran
ahead of the table (:mod:`processors.controller.service`, :mod:`processors.controller.consumer`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from processors.controller.controller import ControllerConfig
from processors.controller.service import ControlService
from processors.controller.tables import DictTable
from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.progress import ProgressFile
from processors.core.records import ScoreRecord
from tools.bench.policy_sim import StreamFeatures
from tools.bench.policy_sim import replay as simulate

CODEC = default_codec()


class OrderedTable(DictTable):
    """A dict table that keeps the order of its writes, as a changelog partition would."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def put(self, key: str, value: bytes, partition: int) -> None:
        super().put(key, value, partition)
        self.writes.append(key)


def _scores(tmp_path: Path, n: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    features = rng.gamma(2.0, 1.0, size=(n, 64)).astype(np.float32)
    stream = StreamFeatures(features, rng.normal(-8.0, 0.5, n), np.zeros(n, bool), [""] * n)
    store = ArtifactStore(tmp_path / "sim")
    records: list[ScoreRecord] = simulate(
        stream, ControllerConfig(), keep_records=True, store=store
    ).records
    return [CODEC.encode(r, "skyloop.ScoreRecord") for r in records]


def _service(settings: Settings, table: DictTable) -> ControlService:
    return ControlService(settings, "unused:9092", ProgressFile(None, "stats"), table, DictTable())


def test_the_table_says_where_each_input_partition_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    scores = _scores(tmp_path, 40)  # fewer than a reference window: no event to produce
    table = OrderedTable()
    service = _service(settings, table)
    topic = settings.topic("scores")
    # never applied: from the beginning, whatever the group committed
    assert service.resume_offset(topic, 1) == 0

    service.on_scores([(1, 10 + i, value) for i, value in enumerate(scores[:20])])
    service.on_scores([(1, 30, b"not avro"), (2, 5, b"not avro")])  # handled, though unreadable
    assert service.resume_offset(topic, 1) == 31
    assert service.resume_offset(topic, 2) == 6
    assert service.resume_offset(topic, 0) == 0
    assert service.resume_offset(settings.topic("images.dlq"), 1) == 0  # per input topic
    assert service.resume_offset("someone-elses-topic", 1) is None
    # written after the heads it stands for, so a changelog cut anywhere never resumes past them
    first = table.writes.index("applied|scores|1")
    assert any(key.startswith("source|") for key in table.writes[:first])

    # a restarted worker reads it from its restored table; redelivered records never lower it
    restarted = _service(settings, table)
    assert restarted.resume_offset(topic, 1) == 31
    restarted.on_scores([(1, 10 + i, value) for i, value in enumerate(scores[:20])])
    assert restarted.resume_offset(topic, 1) == 31
    assert restarted.progress.counts["redelivered"] == 20
    assert restarted.progress.counts.get("applied", 0) == 0


def test_records_never_handed_over_are_counted_as_a_gap(settings: Settings) -> None:
    service = _service(settings, OrderedTable())
    service.order.wait_s = 0.0  # a hole is rewound, then accepted, at the next ticks
    topic = settings.topic("scores")
    service.on_scores([(0, 3, b"x"), (0, 4, b"x"), (1, 0, b"x")])
    assert "gaps" not in service.progress.counts  # a first record anywhere is no gap
    service.on_scores([(0, 4, b"x"), (0, 5, b"x")])  # redelivered, then the next: no gap
    assert "gaps" not in service.progress.counts
    service.on_scores([(0, 9, b"x"), (1, 1, b"x"), (1, 5, b"x")])
    assert "gaps" not in service.progress.counts  # 9 and 5 wait for their holes to fill
    assert service.resume_offset(topic, 0) == 6
    assert service.rewinds({}) == [(topic, 0, 6), (topic, 1, 2)]
    service.tick()  # still open after the rewind: accepted
    assert service.progress.counts["gaps"] == 3 + 3  # 6-8 on partition 0, 2-4 on 1
    assert service.resume_offset(topic, 0) == 10
    assert service.resume_offset(topic, 1) == 6


def test_a_new_hot_log_epoch_resumes_at_its_beginning_and_drops_the_old_key(
    settings: Settings,
) -> None:
    table = OrderedTable()
    service = _service(settings, table)
    service.on_scores([(2, 40, b"x")])
    assert "applied|scores|2" in table.data
    rotated = _service(settings, table)  # the worker after a rotation: offsets restart at 0
    rotated.epoch = 1
    assert rotated.resume_offset(settings.topic("scores"), 2) == 0
    rotated.on_scores([(2, 0, b"x")])
    assert "gaps" not in rotated.progress.counts
    assert "applied|scores|2" not in table.data  # bounded: one key per partition and epoch
    assert rotated.resume_offset(settings.topic("scores"), 2) == 1
