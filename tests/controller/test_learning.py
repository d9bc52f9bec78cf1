"""The learning loop's controller side: dataset versions and retrain requests from pseudo-labels."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta

import pytest

from processors.controller import learning
from processors.controller.learning import LearningLoop, LearningState
from processors.core import datasets
from processors.core.artifacts import artifact_id_of
from processors.core.datasets import DatasetManifest, is_held_out
from processors.detect import labels
from processors.policies.retrain import RetrainTrigger
from processors.yolo import samples

T0 = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("module", [learning, datasets, labels, samples])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_requests_come_every_min_samples_with_a_manifest_that_never_trains_held_out_images() -> (
    None
):
    loop = LearningLoop(RetrainTrigger(min_samples=10, cooldown_s=0), held_out_fraction=0.3)
    requests = []
    for i in range(35):
        at = T0 + timedelta(minutes=i)
        for emit in loop.on_candidate(
            {
                "image_id": f"img-{i}",
                "label_status": "pseudo_label",
                "sample_id": f"{i:064x}",
                "detected_at": at,
            }  # type: ignore[arg-type]
        ):
            requests.append(emit)
        # a redelivered candidate is not a new sample
        assert (
            loop.on_candidate(
                {
                    "image_id": f"img-{i}",
                    "label_status": "pseudo_label",
                    "sample_id": f"{i:064x}",
                    "detected_at": at,
                }  # type: ignore[arg-type]
            )
            == []
        )
    assert [e.event["type"] for e in requests] == ["retrain.requested"] * 3
    manifests = [DatasetManifest.from_bytes(e.artifacts[0]) for e in requests]
    for emit in requests:
        assert emit.event["params"]["extra"]["manifest"] == artifact_id_of(emit.artifacts[0])
    assert [m.pseudo_labels for m in manifests] == [10, 20, 30]
    assert manifests[1].parent == requests[0].event["params"]["extra"]["manifest"]
    held = {f"{i:064x}" for i in range(35) if is_held_out(f"img-{i}", 0.3)}
    for manifest in manifests:
        assert not held & set(manifest.train) and set(manifest.held_out) <= held
    # a restarted controller (state from its bytes) goes on where it was
    again = LearningLoop(loop.trigger, 0.3, state=LearningState.from_bytes(loop.state.to_bytes()))
    assert again.state == loop.state


def test_over_budget_the_samples_wait_and_the_log_says_why_once_a_day() -> None:
    loop = LearningLoop(RetrainTrigger(min_samples=2, cooldown_s=0, max_per_day=1))
    kinds = []
    for i in range(8):
        for emit in loop.add(f"img-{i}", f"{i:064x}", T0 + timedelta(minutes=i)):
            kinds.append(emit.event["type"])
    assert kinds == ["retrain.requested", "budget.deferred"]
    later = loop.add("img-99", "f" * 64, T0 + timedelta(days=1, minutes=1))
    assert [e.event["type"] for e in later] == ["retrain.requested"]
