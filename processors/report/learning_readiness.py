"""How far the run's dataset is from a retrain, in the report's *Pseudo-labels* section.

A night of a few hundred alerts may never train a detector: a retrain is requested after
``retrain_min_samples`` new training samples, and the trainer gates a detector only on at least
``gate_min_held_out`` held-out samples (the hash-chosen ``held_out_fraction`` of them, which
never train). :func:`readiness_lines` says which of the two is missing and by how much, from
the dataset as it stood at the window's end (rows of
:data:`processors.report.learning_queries.DATASET`), and at the window's yield of samples per
candidate how many more candidates that takes. Pure: rows and settings in, Markdown lines out.

Example:
    >>> needs = LearningNeeds(retrain_min_samples=64, gate_min_held_out=30, held_out_fraction=0.2)
    >>> (line,) = readiness_lines([], [{"candidates": 42, "samples": 1}], needs)
    >>> "about 150 samples, 150 more" in line, "about 6,300 more candidates" in line
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processors.core.config import Settings
from processors.core.datasets import is_held_out

__all__ = ["LearningNeeds", "readiness_lines"]


@dataclass(frozen=True)
class LearningNeeds:
    """The settings that decide when a dataset trains and is judged."""

    retrain_min_samples: int
    gate_min_held_out: int
    held_out_fraction: float

    @classmethod
    def of(cls, settings: Settings) -> LearningNeeds:
        return cls(
            settings.learning.retrain_min_samples,
            settings.rollout.gate_min_held_out,
            settings.learning.held_out_fraction,
        )


def readiness_lines(
    dataset: Sequence[Mapping[str, Any]],
    per_source: Sequence[Mapping[str, Any]],
    needs: LearningNeeds,
) -> list[str]:
    """One paragraph: the dataset's size and split, and, before the first retrain, what is
    missing for one (``dataset``: one row per sample's image id with ``retrain_requests``;
    ``per_source``: the window's ``candidates`` and ``samples`` per source)."""
    samples = len(dataset)
    held = sum(is_held_out(r["image_id"], needs.held_out_fraction) for r in dataset)
    requests = int(dataset[0]["retrain_requests"]) if dataset else 0
    size = f"{_count(samples, 'training sample')}, {held:,} of them held out"
    if requests:
        return [f"The dataset holds {size}; {_count(requests, 'retrain')} requested so far."]
    held_out_share = needs.held_out_fraction
    wanted = max(needs.retrain_min_samples, math.ceil(needs.gate_min_held_out / held_out_share))
    more = max(wanted - samples, needs.gate_min_held_out - held, 0)
    line = (
        f"No retrain yet: the dataset holds {size}. A retrain is requested after "
        f"{needs.retrain_min_samples} (`retrain_min_samples`) and the gate judges a detector on "
        f"at least {needs.gate_min_held_out} held-out samples (`gate_min_held_out`, "
        f"{needs.held_out_fraction * 100:g} % of samples are held out by hash of image id): "
        f"about {wanted:,} samples, {more:,} more."
    )
    candidates = sum(int(r["candidates"]) for r in per_source)
    made = sum(int(r["samples"]) for r in per_source)
    if more and candidates:
        yield_ = f"{_count(made, 'sample')} from {_count(candidates, 'candidate')}"
        if made:
            line += (
                f" At this window's yield ({yield_}) that is about "
                f"{math.ceil(more * candidates / made):,} more candidates."
            )
        else:
            line += f" This window's {_count(candidates, 'candidate')} gave none."
    return [line]


def _count(n: int, noun: str) -> str:
    """``1 sample``, ``2 samples``, ``1,024 samples``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
