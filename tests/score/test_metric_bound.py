"""Many source names through the real scorer: skyloop_images_scored_total stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from processors.core.config import Settings
from processors.core.metric_labels import DEFAULT_LABEL_VALUES_MAX, LABEL_BOUND, OTHER
from processors.core.metrics import REGISTRY, bound_labels
from processors.score.backbone import Backbone
from tests.score.test_processor import Scorer, sky


@pytest.fixture
def scorer_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"batch_size": 8, "batch_max_wait_ms": 50})


@pytest.fixture
def two_sources_only() -> Iterator[None]:
    LABEL_BOUND.reset()
    bound_labels(2)
    yield
    LABEL_BOUND.reset()
    bound_labels(DEFAULT_LABEL_VALUES_MAX)


def _scored(source: str) -> float:
    labels = {"source": source, "role": "production", "candidate": "false"}
    return REGISTRY.get_sample_value("skyloop_images_scored_total", labels) or 0.0


def test_scores_of_many_sources_fold_past_the_bound(
    scorer_settings: Settings, kafka_bootstrap: str, lite0: Backbone, two_sources_only: None
) -> None:
    names = [f"many-{i}" for i in range(6)]
    records = [r for i, name in enumerate(names) for r in sky(name, 10 + i, 1)]
    other_before = _scored(OTHER)
    folded_before = (
        REGISTRY.get_sample_value("skyloop_metric_label_values_folded_total", {"label": "source"})
        or 0.0
    )
    with Scorer(scorer_settings, kafka_bootstrap, lite0) as scorer:
        scorer.produce(records)
        outputs = scorer.read(len(records))
    assert all(o.topic == "scores" for o in outputs)
    kept = [name for name in names if _scored(name) > 0]
    assert len(kept) <= 2
    assert sum(_scored(name) for name in kept) + _scored(OTHER) - other_before == len(names)
    folded = REGISTRY.get_sample_value(
        "skyloop_metric_label_values_folded_total", {"label": "source"}
    )
    assert folded is not None and folded - folded_before == len(names) - len(kept)
