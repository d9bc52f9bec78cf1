"""Shadow and canary routing: deterministic by image id, one served record per image."""

from __future__ import annotations

import doctest
import hashlib
from dataclasses import replace

import pytest

from processors.core.control import Calibration, ControlState, ModelSlot
from processors.score import routing
from processors.score.routing import canary_point, plan_roles, routes_to_canary

IDS = [hashlib.sha256(f"image-{i}".encode()).hexdigest() for i in range(4000)]


def calibrated(state: ControlState, version: str, source: str) -> ControlState:
    cal = Calibration(version, source, "0" * 64, 0.05, 2, {}, f"ev-{version}-{source}")
    return replace(state, calibrations={**state.calibrations, f"{version}|{source}": cal})


def test_docstring_examples_run() -> None:
    result = doctest.testmod(routing, raise_on_error=False)
    assert result.attempted >= 3 and result.failed == 0


def test_the_canary_point_is_the_documented_hash() -> None:
    for image_id in IDS[:50]:
        expected = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 2**32
        assert canary_point(image_id) == expected
        assert 0.0 <= canary_point(image_id) < 1.0


def test_routing_is_deterministic_monotone_and_takes_its_fraction() -> None:
    for fraction in (0.0, 0.05, 0.1, 0.5, 1.0):
        routed = [routes_to_canary(i, fraction) for i in IDS]
        assert routed == [routes_to_canary(i, fraction) for i in IDS]  # same every time
        share = sum(routed) / len(IDS)
        assert abs(share - fraction) < 4 * (fraction * (1 - fraction) / len(IDS)) ** 0.5 + 1e-9
    small = {i for i in IDS if routes_to_canary(i, 0.1)}
    large = {i for i in IDS if routes_to_canary(i, 0.3)}
    assert small < large  # raising the fraction only adds images


def served_rows(plan: list[routing.Assignment]) -> list[int]:
    return sorted(row for a in plan if a.served for row in a.rows)


def test_every_image_is_served_exactly_once() -> None:
    ids = IDS[:200]
    sources = ["a" if i % 3 else "b" for i in range(len(ids))]
    canary = ModelSlot("v2", "efficientnet_lite0", fraction=0.4)
    shadow = ModelSlot("v3", "efficientnet_lite0")
    base = ControlState(canary=canary, shadow=shadow)
    for state in (
        base,
        calibrated(base, "v2", "a"),
        calibrated(calibrated(base, "v2", "a"), "v2", "b"),
    ):
        plan = plan_roles(ids, sources, state, "v1")
        assert served_rows(plan) == list(range(len(ids)))
        shadow_rows = [a.rows for a in plan if a.role == "shadow" and not a.paired]
        assert shadow_rows == [tuple(range(len(ids)))]
        assert all(not a.served for a in plan if a.role == "shadow")
        # production's unserved pair of every canary-served image, for canary health
        canary_served = [a.rows for a in plan if a.role == "canary" and a.served]
        paired = [a for a in plan if a.paired]
        assert [a.rows for a in paired] == canary_served
        assert all(a.model_version == "v1" and a.role == "shadow" for a in paired)
        for a in plan:
            assert list(a.rows) == sorted(a.rows) and a.rows
            if a.role == "canary":
                assert all(routes_to_canary(ids[r], 0.4) for r in a.rows)
                # served by the canary exactly where it has a calibration for the source
                has_cal = [state.calibration_for("v2", sources[r]) is not None for r in a.rows]
                assert all(has_cal) if a.served else not any(has_cal)
            if a.role == "production":
                assert a.model_version == "v1"
                assert all(
                    not routes_to_canary(ids[r], 0.4)
                    or state.calibration_for("v2", sources[r]) is None
                    for r in a.rows
                )


def test_uncalibrated_canary_images_are_served_by_production_and_scored_by_the_canary() -> None:
    ids = IDS[:100]
    state = ControlState(canary=ModelSlot("v2", None, fraction=0.5))
    plan = plan_roles(ids, ["a"] * len(ids), state, "v1")
    roles = [(a.role, a.served) for a in plan]
    assert roles == [("production", True), ("canary", False)]
    assert plan[1].rows == tuple(r for r in range(len(ids)) if routes_to_canary(ids[r], 0.5))


def test_slots_naming_the_production_version_or_no_traffic_are_ignored() -> None:
    ids, sources = IDS[:10], ["a"] * 10
    same = ControlState(shadow=ModelSlot("v1", None), canary=ModelSlot("v1", None, fraction=1.0))
    assert [a.role for a in plan_roles(ids, sources, same, "v1")] == ["production"]
    idle = ControlState(canary=ModelSlot("v2", None, fraction=0.0))
    assert [a.role for a in plan_roles(ids, sources, idle, "v1")] == ["production"]
    with pytest.raises(ValueError, match="sources"):
        plan_roles(ids, sources[:3], same, "v1")
