"""The model registry: immutable, content-addressed model cards, indexed by the control log.

A :class:`ModelCard` says what a model version is: its kind (``scorer`` or ``detector``), the
weights artifact, the backbone (scorers), the parent version it was trained from, the dataset
manifest it was trained on, its metrics, and the code version that built it. The card's JSON
bytes are stored in the :class:`~processors.core.artifacts.ArtifactStore` (sorted keys, so equal
cards have equal ids) and ``model.registered`` names the card's id in ``extra["card"]``; the
weights are a second artifact. Nothing is ever overwritten: a retrained model is a new version
with a new card, and the log of ``model.*`` events is the registry's index (who registered
what, which gate verdict, which role, which rollback).

:func:`registry_view` folds those events into one row per version for ``skyloop models``.

Example:
    >>> card = ModelCard("yolo@abc", "detector", "f" * 64, parent=None, metrics={"map50": 0.5})
    >>> ModelCard.from_bytes(card.to_bytes()) == card
    True
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from processors.core.artifacts import ArtifactStore
from processors.core.control import ControlState, new_event
from processors.core.events import EventType
from processors.core.records import ControlEventRecord
from processors.core.rollouts import ModelKind

__all__ = ["ModelCard", "RegistryRow", "code_version", "register", "registry_view"]


def code_version() -> str:
    """The package's git commit when run from a checkout, else its distribution version."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skyloop")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ModelCard:
    """What a model version is; immutable once stored (its id is the hash of its bytes)."""

    version: str
    kind: ModelKind
    weights: str | None
    backbone: str | None = None
    parent: str | None = None
    dataset: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    code: str | None = None
    notes: str | None = None

    def to_bytes(self) -> bytes:
        plain = asdict(self)
        plain["metrics"] = dict(sorted(self.metrics.items()))
        return json.dumps(plain, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelCard:
        plain = json.loads(data)
        return cls(**plain)


def register(
    store: ArtifactStore,
    card: ModelCard,
    issued_by: str,
    *,
    caused_by: Iterable[str] = (),
    event_id: str | None = None,
) -> ControlEventRecord:
    """Store ``card`` and return its ``model.registered`` event (not yet produced).

    The card is stored before the event exists, so a processor that folds the event can always
    read the card it names. The weights artifact must already be in the store.
    """
    card_id = store.put_bytes(card.to_bytes())
    extra = {"kind": card.kind, "card": card_id}
    if card.parent:
        extra["parent"] = card.parent
    if card.dataset:
        extra["dataset"] = card.dataset
    return new_event(
        EventType.MODEL_REGISTERED,
        card.version,
        issued_by,
        {
            "model_version": card.version,
            "backbone": card.backbone,
            "artifact_id": card.weights,
            "extra": extra,
        },
        evidence={k: float(v) for k, v in card.metrics.items()},
        caused_by=caused_by,
        event_id=event_id,
    )


@dataclass
class RegistryRow:
    """One version as ``skyloop models`` shows it."""

    version: str
    kind: str
    role: str = "registered"
    gate: str = "-"
    parent: str | None = None
    dataset: str | None = None
    registered_at: str = ""
    registered_by: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ROLE_AFTER: dict[str, str] = {
    EventType.MODEL_SHADOW_STARTED: "shadow",
    EventType.MODEL_CANARY_STARTED: "canary",
    EventType.MODEL_PROMOTED: "production",
    EventType.MODEL_ROLLED_BACK: "rolled back",
    EventType.MODEL_GATE_FAILED: "rejected",
}


def registry_view(events: Iterable[ControlEventRecord]) -> list[RegistryRow]:
    """One row per registered version, in registration order, from the log's model events.

    ``role`` is the latest role an event gave it; a version promoted over is ``retired``.
    ``metrics`` merges the registration's and the gate's evidence (the gate's win). An event
    the control fold refuses is left out: the model events are folded alongside, by the same
    :class:`~processors.core.control.ControlState` (a model event's verdict depends only on the
    model events before it).
    """
    rows: dict[str, RegistryRow] = {}
    fold = ControlState.initial()
    for position, event in enumerate(events):
        kind = event["type"]
        if not isinstance(kind, str) or not kind.startswith("model."):
            continue
        folded = fold.apply(event, position)
        refused, fold = folded.events_refused != fold.events_refused, folded
        if refused:
            continue
        p = event["params"]
        version = p.get("model_version") or event["subject"]
        extra: Mapping[str, str] = p.get("extra") or {}
        if kind == EventType.MODEL_REGISTERED:
            rows[version] = RegistryRow(
                version,
                extra.get("kind", "scorer"),
                parent=extra.get("parent"),
                dataset=extra.get("dataset"),
                registered_at=event["at"].isoformat(timespec="seconds"),
                registered_by=event["issued_by"],
                metrics=dict(event["evidence"]),
            )
        row = rows.get(version)
        if row is None:
            continue
        row.history.append(kind.removeprefix("model."))
        if kind in (EventType.MODEL_GATE_PASSED, EventType.MODEL_GATE_FAILED):
            row.gate = "passed" if kind == EventType.MODEL_GATE_PASSED else "failed"
            row.metrics.update(event["evidence"])
        if kind == EventType.MODEL_PROMOTED:
            for other in rows.values():
                if other.kind == row.kind and other.role == "production":
                    other.role = "retired"
        if kind == EventType.MODEL_ROLLED_BACK and row.role == "production":
            # production goes back to the version this one replaced (the last one retired)
            retired = [r for r in rows.values() if r.kind == row.kind and r.role == "retired"]
            if retired:
                retired[-1].role = "production"
        if kind in _ROLE_AFTER:
            row.role = _ROLE_AFTER[kind]
    return list(rows.values())
