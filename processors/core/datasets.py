"""Dataset versions for the detector: sample ids, a fixed held-out split, lineage.

Shared by the detect processor (which stores the samples), the controller (which decides when a
new version is due) and the trainer (which trains on it), so it lives in ``core``.

Held-out split: :func:`is_held_out` takes an image by the hash of its id (a hash space of its
own, independent of canary routing), so an image is held out in every dataset version or in
none, and a held-out image never trains a model.

A :class:`DatasetManifest` lists sample artifact ids (train and held-out, sorted), the manifest
it grew from, and how many pseudo-labels it counts; its JSON bytes are an artifact, so its id
names exactly that dataset version.

Example:
    >>> m = DatasetManifest.build([("img-1", "a" * 64), ("img-2", "b" * 64)], 0.5)
    >>> DatasetManifest.from_bytes(m.to_bytes()) == m, m.pseudo_labels
    (True, 2)
    >>> is_held_out("img-1", 0.2) == is_held_out("img-1", 0.2)
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["DatasetManifest", "in_hash_share", "is_held_out", "is_normal_sample"]


def in_hash_share(space: str, image_id: str, fraction: float) -> bool:
    """Whether ``image_id`` falls in the first ``fraction`` of hash ``space`` (stable: the first
    32 bits of sha256(space|image_id) / 2**32; each space an independent split)."""
    digest = hashlib.sha256(f"{space}|{image_id}".encode()).hexdigest()
    return int(digest[:8], 16) / 2**32 < fraction


def is_held_out(image_id: str, fraction: float) -> bool:
    """Whether ``image_id`` belongs to the held-out set at ``fraction`` (stable, by hash)."""
    return in_hash_share("held-out", image_id, fraction)


def is_normal_sample(image_id: str, fraction: float) -> bool:
    """Whether an unflagged image's pixels go with its score, for the detect processor's
    reference of normal boxes (stable, by hash; a hash space of its own)."""
    return in_hash_share("normal-sample", image_id, fraction)


@dataclass(frozen=True)
class DatasetManifest:
    """A dataset version: sample artifact ids split into train and held-out, sorted."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]
    parent: str | None = None
    pseudo_labels: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        samples: Iterable[tuple[str, str]],
        held_out_fraction: float,
        parent: str | None = None,
    ) -> DatasetManifest:
        """From ``(image_id, sample_id)`` pairs; each image's side is fixed by its id."""
        train: set[str] = set()
        held: set[str] = set()
        for image_id, sample_id in samples:
            (held if is_held_out(image_id, held_out_fraction) else train).add(sample_id)
        return cls(tuple(sorted(train)), tuple(sorted(held)), parent, len(train) + len(held))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "train": list(self.train),
                "held_out": list(self.held_out),
                "parent": self.parent,
                "pseudo_labels": self.pseudo_labels,
                "extra": dict(sorted(self.extra.items())),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DatasetManifest:
        raw = json.loads(data)
        return cls(
            tuple(raw["train"]),
            tuple(raw["held_out"]),
            raw.get("parent"),
            int(raw.get("pseudo_labels", 0)),
            dict(raw.get("extra") or {}),
        )
