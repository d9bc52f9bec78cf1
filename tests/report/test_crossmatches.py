"""The report's bright-star rule, evaluated in SQL over the cross-match arrays, is the detect
processor's ``near_bright_star`` rule: both judge the same matches alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.core.clickhouse import Client
from processors.report.learning_queries import (
    BRIGHT_STAR_COUNTS,
    BRIGHT_STAR_NEIGHBOURS,
    CANDIDATE_CROSSMATCHES,
)
from tests.report.conftest import NOON, Dataset, load

crossmatch = pytest.importorskip("processors.detect.crossmatch")

START = datetime(2025, 3, 14, tzinfo=UTC)
WINDOW = {"start": START, "end": START + timedelta(days=1), "limit": 1000}
MAGNITUDES = [None, math.nan, -1.5, 5.0, 10.0, 11.5, 12.0, 13.99, 14.0, 14.01, 16.0]
KINDS = ["star", "galaxy", None]
FRACTIONS = [0.5, 0.98, 1.02, 3.0]  # of the star's radius: boundaries are not tested to the ulp


def _matches(magnitude: float | None) -> list[dict[str, Any]]:
    radius = crossmatch.bright_star_radius_arcsec(magnitude) if magnitude is not None else 60.0
    radius = max(crossmatch.DEFAULT_RADIUS_ARCSEC, radius) if math.isfinite(radius) else 60.0
    seps = [f * radius for f in FRACTIONS] + [1.0, 2.0]
    return [
        {
            "catalog": "gaia",
            "object_id": f"{kind}-{n}",
            "separation_arcsec": sep,
            "magnitude": magnitude,
            "kind": kind,
        }
        for kind in KINDS
        for n, sep in enumerate(seps)
    ]


def _candidate(n: int, matches: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image_id": f"img-{n:02d}",
        "source": "synth-a",
        "model_version": "m1",
        "ensemble_score": 0.9 + n / 1000,
        "detector_scores": {},
        "ra": 10.0,
        "dec": 5.0,
        "boxes": [],
        "crossmatches": matches,
        "label_status": "rejected",
        "detector_model_version": None,
        "detected_at": NOON,
        "control_offset": 0,
    }


def test_sql_rule_is_the_detect_rule(client: Client) -> None:
    data = Dataset()
    expected_match: dict[tuple[str, str], bool] = {}
    expected_candidate: dict[str, bool] = {}
    for n, magnitude in enumerate(MAGNITUDES):
        record = data.add("candidates", _candidate(n, _matches(magnitude)))
        for m in record["crossmatches"]:
            expected_match[record["image_id"], m["object_id"]] = crossmatch.near_bright_star([m])
        expected_candidate[record["image_id"]] = crossmatch.near_bright_star(record["crossmatches"])
    load(client, data)
    assert any(expected_match.values()) and not all(expected_match.values())

    result = client.query(CANDIDATE_CROSSMATCHES, parameters=WINDOW)
    rows = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    got = {(r["image_id"], r["object_id"]): bool(r["near_bright"]) for r in rows}
    assert got == expected_match

    result = client.query(BRIGHT_STAR_NEIGHBOURS, parameters=WINDOW)
    near = {r[0] for r in result.result_rows}
    assert near == {i for i, is_near in expected_candidate.items() if is_near}
    counts = client.query(BRIGHT_STAR_COUNTS, parameters=WINDOW).result_rows[0]
    assert counts == (len(MAGNITUDES), len(MAGNITUDES), len(near))


def test_matches_written_before_magnitudes_are_never_bright(client: Client) -> None:
    """A candidate of schema 1 has crossmatches but empty parallel arrays (migration 006)."""
    client.command(
        "INSERT INTO candidates (image_id, source, model_version, ensemble_score, "
        "detector_scores, boxes, crossmatches, label_status, detected_at, control_offset, "
        "kafka_topic, kafka_partition, kafka_offset) VALUES ('old', 'synth-a', 'm1', 0.9, "
        "map(), [], [('gaia', 'HIP 1', 2.0)], 'pending', '2025-03-14 12:00:00', 0, "
        "'candidates', 0, 0)"
    )
    result = client.query(CANDIDATE_CROSSMATCHES, parameters=WINDOW)
    [row] = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
    assert (row["object_id"], row["magnitude"], row["kind"], row["near_bright"]) == (
        "HIP 1",
        None,
        None,
        0,
    )
    assert client.query(BRIGHT_STAR_COUNTS, parameters=WINDOW).result_rows[0] == (1, 1, 0)
