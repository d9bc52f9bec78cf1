"""The scoring processor through the real runner, the embedded broker, Avro and the real model.

Covers: scores for good images and dead letters (with the reason) for bad ones, with and
without overlapped decoding; a control event takes effect before the next image produced after
it; a full reference window waits for the production calibration and never for a shadow's;
shadow and canary routing by image id, and that neither changes what production serves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from processors.core.artifacts import ArtifactStore
from processors.core.codec import default_codec
from processors.core.config import Settings
from processors.core.control import new_event
from processors.core.imaging import decode_image, encode_fits
from processors.core.kafka import (
    ControlFollower,
    ensure_topics,
    make_consumer,
    make_producer,
    partition_for,
    produce_control_event,
)
from processors.core.metrics import REGISTRY
from processors.core.records import TOPICS, ImageRecord
from processors.core.runner import Runner
from processors.ingest.sources.items import RawImage, to_record
from processors.ingest.synthetic.sky import SyntheticSky
from processors.ood.ensemble import OODEnsemble, energy_score
from processors.ood.reference import ReferenceSet, save_reference
from processors.score.backbone import Backbone
from processors.score.processor import ScoreProcessor
from processors.score.routing import routes_to_canary

CODEC = default_codec()
PARTITIONS = TOPICS["scores"].partitions
DECISION_FIELDS = (
    "model_version",
    "backbone",
    "detectors",
    "ensemble_score",
    "votes_for",
    "votes_needed",
    "is_candidate",
    "calibrated",
    "embedding",
)


@dataclass
class Output:
    topic: str
    partition: int
    record: dict[str, Any]


class Scorer:
    """A ``Runner(ScoreProcessor)`` on a thread, a producer, and a reader of its outputs."""

    def __init__(self, settings: Settings, bootstrap: str, backbone: Backbone) -> None:
        ensure_topics(settings, bootstrap)
        self.settings, self.bootstrap = settings, bootstrap
        self.processor = ScoreProcessor(backbone=backbone)
        self.runner = Runner(self.processor, settings, bootstrap)
        self.producer = make_producer(settings, bootstrap)
        self.reader = make_consumer(
            settings, bootstrap, f"{settings.kafka.group_prefix}.test-reader"
        )
        self.reader.assign(
            [TopicPartition(settings.topic("scores"), p, 0) for p in range(PARTITIONS)]
            + [
                TopicPartition(settings.topic("images.dlq"), p, 0)
                for p in range(TOPICS["images.dlq"].partitions)
            ]
        )
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Scorer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while "follower" not in self.runner.ctx.extra and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop.event.set()
        self.thread.join(60)
        self.reader.close()
        assert not self.thread.is_alive()
        assert not self.errors, self.errors

    @property
    def follower(self) -> ControlFollower:
        follower: ControlFollower = self.runner.ctx.extra["follower"]
        return follower

    def produce(self, records: list[ImageRecord]) -> None:
        for record in records:
            self.produce_raw(
                record["image_id"].encode(),
                CODEC.encode(record, "skyloop.ImageRecord"),
                partition_for(record["source"], TOPICS["images.raw"].partitions),
            )

    def produce_raw(self, key: bytes, value: bytes, partition: int = 0) -> None:
        self.producer.produce(
            self.settings.topic("images.raw"), key=key, value=value, partition=partition
        )
        assert self.producer.flush(30) == 0

    def emit(self, event_type: str, subject: str, params: dict[str, Any]) -> int:
        """Emit a control event; returns its offset (each event is its own batch)."""
        event = new_event(event_type, subject, "test", params)  # type: ignore[arg-type]
        produce_control_event(self.producer, self.settings, event)
        return self.follower.log_end() - 1

    def read(self, n: int, timeout_s: float = 60) -> list[Output]:
        """The next ``n`` outputs (scores and dead letters) in arrival order."""
        out = self.poll(n, timeout_s)
        assert len(out) == n, f"expected {n} outputs, got {len(out)}: {out}"
        return out

    def poll(self, n: int, timeout_s: float) -> list[Output]:
        """Up to ``n`` outputs, whatever arrives within ``timeout_s``."""
        out: list[Output] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            assert not self.errors, self.errors
            for msg in self.reader.consume(n - len(out), 0.2):
                value, topic = msg.value(), msg.topic()
                if msg.error() or value is None or topic is None:
                    continue
                base = topic[len(self.settings.kafka.topic_prefix) :]
                schema = "skyloop.ScoreRecord" if base == "scores" else "skyloop.DeadLetter"
                out.append(Output(base, int(msg.partition() or 0), CODEC.decode(value, schema)))
        return out


@pytest.fixture
def scorer_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "batch_size": 8,
            "batch_max_wait_ms": 50,
            "reference_size": 20,
            "calibration_wait_s": 5.0,
        }
    )


@pytest.fixture
def scorer(scorer_settings: Settings, kafka_bootstrap: str, lite0: Backbone) -> Iterator[Scorer]:
    with Scorer(scorer_settings, kafka_bootstrap, lite0) as running:
        yield running


def sky(
    source: str, seed: int, n: int, start: int = 0, anomaly_rate: float = 0.0
) -> list[ImageRecord]:
    generator = SyntheticSky(name=source, seed=seed, anomaly_rate=anomaly_rate)
    return [to_record(generator.image(i)) for i in range(start, start + n)]


def calibration_params(
    settings: Settings, backbone: Backbone, version: str, source: str, seed: int
) -> dict[str, Any]:
    """A calibration like the controller's: reference = embeddings of 24 images of the source."""
    arrays = [decode_image(r) for r in sky(source, seed, 24, anomaly_rate=0.05)]
    out = backbone.embed(arrays)
    reference = ReferenceSet(out.features, energy_score(out.logits), version)
    artifact_id = save_reference(ArtifactStore(settings.artifacts_dir), reference)
    thresholds = OODEnsemble.fit(reference).thresholds_for_fpr(0.1, 2)
    return {
        "model_version": version,
        "artifact_id": artifact_id,
        "target_fpr": 0.1,
        "vote_k": 2,
        "thresholds": thresholds,
    }


def bad_record(source: str, pixels: bytes, side: int, declared: int | None = None) -> ImageRecord:
    return to_record(
        RawImage(
            source=source,
            survey="test",
            format="fits",
            pixels=pixels,
            width=declared or side,
            height=declared or side,
            bands=1,
            observed_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("chunks", [1, 3])
def test_good_images_are_scored_and_bad_ones_dead_lettered(
    scorer_settings: Settings, kafka_bootstrap: str, lite0: Backbone, chunks: int
) -> None:
    settings = scorer_settings.model_copy(update={"score_chunks": chunks})
    with Scorer(settings, kafka_bootstrap, lite0) as scorer:
        check_good_and_bad_images(scorer, lite0)


def check_good_and_bad_images(scorer: Scorer, lite0: Backbone) -> None:
    good = sky("sky-a", 1, 3) + sky("sky-b", 2, 2)
    nan_only = encode_fits(np.full((16, 16), np.nan, np.float32))
    bad = {
        "no finite pixel values": bad_record("sky-a", nan_only, 16),
        "image has no pixels": bad_record("sky-a", b"", 16),
        "record says 32x32": bad_record("sky-b", encode_fits(np.ones((16, 16))), 16, 32),
        "undecodable FITS": bad_record("sky-b", b"SIMPLE  = this is not FITS", 16),
    }
    scored_a = metric(
        "skyloop_images_scored_total", source="sky-a", role="production", candidate="false"
    )
    latency_n = metric("skyloop_score_latency_seconds_count", role="production")
    dead = metric("skyloop_dead_letters_total", processor="score", error_class="BadImageError")
    garbage = b"\xc3\x01 not an avro record"
    interleaved = [good[0], bad["no finite pixel values"], good[1], bad["image has no pixels"]]
    scorer.produce(interleaved)
    scorer.produce_raw(b"garbage", garbage)
    scorer.produce([good[2], bad["record says 32x32"], *good[3:], bad["undecodable FITS"]])
    outputs = scorer.read(len(good) + len(bad) + 1)

    scores = {o.record["image_id"]: o for o in outputs if o.topic == "scores"}
    assert set(scores) == {r["image_id"] for r in good}
    for record in good:
        out = scores[record["image_id"]]
        score = out.record
        assert score["source"] == record["source"]
        assert out.partition == partition_for(record["source"], PARTITIONS)
        assert score["role"] == "production" and score["model_version"] == lite0.version
        assert score["backbone"] == "efficientnet_lite0"
        # no calibration yet: reference-window scores, never candidates; their pixels travel
        # (the detect processor learns the source's normal boxes from the calibration window)
        assert not score["calibrated"] and not score["is_candidate"]
        assert score.get("image") is not None and score["image"]["image_id"] == record["image_id"]
        assert [d["detector"] for d in score["detectors"]] == ["energy"]
        assert np.isfinite(score["detectors"][0]["raw"])
        assert score["control_offset"] == -1
        assert 1 <= score["batch_size"] <= 8 and score["latency_ms"] > 0
        assert score["embedding"] is not None and len(score["embedding"]) == 2 * 1280

    letters = [o.record for o in outputs if o.topic == "images.dlq"]
    assert len(letters) == len(bad) + 1
    by_raw = {letter["raw"]: letter for letter in letters}
    for reason, record in bad.items():
        letter = by_raw[CODEC.encode(record, "skyloop.ImageRecord")]
        assert letter["error_class"] == "BadImageError"
        assert reason in letter["message"]
        assert letter["original_topic"] == "images.raw" and letter["processor"] == "score"
        assert letter["key"] == record["image_id"].encode()
        # a readable record names its source and its letter sits on the source's partition
        assert letter["source"] == record["source"]
        dlq = [o for o in outputs if o.topic == "images.dlq" and o.record is letter]
        assert dlq[0].partition == partition_for(record["source"], TOPICS["images.dlq"].partitions)
    assert by_raw[garbage]["error_class"] in ("CorruptMessageError", "UnknownSchemaError")
    assert by_raw[garbage]["source"] is None
    assert len({(d["partition"], d["offset"]) for d in letters}) == len(letters)

    after = metric(
        "skyloop_images_scored_total", source="sky-a", role="production", candidate="false"
    )
    assert after - scored_a == 3
    assert metric("skyloop_score_latency_seconds_count", role="production") - latency_n == 5
    dead_after = metric(
        "skyloop_dead_letters_total", processor="score", error_class="BadImageError"
    )
    assert dead_after - dead == len(bad)


def test_a_control_event_takes_effect_before_the_next_image(
    scorer: Scorer, scorer_settings: Settings, lite0: Backbone
) -> None:
    images = sky("sky", 3, 3)
    scorer.produce(images[:1])
    (first,) = scorer.read(1)
    assert first.record["control_offset"] == -1 and not first.record["calibrated"]

    # The brief's protocol: emit, wait until the scorer's follower applied it, then produce.
    params = calibration_params(scorer_settings, lite0, lite0.version, "sky", seed=30)
    calibrated_at = scorer.emit("calibration.updated", "sky", params)
    assert scorer.follower.wait_for_offset(calibrated_at + 1, timeout_s=30)
    scorer.produce(images[1:2])
    (second,) = scorer.read(1)
    score = second.record
    assert score["control_offset"] == calibrated_at
    assert score["calibrated"] and score["votes_needed"] == 2
    assert {d["detector"]: d["threshold"] for d in score["detectors"]} == params["thresholds"]
    assert score["votes_for"] == sum(d["vote"] for d in score["detectors"])
    assert all(d["vote"] == (d["score"] > d["threshold"]) for d in score["detectors"])

    # Stronger: no waiting at all. The event is acknowledged before the image is produced, so
    # the scorer must apply it before scoring the image.
    overridden_at = scorer.emit("threshold.set", "sky", {"thresholds": {"knn": 0.125}})
    scorer.produce(images[2:3])
    (third,) = scorer.read(1)
    score = third.record
    assert score["control_offset"] >= overridden_at
    thresholds = {d["detector"]: d["threshold"] for d in score["detectors"]}
    assert thresholds == {**params["thresholds"], "knn": 0.125}


def test_a_full_reference_window_waits_for_the_production_calibration_only(
    scorer_settings: Settings, kafka_bootstrap: str, lite0: Backbone
) -> None:
    settings = scorer_settings.model_copy(update={"calibration_wait_s": 30.0})
    images = sky("sky", 5, 32)
    shadow = {"model_version": "lite0-shadow", "backbone": "efficientnet_lite0"}
    with Scorer(settings, kafka_bootstrap, lite0) as scorer:
        scorer.emit("model.registered", "lite0-shadow", shadow)  # the fold's roles need it
        scorer.emit("model.shadow_started", "lite0-shadow", shadow)
        scorer.produce(images[:20])  # reference_size: the production window fills
        window = [o.record for o in scorer.read(40)]
        assert {(s["role"], s["calibrated"]) for s in window} == {
            ("production", False),
            ("shadow", False),
        }
        scorer.produce(images[20:21])
        assert scorer.poll(1, timeout_s=2.0) == []  # waits for its calibration
        params = calibration_params(settings, lite0, lite0.version, "sky", seed=50)
        calibrated_at = scorer.emit("calibration.updated", "sky", params)
        waited = {o.record["role"]: o.record for o in scorer.read(2)}
        assert waited["production"]["calibrated"]
        assert waited["production"]["control_offset"] >= calibrated_at
        # The shadow's window is full too, but nothing waits for a shadow calibration.
        started = time.monotonic()
        scorer.produce(images[21:])
        rest = [o.record for o in scorer.read(2 * len(images[21:]))]
        assert time.monotonic() - started < 15
        assert all(s["calibrated"] == (s["role"] == "production") for s in rest)


def production_view(score: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(score[k] for k in DECISION_FIELDS)


def test_shadow_and_canary_are_routed_by_image_id_and_never_change_production(
    scorer_settings: Settings, kafka_bootstrap: str, lite0: Backbone
) -> None:
    # Batches of one image: features then do not depend on batch composition, so production
    # outputs can be compared bit for bit across phases.
    settings = scorer_settings.model_copy(update={"batch_size": 1})
    images = sky("sky", 4, 8, anomaly_rate=0.3)
    ids = [r["image_id"] for r in images]
    routed = {i for i in ids if routes_to_canary(i, 0.5)}
    assert 0 < len(routed) < len(ids)
    reference = calibration_params(settings, lite0, lite0.version, "sky", seed=40)
    with Scorer(settings, kafka_bootstrap, lite0) as scorer:
        scorer.emit("calibration.updated", "sky", reference)
        scorer.produce(images)
        baseline = {o.record["image_id"]: o.record for o in scorer.read(len(images))}
        assert {s["role"] for s in baseline.values()} == {"production"}
        assert all(s["calibrated"] for s in baseline.values())

        # Shadow and canary start; neither has a calibration yet.
        slot = {"backbone": "efficientnet_lite0"}
        for version in ("lite0-shadow", "lite0-canary"):  # the fold's roles need registration
            scorer.emit("model.registered", version, {**slot, "model_version": version})
        scorer.emit(
            "model.shadow_started", "lite0-shadow", {**slot, "model_version": "lite0-shadow"}
        )
        scorer.emit("model.gate_passed", "lite0-canary", {"model_version": "lite0-canary"})
        scorer.emit(
            "model.canary_started",
            "lite0-canary",
            {**slot, "model_version": "lite0-canary", "fraction": 0.5},
        )
        scorer.produce(images)
        outputs = [o.record for o in scorer.read(2 * len(images) + len(routed))]
        production = {s["image_id"]: s for s in outputs if s["role"] == "production"}
        canary = {s["image_id"]: s for s in outputs if s["role"] == "canary"}
        shadow = {s["image_id"]: s for s in outputs if s["role"] == "shadow"}
        assert set(production) == set(ids) and set(shadow) == set(ids)
        assert set(canary) == routed  # scored, not served: the canary is not calibrated
        for image_id in ids:
            assert production_view(production[image_id]) == production_view(baseline[image_id])
        for record in [*canary.values(), *shadow.values()]:
            assert not record["calibrated"] and not record["is_candidate"]
        assert {s["model_version"] for s in shadow.values()} == {"lite0-shadow"}
        assert {s["model_version"] for s in canary.values()} == {"lite0-canary"}

        # Both get calibrations from the production reference: same weights, same reference,
        # so their decisions must equal production's; the canary now serves its images.
        for version in ("lite0-shadow", "lite0-canary"):
            scorer.emit("calibration.updated", "sky", {**reference, "model_version": version})
        scorer.produce(images)
        outputs = [o.record for o in scorer.read(2 * len(images) + len(routed))]
        production = {s["image_id"]: s for s in outputs if s["role"] == "production"}
        canary = {s["image_id"]: s for s in outputs if s["role"] == "canary"}
        shadow = {
            s["image_id"]: s
            for s in outputs
            if s["role"] == "shadow" and s["model_version"] == "lite0-shadow"
        }
        # production's unserved verdicts on the canary's images (for canary health)
        paired = {
            s["image_id"]: s
            for s in outputs
            if s["role"] == "shadow" and s["model_version"] == lite0.version
        }
        assert set(canary) == routed and set(production) == set(ids) - routed
        assert set(shadow) == set(ids) and set(paired) == routed
        for image_id in routed:
            assert production_view(paired[image_id])[1:] == production_view(baseline[image_id])[1:]
        for image_id in ids:
            served = canary.get(image_id) or production[image_id]
            for other in (served, shadow[image_id]):
                same = {k: other[k] for k in DECISION_FIELDS if k != "model_version"}
                assert same == {k: baseline[image_id][k] for k in same}
        assert any(s["is_candidate"] for s in baseline.values())

        # A shadow whose weights cannot be loaded is left out; production goes on.
        broken = {
            "model_version": "broken",
            "backbone": "efficientnet_lite0",
            "artifact_id": "0" * 64,
        }
        scorer.emit("model.registered", "broken", broken)
        scorer.emit("model.shadow_started", "broken", broken)
        scorer.produce(images[:2])
        outputs = [o.record for o in scorer.read(2 + len(routed & set(ids[:2])))]
        assert all(s["model_version"] != "broken" for s in outputs)
        assert {s["image_id"] for s in outputs} == set(ids[:2])

        # Promoting the canary makes it production: its version, its calibration, no slots.
        scorer.emit(
            "model.promoted",
            "lite0-canary",
            {"model_version": "lite0-canary", "backbone": "efficientnet_lite0"},
        )
        scorer.produce(images)
        outputs = [o.record for o in scorer.read(len(images))]
        assert {s["role"] for s in outputs} == {"production"}
        assert {s["model_version"] for s in outputs} == {"lite0-canary"}
        for score in outputs:
            same = {k: score[k] for k in DECISION_FIELDS if k != "model_version"}
            assert same == {k: baseline[score["image_id"]][k] for k in same}
