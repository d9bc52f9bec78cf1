"""Fixtures of the sink tests: a migrated chdb database per test, and Avro round-tripped records.

chdb hosts one engine per process and refuses a second directory while a client is open, so
each fixture closes its client on teardown; the next test can then open its own ``tmp_path``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from processors.core.clickhouse import Client, connect
from processors.core.codec import default_codec
from processors.core.imaging import encode_png
from processors.sink.migrations import apply_migrations

T0 = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    ch = connect(f"chdb://{tmp_path / 'ch'}")
    try:
        apply_migrations(ch)
        yield ch
    finally:
        ch.close()


def roundtrip(record: dict[str, Any], schema: str) -> dict[str, Any]:
    """The record as a consumer sees it: encoded and decoded by the real Avro codec."""
    codec = default_codec()
    return codec.decode(codec.encode(record, schema), schema)


def image(source: str = "synth", seed: int = 0, *, anomaly: bool | None = None) -> dict[str, Any]:
    pixels = encode_png(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return roundtrip(
        {
            "image_id": hashlib.sha256(source.encode() + b"\0" + pixels).hexdigest(),
            "source": source,
            "survey": "synthetic",
            "ra": 150.0 + seed / 100,
            "dec": None if seed % 2 else -2.5,
            "observed_at": T0,
            "fetched_at": T0 + timedelta(seconds=1),
            "format": "png",
            "pixels": pixels,
            "uri": None,
            "width": 16,
            "height": 16,
            "bands": 3,
            "provenance": {"generator": "blobs", "seed": str(seed)},
            "truth": None
            if anomaly is None
            else {"is_anomaly": anomaly, "kind": "blob" if anomaly else None, "segment": "s0"},
        },
        "skyloop.ImageRecord",
    )


def score(image_id: str, source: str = "synth", *, role: str = "production") -> dict[str, Any]:
    return roundtrip(
        {
            "image_id": image_id,
            "source": source,
            "model_version": "effnet-lite0@1",
            "backbone": "efficientnet_lite0",
            "role": role,
            "detectors": [
                {
                    "detector": "mahalanobis",
                    "raw": 41.5,
                    "score": 0.98,
                    "threshold": 0.95,
                    "vote": True,
                },
                {
                    "detector": "energy",
                    "raw": -3.25,
                    "score": 0.91,
                    "threshold": 0.95,
                    "vote": False,
                },
                {"detector": "knn", "raw": 0.75, "score": 0.97, "threshold": None, "vote": True},
            ],
            "ensemble_score": 0.9533,
            "votes_for": 2,
            "votes_needed": 2,
            "is_candidate": True,
            "calibrated": True,
            "batch_size": 32,
            "latency_ms": 7.25,
            "control_offset": 4,
            "scored_at": T0 + timedelta(seconds=2),
            "embedding": b"\x00\x3c" * 8,
        },
        "skyloop.ScoreRecord",
    )


def candidate(image_id: str, source: str = "synth") -> dict[str, Any]:
    return roundtrip(
        {
            "image_id": image_id,
            "source": source,
            "model_version": "effnet-lite0@1",
            "ensemble_score": 0.9533,
            "detector_scores": {"mahalanobis": 0.98, "knn": 0.97},
            "ra": 150.0,
            "dec": None,
            "boxes": [
                {"label": "blob", "confidence": 0.875, "x1": 1.0, "y1": 2.0, "x2": 9.5, "y2": 10.0},
                {"label": "streak", "confidence": 0.5, "x1": 0.0, "y1": 0.0, "x2": 4.0, "y2": 4.0},
            ],
            "crossmatches": [
                {"catalog": "gaia", "object_id": "Gaia DR3 123", "separation_arcsec": 0.42}
            ],
            "label_status": "pseudo_label",
            "detector_model_version": "yolov8n@3",
            "detected_at": T0 + timedelta(seconds=3),
            "control_offset": 4,
        },
        "skyloop.CandidateRecord",
    )


def control_event(event_id: str = "7f0c2a4e-1d2b-4c1e-9f00-000000000001") -> dict[str, Any]:
    return roundtrip(
        {
            "event_id": event_id,
            "type": "threshold.set",
            "subject": "synth",
            "at": T0,
            "issued_by": "controller",
            "params": {
                "detector": "mahalanobis",
                "value": 0.95,
                "model_version": "effnet-lite0@1",
                "artifact_id": "sha256:abc",
                "thresholds": {"knn": 0.9},
                "until": T0 + timedelta(hours=1),
                "reason": "calibration",
            },
            "evidence": {"fpr": 0.01, "n": 5000.0},
            "caused_by": ["7f0c2a4e-1d2b-4c1e-9f00-000000000000"],
        },
        "skyloop.ControlEvent",
    )


def dead_letter(offset: int = 17, *, processor: str = "score") -> dict[str, Any]:
    return roundtrip(
        {
            "original_topic": "images.raw",
            "partition": 2,
            "offset": offset,
            "key": b"deadbeef",
            "raw": b"\xc3\x01garbage\xff",
            "error_class": "BadImageError",
            "message": "undecodable image: UnidentifiedImageError: cannot identify image file",
            "processor": processor,
            "at": T0 + timedelta(seconds=5),
        },
        "skyloop.DeadLetter",
    )


@pytest.fixture
def make() -> SimpleNamespace:
    """The record factories above, Avro round-tripped: ``make.score(image_id)`` etc."""
    return SimpleNamespace(
        T0=T0,
        image=image,
        score=score,
        candidate=candidate,
        control_event=control_event,
        dead_letter=dead_letter,
        roundtrip=roundtrip,
    )
