"""A small realistic warehouse for the report tests, written through the real codec and writer.

Day ``DAY`` holds two sources: ``synth-a`` (PNG cutouts with ground truth) and ``ztf-public``
(FITS cutouts with ZTF provenance, one with NaN pixels), shadow scores, detector candidates, a
control event and three dead letters; one image of the day before must stay out of the report.
Every message is delivered twice (at-least-once), so the report must count distinct records.
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


def load(client: Client, data: Dataset) -> None:
    """Write every message twice, as an at-least-once redelivery would."""
    writer = ClickHouseWriter(client)
    for attempt in range(2):
        writer.insert_many(
            {
                topic: [(record, 0, 1000 * attempt + i) for i, record in enumerate(records)]
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
