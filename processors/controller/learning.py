"""The learning loop's controller side: pseudo-labels → dataset versions → ``retrain.requested``.

Pure decision logic over explicit state (no Kafka; event time is the candidate's), beside the
controller in the stats app. For every candidate the detect processor published:

- a ``pseudo_label`` with a training sample (``sample_id``, an artifact the detect processor
  stored) joins the dataset, once per image id (a redelivered or re-scored candidate is not
  counted twice); the dataset keeps the most recent ``max_samples`` (default 4096);
- :class:`~processors.policies.retrain.RetrainTrigger` is asked: on ``request`` a new
  :class:`~processors.core.datasets.DatasetManifest` (train and held-out sample ids, split by
  hash of image id, so a held-out image never trains; the previous manifest as parent) is
  stored as an artifact and ``retrain.requested`` names it; on ``defer`` one
  ``budget.deferred`` per trailing day says why training waits.

Event ids are :func:`~processors.core.events.decision_id` of the dataset's content (the
manifest id), so a restarted controller recognises a request it already made.

Example:
    >>> from datetime import UTC, datetime
    >>> loop = LearningLoop(RetrainTrigger(min_samples=2, cooldown_s=0), held_out_fraction=0.5)
    >>> at = datetime(2026, 12, 1, tzinfo=UTC)
    >>> loop.add("img-1", "a" * 64, at), len(loop.add("img-2", "b" * 64, at))
    ([], 1)
    >>> loop.state.new_samples, len(loop.state.requests)
    (0, 1)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta

from processors.controller.emit import ISSUER, Emit
from processors.core.artifacts import artifact_id_of
from processors.core.datasets import DatasetManifest
from processors.core.events import EventType, decision_id, new_event
from processors.core.records import CandidateRecord
from processors.policies.retrain import RetrainObservation, RetrainTrigger

__all__ = ["LearningLoop", "LearningState"]


@dataclass
class LearningState:
    """Durable (in the controller's table, :mod:`processors.controller.learning_table`): the
    dataset and the request history. ``added`` counts the samples ever added: ``samples`` are
    the last ``len(samples)`` of them (sample ``j`` is the ``added - len(samples) + j``-th)."""

    samples: list[tuple[str, str]] = field(default_factory=list)  # (image_id, sample_id)
    added: int = 0
    new_samples: int = 0
    requests: list[str] = field(default_factory=list)  # ISO times, the trailing day's
    manifest: str | None = None
    deferred_at: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def head(self) -> dict[str, object]:
        """Every field but ``samples``, as JSON-ready values (copies: no list is shared). Its
        cost does not grow with the dataset, where ``asdict`` deep-copies every sample (16 ms
        a call at 1,500 samples, and the controller saves once per batch with a candidate)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), list) else value
            for f in fields(self)
            if f.name != "samples"
        }

    @classmethod
    def from_bytes(cls, data: bytes) -> LearningState:
        raw = json.loads(data)
        raw["samples"] = [tuple(pair) for pair in raw.get("samples", [])]
        raw.setdefault("added", len(raw["samples"]))  # written before the count existed
        return cls(**raw)


@dataclass
class LearningLoop:
    trigger: RetrainTrigger = field(default_factory=RetrainTrigger)
    held_out_fraction: float = 0.2
    max_samples: int = 4096
    state: LearningState = field(default_factory=LearningState)

    def on_candidate(self, candidate: CandidateRecord) -> list[Emit]:
        sample = candidate.get("sample_id")
        if candidate.get("label_status") != "pseudo_label" or not sample:
            return []
        return self.add(candidate["image_id"], sample, candidate["detected_at"])

    def add(self, image_id: str, sample_id: str, at: datetime) -> list[Emit]:
        """A pseudo-label's sample joins the dataset; returns the events that decides."""
        if any(i == image_id for i, _ in self.state.samples):
            return []
        self.state.samples.append((image_id, sample_id))
        self.state.added += 1
        del self.state.samples[: max(0, len(self.state.samples) - self.max_samples)]
        self.state.new_samples += 1
        requests = [datetime.fromisoformat(t) for t in self.state.requests]
        requests = [t for t in requests if at - t < timedelta(days=1)]
        decisions = self.trigger.update(RetrainObservation(self.state.new_samples, requests, at))
        if decisions == ["defer"]:
            last = self.state.deferred_at
            if last is not None and at - datetime.fromisoformat(last) < timedelta(days=1):
                return []
            self.state.deferred_at = at.isoformat()
            return [self._deferred(at, len(requests))]
        if decisions != ["request"]:
            return []
        data = DatasetManifest.build(
            self.state.samples, self.held_out_fraction, self.state.manifest
        ).to_bytes()
        manifest = artifact_id_of(data)
        evidence = {
            "new_samples": float(self.state.new_samples),
            "samples": float(len(self.state.samples)),
            "requests_last_day": float(len(requests)),
        }
        event = new_event(
            EventType.RETRAIN_REQUESTED,
            "detector",
            ISSUER,
            {
                "reason": f"{self.state.new_samples} new pseudo-labels",
                "extra": {"manifest": manifest},
            },
            evidence=evidence,
            at=at,
            event_id=decision_id("retrain", manifest),
        )
        self.state.manifest = manifest
        self.state.new_samples = 0
        self.state.requests = [t.isoformat() for t in [*requests, at]]
        return [Emit(event, (data,))]

    def _deferred(self, at: datetime, requests: int) -> Emit:
        return Emit(
            new_event(
                EventType.BUDGET_DEFERRED,
                "detector",
                ISSUER,
                {"reason": f"retrain budget: {requests} requests in the last 24 h"},
                evidence={
                    "requests_last_day": float(requests),
                    "max_per_day": float(self.trigger.max_per_day),
                    "waiting_samples": float(self.state.new_samples),
                },
                at=at,
                event_id=decision_id("budget", at.date().isoformat(), requests),
            )
        )
