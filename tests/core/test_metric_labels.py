"""Data-derived metric labels are bounded (processors.core.metric_labels): past the bound,
values become ``other`` and the folded counter says how many distinct values were folded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from processors.core.metric_labels import (
    DEFAULT_LABEL_VALUES_MAX,
    LABEL_BOUND,
    OTHER,
    Bounded,
    LabelBound,
)
from processors.core.metrics import REGISTRY, SOURCE_WEIGHT, bound_labels


def _series(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def _bounded_pair(limit: int) -> tuple[CollectorRegistry, LabelBound, Bounded[Counter]]:
    registry = CollectorRegistry()
    bound = LabelBound(limit)
    bound.folded = Counter("folded", "folded", ["label"], registry=registry)
    metric = Counter("seen", "seen", ["source", "role"], registry=registry)
    return registry, bound, Bounded(metric, bound)


def test_values_past_the_bound_become_other_and_are_counted_once_each() -> None:
    registry, _, metric = _bounded_pair(3)
    for i in range(10):
        for _ in range(2):  # a folded value seen again is not counted again
            metric.labels(f"src-{i}", "production").inc()
    series = _series(registry, "seen_total")
    assert len(series) == 4  # three kept sources and 'other'
    assert 'seen_total{role="production",source="other"} 14.0' in series
    assert registry.get_sample_value("folded_total", {"label": "source"}) == 7
    # 'role' is not a data label: never bounded
    for i in range(10):
        metric.labels(source="src-0", role=f"r{i}").inc()
    assert registry.get_sample_value("seen_total", {"source": "src-0", "role": "r9"}) == 1
    assert registry.get_sample_value("folded_total", {"label": "role"}) is None


def test_a_kept_value_stays_kept_and_remove_spares_the_other_series() -> None:
    registry = CollectorRegistry()
    bound = LabelBound(1)
    gauge = Bounded(Gauge("w", "w", ["source"], registry=registry), bound)
    gauge.labels("a").set(1)
    gauge.labels("b").set(2)  # folded
    gauge.labels("c").set(3)  # folded: the 'other' gauge holds the last value set
    assert registry.get_sample_value("w", {"source": OTHER}) == 3
    gauge.remove("b")  # a folded value: 'other' may still stand for 'c'
    assert registry.get_sample_value("w", {"source": OTHER}) == 3
    gauge.remove("a")
    assert registry.get_sample_value("w", {"source": "a"}) is None
    gauge.labels("a").set(4)  # still kept, by its own name
    assert registry.get_sample_value("w", {"source": "a"}) == 4
    with pytest.raises(ValueError, match="at least 1"):
        bound.set_limit(0)


@pytest.fixture
def process_bound() -> Iterator[None]:
    LABEL_BOUND.reset()
    yield
    LABEL_BOUND.reset()
    bound_labels(DEFAULT_LABEL_VALUES_MAX)


def test_the_process_metrics_obey_the_setting(process_bound: None) -> None:
    """The real gauge the controller sets per source, with 1000 source names."""
    bound_labels(5)
    folded = "skyloop_metric_label_values_folded_total"
    before = REGISTRY.get_sample_value(folded, {"label": "source"})
    for i in range(1000):
        SOURCE_WEIGHT.labels(f"flood-{i:04d}").set(i)
    flood = [s for s in _series(REGISTRY, "skyloop_source_weight") if "flood-" in s]
    assert len(flood) <= 5
    assert REGISTRY.get_sample_value("skyloop_source_weight", {"source": OTHER}) == 999
    after = REGISTRY.get_sample_value(folded, {"label": "source"})
    assert after is not None and after - (before or 0) >= 995
