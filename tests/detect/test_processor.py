"""The detect processor on the embedded broker: served candidates in, localized candidates out.

Score records are made as the scorer makes them (a served candidate carries its image); the
images are synthetic difference cutouts with known anomalies, and one candidate sits next to a
real bright star of the bundled Gaia catalog. What must hold: boxes come from the image's own
pixels (source extraction: no detector serves yet), a confident candidate away from stars is a
pseudo-label whose training sample is stored and readable and boxes the anomaly, not the
sources every normal image of its source has (learnt from the unflagged scores that carry their
image), the one on a bright star is rejected with that reason, shadows and non-candidates make
nothing, and an undecodable score is a dead letter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.kafka import ensure_topics, make_consumer, make_producer, partition_for
from processors.core.records import TOPICS, ImageRecord, ScoreRecord
from processors.core.runner import Runner
from processors.detect.catalogs import gaia_bright_stars
from processors.detect.processor import DetectProcessor
from processors.ingest.sources.items import to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.yolo.samples import TrainingSample

CODEC = default_codec()


def score_of(
    image: ImageRecord, *, candidate: bool, role: str = "production", sample: bool = False
) -> ScoreRecord:
    """A score as the scorer makes it; ``sample``: an unflagged one that carries its image."""
    scores = {"mahalanobis": 0.999, "energy": 0.2, "knn": 0.995}
    record = ScoreRecord(
        image_id=image["image_id"],
        source=image["source"],
        model_version="lite0@test",
        backbone="efficientnet_lite0",
        role=role,  # type: ignore[typeddict-item]
        detectors=[
            {"detector": d, "raw": s, "score": s, "threshold": 0.95, "vote": s >= 0.95}
            for d, s in scores.items()
        ],
        ensemble_score=sum(scores.values()) / 3,
        votes_for=2,
        votes_needed=2,
        is_candidate=candidate,
        calibrated=True,
        batch_size=8,
        latency_ms=5.0,
        control_offset=-1,
        scored_at=datetime.now(UTC),
        embedding=None,
        calibration_id="cal-1",
    )
    if (candidate or sample) and role != "shadow":
        record["image"] = image
    return record


class Detector:
    """A ``Runner(DetectProcessor)`` on a thread, a producer of scores, a reader of outputs."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        ensure_topics(settings, bootstrap)
        self.settings = settings
        self.runner = Runner(DetectProcessor(), settings, bootstrap)
        self.producer = make_producer(settings, bootstrap)
        self.reader = make_consumer(
            settings, bootstrap, f"{settings.kafka.group_prefix}.test-reader"
        )
        self.reader.assign(
            [
                TopicPartition(settings.topic(t), p, 0)
                for t in ("candidates", "images.dlq")
                for p in range(TOPICS[t].partitions)
            ]
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.errors.append(exc)

    def produce(self, records: list[ScoreRecord], raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
        topic = self.settings.topic("scores")
        for r in records:
            partition = partition_for(r["source"], TOPICS["scores"].partitions)
            value = CODEC.encode(r, "skyloop.ScoreRecord")
            self.producer.produce(
                topic, key=r["image_id"].encode(), value=value, partition=partition
            )
        for value in raw:
            self.producer.produce(topic, key=b"junk", value=value, partition=0)
        assert self.producer.flush(30) == 0

    def read(self, n: int, timeout_s: float = 90) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            assert not self.errors, self.errors
            for msg in self.reader.consume(n - len(out), 0.2):
                value, topic = msg.value(), msg.topic()
                if msg.error() or value is None or topic is None:
                    continue
                base = topic[len(self.settings.kafka.topic_prefix) :]
                schema = "skyloop.CandidateRecord" if base == "candidates" else "skyloop.DeadLetter"
                out.append((base, CODEC.decode(value, schema)))
        assert len(out) == n, f"expected {n} outputs, got {len(out)}"
        return out

    def read_nothing_more(self, quiet_s: float = 2.0) -> list[Any]:
        """Whatever else arrives within ``quiet_s`` (a test expects none)."""
        return [m for m in self.reader.consume(10, quiet_s) if m.error() is None]


@pytest.fixture
def detector(settings: Settings, kafka_bootstrap: str) -> Iterator[Detector]:
    running = Detector(settings.model_copy(update={"batch_max_wait_ms": 50}), kafka_bootstrap)
    running.thread.start()
    try:
        yield running
    finally:
        running.runner.stop.event.set()
        running.thread.join(60)
        running.reader.close()
        assert not running.errors, running.errors


def anomalies(n: int) -> list[ImageRecord]:
    sky = SyntheticSky(name="sky", seed=4, kind="difference", anomaly_rate=1.0)
    images = [to_record(sky.image(i)) for i in range(40)]
    return [r for r in images if r["truth"] and r["truth"]["kind"] in ("streak", "blob")][:n]


def normal_samples(n: int) -> list[ScoreRecord]:
    """Unflagged scores of the same source carrying their (anomaly-free) images."""
    sky = SyntheticSky(name="sky", seed=9, kind="difference", anomaly_rate=0.0)
    return [score_of(to_record(sky.image(i)), candidate=False, sample=True) for i in range(n)]


def _overlaps(box: Any, truth: Any) -> bool:
    overlap_x = min(box["x2"], truth["x2"]) - max(box["x1"], truth["x1"])
    overlap_y = min(box["y2"], truth["y2"]) - max(box["y1"], truth["y1"])
    return overlap_x > 0 and overlap_y > 0


def test_candidates_are_localized_from_their_pixels_cross_matched_and_labelled(
    detector: Detector, settings: Settings
) -> None:
    away, on_star, shadowed, plain = anomalies(4)
    star = gaia_bright_stars()
    bright = int(star.magnitudes.argmin())  # the brightest star of the catalog
    ra, dec = float(star.ra_deg[bright]), float(star.dec_deg[bright])
    on_star = {**on_star, "ra": ra + 5 / 3600, "dec": dec}
    away = {**away, "ra": 10.0, "dec": -89.0}  # no catalogued star or galaxy near the pole
    no_image = score_of(plain, candidate=True)
    no_image.pop("image")
    detector.produce(
        [
            *normal_samples(150),
            score_of(away, candidate=True),
            score_of(on_star, candidate=True),  # type: ignore[arg-type]
            score_of(shadowed, candidate=True, role="shadow"),
            score_of(plain, candidate=False),
            no_image,
        ],
        raw=[b"\xc3\x01 not avro"],
    )
    outputs = detector.read(4)  # the normal samples make no output
    candidates = {r["image_id"]: r for topic, r in outputs if topic == "candidates"}
    letters = [r for topic, r in outputs if topic == "images.dlq"]
    assert set(candidates) == {away["image_id"], on_star["image_id"], plain["image_id"]}
    assert len(letters) == 1 and letters[0]["processor"] == "detect"

    good = candidates[away["image_id"]]
    assert good["detector_role"] == "baseline" and good["boxes"]
    truth = away["truth"]["boxes"][0]  # type: ignore[index]
    assert _overlaps(good["boxes"][0], truth), (good["boxes"][0], truth)  # on the anomaly
    assert good["label_status"] == "pseudo_label", good["label_reason"]
    sample = TrainingSample.from_bytes(
        ArtifactStore(settings.artifacts_dir).get_bytes(good["sample_id"])
    )
    assert sample.image_id == away["image_id"]
    assert sample.plane.shape == (away["height"], away["width"])
    # the pseudo-label boxes the anomaly (its parts merged) and leaves out what normal images
    # of the source have
    assert sample.boxes and all(_overlaps(b, truth) for b in sample.boxes), (sample.boxes, truth)
    assert len(sample.boxes) < len(good["boxes"])

    starred = candidates[on_star["image_id"]]
    kinds = {(m["catalog"], m.get("kind")) for m in starred["crossmatches"]}
    assert ("gaia", "star") in kinds
    assert starred["label_status"] == "rejected"
    assert "star" in starred["label_reason"] and starred["sample_id"] is None

    bare = candidates[plain["image_id"]]
    assert bare["boxes"] == [] and bare["label_status"] == "pending"  # nothing invented


def test_no_pseudo_label_before_the_source_has_normal_boxes(detector: Detector) -> None:
    (away,) = anomalies(1)
    away = {**away, "ra": 10.0, "dec": -89.0}
    detector.produce([score_of(away, candidate=True)])  # type: ignore[arg-type]
    ((_, candidate),) = detector.read(1)
    assert candidate["boxes"]  # localized all the same
    assert candidate["label_status"] == "rejected" and candidate["sample_id"] is None
    assert "normal boxes of its source: 0 of 64" in candidate["label_reason"]


def test_the_calibration_window_judges_until_the_served_sample_is_large_enough(
    detector: Detector,
) -> None:
    """Uncalibrated scores carrying their images (a source's calibration window) fill a
    provisional reference: the source's first candidate is judged at once, and says so."""
    (away,) = anomalies(1)
    away = {**away, "ra": 10.0, "dec": -89.0}
    window = normal_samples(150)
    for score in window:
        score["calibrated"] = False
    detector.produce([*window, score_of(away, candidate=True)])  # type: ignore[arg-type]
    ((_, candidate),) = detector.read(1)
    assert candidate["label_status"] == "pseudo_label", candidate["label_reason"]
    assert candidate["label_reason"].endswith("; normal boxes from the calibration window")


def test_a_candidate_added_by_a_revision_is_localized_from_its_stored_image(
    settings: Settings, kafka_bootstrap: str, tmp_path: Any
) -> None:
    """A revision that flags an image its live score did not: its pixels come from the
    warehouse (here a real chdb the sink's writer filled) and it is localized like any
    candidate; one whose image is not stored becomes a pending candidate that says why; a
    revision that withdraws a candidate produces nothing."""
    from processors.core.clickhouse import connect
    from processors.core.warehouse_rows import ClickHouseRows
    from processors.sink.migrations import apply_migrations
    from processors.sink.writer import ClickHouseWriter

    stored, unstored, withdrawn = anomalies(3)
    dsn = f"chdb://{tmp_path / 'warehouse'}"
    client = connect(dsn)
    apply_migrations(client)
    ClickHouseWriter(client).insert("images.raw", [(stored, 0, 0)])
    client.close()

    def revision(image: ImageRecord, *, now: bool, was: bool) -> dict[str, Any]:
        live = score_of(image, candidate=was)
        return {
            "image_id": image["image_id"],
            "source": image["source"],
            "model_version": live["model_version"],
            "revision": 1,
            "detectors": live["detectors"],
            "ensemble_score": live["ensemble_score"],
            "votes_for": 2 if now else 0,
            "votes_needed": 2,
            "is_candidate": now,
            "was_candidate": was,
            "calibration_id": "cal-2",
            "revised_calibration_id": "cal-1",
            "revision_event_id": "rev-1",
            "revised_at": datetime.now(UTC),
        }

    running = Detector(settings.model_copy(update={"batch_max_wait_ms": 50}), kafka_bootstrap)
    running.runner.processor.warehouse = ClickHouseRows(dsn)  # type: ignore[attr-defined]
    running.thread.start()
    try:
        running.produce(normal_samples(40))  # the source's normal boxes, as usual
        topic = running.settings.topic("scores.revised")
        for image, now, was in (
            (stored, True, False),
            (unstored, True, False),
            (withdrawn, False, True),
        ):
            running.producer.produce(
                topic,
                key=image["image_id"].encode(),
                value=CODEC.encode(revision(image, now=now, was=was), "skyloop.ScoreRevision"),
                partition=partition_for(image["source"], TOPICS["scores.revised"].partitions),
            )
        assert running.producer.flush(30) == 0
        out = {c["image_id"]: c for _, c in running.read(2)}
        assert not running.read_nothing_more()
    finally:
        running.runner.stop.event.set()
        running.thread.join(60)
        running.reader.close()
    assert not running.errors, running.errors
    assert set(out) == {stored["image_id"], unstored["image_id"]}
    localized = out[stored["image_id"]]
    assert localized["boxes"] and localized["detector_role"] == "baseline"
    assert any(_overlaps(b, t) for b in localized["boxes"] for t in stored["truth"]["boxes"])  # type: ignore[index]
    pending = out[unstored["image_id"]]
    assert pending["boxes"] == [] and pending["label_status"] == "pending"
    assert "not in the warehouse" in (pending["label_reason"] or "")
