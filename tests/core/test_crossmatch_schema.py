"""CrossMatch's added fields (magnitude, kind): old candidates still decode, new ones keep them."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import fastavro
import pytest

from processors.core.codec import MAGIC, AvroCodec
from processors.core.records import CandidateRecord, CrossMatch


def candidate(matches: list[CrossMatch]) -> CandidateRecord:
    return CandidateRecord(
        image_id="abc",
        source="ztf",
        model_version="m1",
        ensemble_score=0.9,
        detector_scores={"knn": 0.9},
        ra=10.0,
        dec=20.0,
        boxes=[],
        crossmatches=matches,
        label_status="pending",
        detector_model_version=None,
        detected_at=datetime(2026, 12, 1, tzinfo=UTC),
        control_offset=3,
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_candidate_written_before_magnitude_and_kind_decodes_with_nulls(version: str) -> None:
    codec = AvroCodec()
    name = f"skyloop.CandidateRecord.{version}"
    old = next(s for s in codec.store.by_fingerprint.values() if s.name == name)
    assert old.fingerprint != codec.store.get("skyloop.CandidateRecord").fingerprint
    buf = io.BytesIO()
    buf.write(MAGIC + old.fingerprint)
    match = {"catalog": "gaia", "object_id": "HIP 1", "separation_arcsec": 12.5}
    fastavro.schemaless_writer(buf, old.parsed, dict(candidate([match])))  # type: ignore[list-item]
    decoded = codec.decode(buf.getvalue(), "skyloop.CandidateRecord")
    assert decoded["crossmatches"] == [{**match, "magnitude": None, "kind": None}]


def test_magnitude_and_kind_round_trip_and_may_be_left_out() -> None:
    codec = AvroCodec()
    full = CrossMatch(
        catalog="gaia", object_id="HIP 1", separation_arcsec=12.5, magnitude=9.2, kind="star"
    )
    bare = CrossMatch(catalog="ztf:ss", object_id="1234", separation_arcsec=0.4)
    wire = codec.encode(candidate([full, bare]), "skyloop.CandidateRecord")
    decoded = codec.decode(wire, "skyloop.CandidateRecord")
    assert decoded["crossmatches"] == [full, {**bare, "magnitude": None, "kind": None}]
