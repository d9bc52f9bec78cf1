"""Ingest's share of draws per source: proportional, floored, deterministic."""

from __future__ import annotations

import doctest
from collections import Counter

import numpy as np

from processors.core import allocation
from processors.core.allocation import WeightedRoundRobin, allocate


def test_doctests() -> None:
    result = doctest.testmod(allocation)
    assert result.attempted > 0 and result.failed == 0


def test_allocation_never_starves_an_active_source() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        weights = {f"s{i}": float(rng.uniform(0, 0.3)) for i in range(n)}
        shares = allocate(weights, list(weights), floor=0.05)
        assert abs(sum(shares.values()) - 1.0) < 1e-9
        assert min(shares.values()) >= 0.05 - 1e-12


def test_unknown_sources_get_the_mean_weight_and_paused_ones_none() -> None:
    shares = allocate({"a": 0.3, "b": 0.1}, ["a", "c"], floor=0.0)
    assert shares == {"a": 0.6, "c": 0.4}  # c unknown: the mean 0.2; b not active: no share
    assert allocate({}, ["x", "y"]) == {"x": 0.5, "y": 0.5}


def test_weighted_round_robin_follows_the_shares_within_one_draw() -> None:
    picker = WeightedRoundRobin()
    shares = {"a": 0.6, "b": 0.3, "c": 0.1}
    drawn: Counter[str] = Counter()
    for n in range(1, 501):
        drawn[picker.pick(shares)] += 1
        assert all(abs(drawn[s] - share * n) <= 1.0 for s, share in shares.items())
