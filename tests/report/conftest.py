"""A small realistic warehouse for the report tests, written through the real codec and writer.

Day ``DAY`` holds two sources: ``synth-a`` (PNG cutouts with ground truth) and ``ztf-public``
(FITS cutouts with ZTF provenance, one with NaN pixels), shadow scores, detector candidates, a
control event and three dead letters; one image of the day before must stay out of the report.
Every message is delivered twice (at-least-once), so the report must count distinct records.

The ``corrections`` fixture adds what the controller's self-correction writes on
``control.events`` around that day (a calibration the day before, then decay, drift and
recalibration, an operator's override, source and pipeline pauses, a rebalance, and a drift of
the next day), in log order = time order, as a single-partition log with one clock would be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.core.clickhouse import Client, connect
from processors.core.codec import default_codec
from processors.core.imaging import encode_fits, encode_png
from processors.sink.migrations import apply_migrations
from processors.sink.writer import ClickHouseWriter

DAY = date(2025, 3, 14)
NOON = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
SCHEMAS = {
    "images.raw": "skyloop.ImageRecord",
    "scores": "skyloop.ScoreRecord",
    "candidates": "skyloop.CandidateRecord",
    "control.events": "skyloop.ControlEvent",
    "images.dlq": "skyloop.DeadLetter",
}


@dataclass
class Dataset:
    """What was written, for the tests to compute expected figures independently."""

    day: date = DAY

    messages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    truth: dict[str, bool] = field(default_factory=dict)
    flagged: set[str] = field(default_factory=set)
    latency: dict[str, list[float]] = field(default_factory=dict)

    def add(self, topic: str, record: dict[str, Any]) -> dict[str, Any]:
        codec = default_codec()
        decoded = codec.decode(codec.encode(record, SCHEMAS[topic]), SCHEMAS[topic])
        self.messages.setdefault(topic, []).append(decoded)
        return decoded

    def of_day(self, topic: str, time_field: str) -> list[dict[str, Any]]:
        return [r for r in self.messages.get(topic, []) if r[time_field].date() == DAY]


def _image(source: str, pixels: bytes, fmt: str, shape: tuple[int, int, int], **extra: Any):
    return {
        "image_id": hashlib.sha256(source.encode() + b"\0" + pixels).hexdigest(),
        "source": source,
        "survey": "ZTF" if source.startswith("ztf") else "synthetic",
        "ra": None,
        "dec": None,
        "observed_at": NOON - timedelta(minutes=5),
        "fetched_at": NOON,
        "format": fmt,
        "pixels": pixels,
        "uri": None,
        "width": shape[1],
        "height": shape[0],
        "bands": shape[2],
        "provenance": {},
        "truth": None,
    } | extra


def _score(img: dict[str, Any], n: int, *, flagged: bool, latency: float, role: str = "production"):
    ens = 0.97 - 0.01 * n if flagged else 0.30 + 0.05 * n
    return {
        "image_id": img["image_id"],
        "source": img["source"],
        "model_version": "m1" if role == "production" else "m2",
        "backbone": "efficientnet_lite0",
        "role": role,
        "detectors": [
            {"detector": d, "raw": 10.0 * ens, "score": ens, "threshold": 0.9, "vote": flagged}
            for d in ("mahalanobis", "energy", "knn")
        ],
        "ensemble_score": ens,
        "votes_for": 3 if flagged else 0,
        "votes_needed": 2,
        "is_candidate": flagged,
        "calibrated": True,
        "batch_size": 8,
        "latency_ms": latency,
        "control_offset": 0,
        "scored_at": img["fetched_at"] + timedelta(seconds=n + 1),
        "embedding": None,
    }


def build_dataset() -> Dataset:
    data = Dataset()
    rng = np.random.default_rng(7)
    kinds = {0: "blob", 1: "blob", 2: "streak"}
    synth_flagged = {0, 1, 3}  # 2 is missed, 3 is a false alarm
    for n in range(8):
        pixels = encode_png(rng.integers(0, 200, (32, 32, 3), dtype=np.uint8))
        truth = {"is_anomaly": n in kinds, "kind": kinds.get(n), "segment": "stable"}
        img = data.add(
            "images.raw",
            _image("synth-a", pixels, "png", (32, 32, 3), truth=truth, ra=10.0 + n, dec=-5.0),
        )
        flagged = n in synth_flagged
        latency = 5.0 + n * 1.5
        data.add("scores", _score(img, n, flagged=flagged, latency=latency))
        data.truth[img["image_id"]] = n in kinds
        data.latency.setdefault("synth-a", []).append(latency)
        if flagged:
            data.flagged.add(img["image_id"])
        if n < 2:
            data.add("scores", _score(img, n, flagged=not flagged, latency=9.0, role="shadow"))
            data.add(
                "candidates",
                {
                    "image_id": img["image_id"],
                    "source": "synth-a",
                    "model_version": "m1",
                    "ensemble_score": 0.97,
                    "detector_scores": {"knn": 0.97},
                    "ra": 10.0,
                    "dec": -5.0,
                    "boxes": [
                        {"label": "blob", "confidence": 0.9, "x1": 1, "y1": 1, "x2": 8, "y2": 8}
                    ],
                    "crossmatches": [
                        {"catalog": "gaia", "object_id": f"G{n}", "separation_arcsec": 0.4}
                    ],
                    "label_status": "pseudo_label",
                    "detector_model_version": "yolo@1",
                    "detected_at": NOON + timedelta(minutes=1),
                    "control_offset": 0,
                },
            )
    objects = ["ZTF25aaaaaaa", "ZTF25aaaaaaa", "ZTF25aaaaaaa", "ZTF25aaaaaab"]
    for n, object_id in enumerate(objects):
        flux = rng.normal(100.0, 5.0, (24, 24)).astype(np.float32)
        flux[10:14, 10:14] += 400.0
        if n == 0:
            flux[0, :] = np.nan
        key = "objectId" if n < 3 else "object_id"  # alert packets vs the ZTF ingest
        provenance = {
            key: object_id,
            "ra": repr(150.1 + n * 1e-5),
            "dec": "2.2",
            "magpsf": str(18.5 - n * 0.1),
            "rb": str(0.6 + n * 0.1),
        }
        img = data.add(
            "images.raw",
            _image(
                "ztf-public",
                encode_fits(flux),
                "fits",
                (24, 24, 1),
                provenance=provenance,
                observed_at=NOON - timedelta(minutes=10 - n),
                ra=150.1,
                dec=2.2,
            ),
        )
        latency = 20.0 + n
        data.add("scores", _score(img, n, flagged=n == 0, latency=latency))
        data.latency.setdefault("ztf-public", []).append(latency)
        if n == 0:
            data.flagged.add(img["image_id"])
    # the day before: must not be counted in the day's figures
    old = data.add(
        "images.raw",
        _image(
            "synth-a", b"not really a png", "png", (4, 4, 1), fetched_at=NOON - timedelta(days=1)
        ),
    )
    data.add("scores", _score(old, 0, flagged=True, latency=1.0) | {"scored_at": old["fetched_at"]})
    data.add(
        "control.events",
        {
            "event_id": "e-1",
            "type": "calibration.updated",
            "subject": "synth-a",
            "at": NOON - timedelta(hours=4),
            "issued_by": "controller",
            "params": {"target_fpr": 0.01, "thresholds": {"knn": 0.9}, "reason": "drift"},
            "evidence": {"psi": 0.31},
            "caused_by": [],
        },
    )
    synth_ids = [r["image_id"] for r in data.messages["images.raw"] if r["source"] == "synth-a"]
    bad_image = ("BadImageError", "score", "image has no finite pixel values | offset")
    dead: list[tuple[str, int, bytes | None, tuple[str, str, str]]] = [
        ("images.raw", 41, synth_ids[5].encode(), bad_image),  # attributed through its image
        ("images.raw", 42, b"no-such-image", bad_image),  # unattributed
        ("source:ztf-public", -1, None, ("SourceError", "ingest", "HTTP 503 from the archive")),
    ]
    for topic, offset, dlq_key, (error_class, processor, message) in dead:
        data.add(
            "images.dlq",
            {
                "original_topic": topic,
                "partition": 0,
                "offset": offset,
                "key": dlq_key,
                "raw": b"\x00" * 8,
                "error_class": error_class,
                "message": f"{message} {offset}",
                "processor": processor,
                "at": NOON + timedelta(minutes=2),
            },
        )
    return data


def _event(
    data: Dataset,
    event_id: str,
    at: datetime,
    kind: str,
    subject: str,
    params: dict[str, Any],
    evidence: dict[str, float] | None = None,
    *,
    issued_by: str = "controller",
    caused_by: tuple[str, ...] = (),
) -> None:
    data.add(
        "control.events",
        {
            "event_id": event_id,
            "type": kind,
            "subject": subject,
            "at": at,
            "issued_by": issued_by,
            "params": params,
            "evidence": evidence or {},
            "caused_by": list(caused_by),
        },
    )


def add_corrections(data: Dataset) -> Dataset:
    """Self-correction events around ``DAY`` (see the module docstring); returns ``data``."""
    day = datetime(2025, 3, 14, tzinfo=UTC)
    three = ("mahalanobis", "energy", "knn")
    _event(
        data,
        "c-0",
        day - timedelta(hours=4),
        "calibration.updated",
        "synth-a",
        {
            "model_version": "m1",
            "reason": "initial",
            "thresholds": {"mahalanobis": 0.88, "energy": 0.85, "knn": 0.9},
        },
        {"reference_size": 128.0, "trimmed": 2.0, "expected_flag_rate": 0.01},
    )
    _event(
        data,
        "d-1",
        day + timedelta(hours=1),
        "threshold.decayed",
        "synth-a",
        {"model_version": "m1", "thresholds": dict.fromkeys(three, 0.87)},
        {"served_since_calibration": 500.0, "base": 0.9, "expected_flag_rate": 0.012},
        caused_by=("c-0",),
    )
    _event(
        data,
        "x-1",
        day + timedelta(hours=2),
        "drift.detected",
        "synth-a",
        {"model_version": "m1", "reason": "score distribution, flag flood"},
        {
            "ks_p": 0.0004,
            "psi": 0.41,
            "psi_noise": 0.28,
            "kl": 0.3,
            "feature_ks_p": 0.02,
            "flag_rate": 0.19,
            "expected_flag_rate": 0.012,
            "flag_p": 1e-9,
            "window_size": 64.0,
        },
        caused_by=("c-0",),
    )
    _event(
        data,
        "c-1",
        day + timedelta(hours=2, seconds=1),
        "calibration.updated",
        "synth-a",
        {
            "model_version": "m1",
            "reason": "drift",
            "thresholds": {"mahalanobis": 0.93, "energy": 0.91, "knn": 0.92},
        },
        {"reference_size": 128.0, "trimmed": 1.0, "expected_flag_rate": 0.01},
        caused_by=("x-1",),
    )
    _event(
        data,
        "rev-1",
        day + timedelta(hours=2, seconds=30),
        "decisions.revised",
        "synth-a",
        {
            "model_version": "m1",
            "artifact_id": "e" * 64,
            "reason": "drift",
            "extra": {"revision": "1", "calibration": "c-1", "from_seq": "900", "to_seq": "1019"},
        },
        {
            "images": 120.0,
            "flags_before": 23.0,
            "flags_after": 5.0,
            "withdrawn": 19.0,
            "added": 1.0,
            "revision": 1.0,
        },
        caused_by=("c-1", "x-1"),
    )
    _event(
        data,
        "o-1",
        day + timedelta(hours=3),
        "threshold.set",
        "synth-a",
        {"thresholds": {"knn": 0.95}, "reason": "operator override"},
        issued_by="operator",
    )
    _event(
        data,
        "c-2",
        day + timedelta(hours=4),
        "calibration.updated",
        "ztf-public",
        {"model_version": "m1", "reason": "initial", "thresholds": {"energy": 0.7, "knn": 0.8}},
    )
    _event(
        data,
        "p-1",
        day + timedelta(hours=5),
        "source.paused",
        "ztf-public",
        {"reason": "dead-letter rate 0.50", "until": day + timedelta(hours=5, minutes=30)},
        {"error_rate": 0.5, "items": 64.0},
    )
    _event(
        data,
        "r-1",
        day + timedelta(hours=5, minutes=30),
        "source.resumed",
        "ztf-public",
        {"reason": "back-off ended"},
        caused_by=("p-1",),
    )
    _event(
        data,
        "p-2",
        day + timedelta(hours=6),
        "pipeline.paused",
        "pipeline",
        {"reason": "latency p99", "until": day + timedelta(hours=6, minutes=10)},
        {"latency_p99_ms": 950.0},
    )
    _event(
        data,
        "r-2",
        day + timedelta(hours=6, minutes=10),
        "pipeline.resumed",
        "pipeline",
        {"reason": "probation after health pause"},
        caused_by=("p-2",),
    )
    _event(
        data,
        "w-1",
        day + timedelta(hours=7),
        "source.weights_set",
        "pipeline",
        {"weights": {"synth-a": 0.7, "ztf-public": 0.3}},
    )
    _event(
        data,
        "n-1",
        day + timedelta(days=1, hours=1),
        "drift.detected",
        "ztf-public",
        {"model_version": "m1", "reason": "flag collapse"},
        {"ks_p": 0.5, "psi": 0.01, "flag_rate": 0.0, "expected_flag_rate": 0.01},
    )
    data.messages["control.events"].sort(key=lambda r: r["at"])
    return data


def load(client: Client, data: Dataset) -> None:
    """Write every message twice, as an at-least-once redelivery would.

    Records come again at other Kafka offsets (a processor redid its work after a crash);
    dead letters come again at the same offsets (the sink consumed the same message twice):
    a dead letter without an origin offset is told apart by its Kafka position (migration
    003), so one produced twice would be two failures.
    """
    writer = ClickHouseWriter(client)
    for attempt in range(2):
        writer.insert_many(
            {
                topic: [
                    (record, 0, (0 if topic == "images.dlq" else 1000 * attempt) + i)
                    for i, record in enumerate(records)
                ]
                for topic, records in data.messages.items()
            }
        )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """A migrated chdb database in this test's own directory, closed afterwards (chdb allows
    one directory per process at a time)."""
    ch = connect(f"chdb://{tmp_path / 'ch'}")
    try:
        apply_migrations(ch)
        yield ch
    finally:
        ch.close()


@pytest.fixture
def dataset(client: Client) -> Dataset:
    data = build_dataset()
    load(client, data)
    return data


@pytest.fixture
def corrections(client: Client) -> Dataset:
    """The dataset plus the self-correction events of ``add_corrections``."""
    data = add_corrections(build_dataset())
    load(client, data)
    return data


def _model_event(
    data: Dataset,
    at: datetime,
    kind: str,
    version: str,
    *,
    reason: str | None = None,
    extra: dict[str, str] | None = None,
    evidence: dict[str, float] | None = None,
    issued_by: str = "controller",
    fraction: float | None = None,
) -> None:
    params: dict[str, Any] = {"model_version": version}
    if reason is not None:
        params["reason"] = reason
    if extra:
        params["extra"] = extra
    if fraction is not None:
        params["fraction"] = fraction
    _event(
        data,
        f"{kind}:{version}:{at.isoformat()}",
        at,
        kind,
        version,
        params,
        evidence,
        issued_by=issued_by,
    )


def _candidate(img: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "image_id": img["image_id"],
        "source": img["source"],
        "model_version": "m1",
        "ensemble_score": 0.97,
        "detector_scores": {"knn": 0.97},
        "ra": img["ra"],
        "dec": img["dec"],
        "boxes": [],
        "crossmatches": [],
        "label_status": "rejected",
        "detector_model_version": "yolo@1",
        "detected_at": NOON + timedelta(minutes=1),
        "control_offset": 0,
        "detector_role": "production",
        "detector_latency_ms": 12.5,
    } | fields


LEARNING_DAY = datetime(2025, 3, 14, tzinfo=UTC)
DATASET_1 = "a" * 64
DATASET_2 = "b" * 64


def add_learning(data: Dataset) -> Dataset:
    """The learning loop around ``DAY``, on top of :func:`build_dataset`: candidates with boxes
    and cross-matches (one next to a bright Gaia star, one next to a faint star and a bright one
    too far away), and the detector lifecycle: ``yolo@1`` trained the day before, promoted;
    ``yolo@2`` passes its gate and is rolled back from canary; ``yolo@3`` fails its gate; a
    scoring model ``m2`` in shadow; the next day's ``yolo@4`` must stay out. Returns ``data``."""
    images = {r["image_id"]: r for r in data.messages["images.raw"]}
    ztf = next(
        r for r in data.messages["images.raw"] if r["provenance"].get("objectId") == "ZTF25aaaaaaa"
    )  # the flagged alert (n == 0)
    synth = [r for r in data.messages["images.raw"] if r["source"] == "synth-a"]
    false_alarm = next(r for r in synth if r["ra"] == 13.0)  # n == 3, flagged
    assert ztf["image_id"] in data.flagged and false_alarm["image_id"] in images
    data.add(
        "candidates",
        _candidate(
            ztf,
            boxes=[{"label": "source", "confidence": 0.81, "x1": 9, "y1": 9, "x2": 15, "y2": 15}],
            crossmatches=[
                {
                    "catalog": "ztf:ps1",
                    "object_id": "PS1-123",
                    "separation_arcsec": 0.8,
                    "magnitude": 18.2,
                    "kind": "galaxy",
                },
                {
                    "catalog": "ztf:gaia_bright",
                    "object_id": "nearest_bright",
                    "separation_arcsec": 12.0,
                    "magnitude": 11.5,  # radius 35.2″
                    "kind": "star",
                },
            ],
            label_reason="on a catalog object (ztf:gaia_bright, ztf:ps1)",
        ),
    )
    data.add(
        "candidates",
        _candidate(
            false_alarm,
            ensemble_score=0.94,
            boxes=[
                {"label": "source", "confidence": 0.93, "x1": 2, "y1": 3, "x2": 12, "y2": 14},
                {"label": "source", "confidence": 0.55, "x1": 20, "y1": 20, "x2": 30, "y2": 31},
            ],
            crossmatches=[
                {
                    "catalog": "gaia",
                    "object_id": "Gaia DR3 42",
                    "separation_arcsec": 0.5,
                    "magnitude": 15.0,  # a star, not a bright one
                    "kind": "star",
                },
                {
                    "catalog": "hipparcos",
                    "object_id": "HIP 7",
                    "separation_arcsec": 100.0,
                    "magnitude": 12.0,  # bright, but its radius is 30.1″
                    "kind": "star",
                },
            ],
            label_status="pseudo_label",
            label_reason="confident, matched (gaia, hipparcos)",
            sample_id="c" * 64,
        ),
    )
    day = LEARNING_DAY
    detector = {"kind": "detector"}
    _event(
        data,
        "retrain-1",
        day - timedelta(hours=2),
        "retrain.requested",
        "detector",
        {"reason": "40 new pseudo-labels", "extra": {"manifest": DATASET_1}},
        {"new_samples": 40.0, "samples": 40.0},
    )
    _model_event(
        data,
        day - timedelta(hours=1),
        "model.registered",
        "yolo@1",
        extra=detector | {"dataset": DATASET_1, "card": "d" * 64},
        evidence={"train_samples": 40.0, "map50": 0.99, "held_out_images": 9.0},
        issued_by="trainer",
    )
    hour = timedelta(hours=1)
    lifecycle: list[tuple[timedelta, str, str, dict[str, Any]]] = [
        (
            hour,
            "model.gate_passed",
            "yolo@1",
            {
                "reason": "all checks passed",
                "evidence": {
                    "candidate_map50": 0.42,
                    "candidate_train_samples": 40.0,
                    "candidate_nan_outputs": 0.0,
                    "candidate_latency_p99_ms": 31.0,
                },
            },
        ),
        (hour * 1.1, "model.shadow_started", "yolo@1", {}),
        (hour * 1.5, "model.canary_started", "yolo@1", {"fraction": 0.1}),
        (hour * 2, "model.promoted", "yolo@1", {"reason": "canary healthy"}),
        (
            hour * 3,
            "model.registered",
            "yolo@2",
            {
                "extra": detector | {"parent": "yolo@1", "dataset": DATASET_2, "card": "e" * 64},
                "evidence": {"train_samples": 95.0},
                "issued_by": "trainer",
            },
        ),
        (
            hour * 3.1,
            "model.gate_passed",
            "yolo@2",
            {
                "reason": "all checks passed",
                "evidence": {
                    "candidate_map50": 0.58,
                    "production_map50": 0.42,
                    "candidate_nan_outputs": 0.0,
                },
            },
        ),
        (hour * 3.2, "model.canary_started", "yolo@2", {"fraction": 0.1}),
        (
            hour * 4,
            "model.rolled_back",
            "yolo@2",
            {
                "reason": "canary KS p=0.0001 against production",
                "evidence": {"ks_p": 0.0001, "canary_outputs": 64.0},
            },
        ),
        (
            hour * 5,
            "model.registered",
            "yolo@3",
            {
                "extra": detector | {"parent": "yolo@1", "dataset": DATASET_2},
                "evidence": {"train_samples": 130.0},
                "issued_by": "trainer",
            },
        ),
        (
            hour * 5.1,
            "model.gate_failed",
            "yolo@3",
            {
                "reason": "map50 0.210 < production 0.420 - 0.02",
                "evidence": {
                    "candidate_map50": 0.21,
                    "production_map50": 0.42,
                    "candidate_train_samples": 130.0,
                },
            },
        ),
        (
            hour * 6,
            "model.registered",
            "m2",
            {"extra": {"kind": "scorer"}, "issued_by": "operator:ada"},
        ),
        (hour * 6.1, "model.shadow_started", "m2", {}),
        (
            timedelta(days=1, hours=1),
            "model.registered",
            "yolo@4",
            {"extra": detector | {"parent": "yolo@1"}, "issued_by": "trainer"},
        ),
    ]
    for offset, kind, version, spec in lifecycle:
        _model_event(
            data,
            day + offset,
            kind,
            version,
            reason=spec.get("reason"),
            extra=spec.get("extra"),
            evidence=spec.get("evidence"),
            issued_by=spec.get("issued_by", "controller"),
            fraction=spec.get("fraction"),
        )
    _event(
        data,
        "budget-1",
        day + hour * 5.5,
        "budget.deferred",
        "detector",
        {"reason": "retrain budget: 4 requests in the last 24 h"},
        {"requests_last_day": 4.0, "max_per_day": 4.0, "waiting_samples": 12.0},
    )
    data.messages["control.events"].sort(key=lambda r: r["at"])
    return data


@pytest.fixture
def learning(client: Client) -> Dataset:
    """The dataset plus the learning loop of ``add_learning``."""
    data = add_learning(build_dataset())
    load(client, data)
    return data
