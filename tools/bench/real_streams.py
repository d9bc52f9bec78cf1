"""Streams of real images for the drift bench: stationary orders and planted changes, embedded.

Features and energies come from the real backbone (``BackboneSpec()``, the pipeline's default,
as :mod:`tools.bench.policy_sim` embeds), once per image: :class:`FeatureCache` keys each
image by a hash of the backbone's identity (weights version, precision, layout, device) and
the image's bytes, so a rerun, another change point or another policy never embeds again,
and a changed image or backbone never reads a stale entry.

A stream is a :class:`tools.bench.policy_sim.StreamFeatures` (``truth`` is all false: real
images carry no labels, so every flag counts against the target rate; ``segments`` says
``before`` / ``after`` a planted change, ``stationary`` otherwise).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tools.bench.plants import JOIN_SHARE, planted
from tools.bench.policy_sim import StreamFeatures
from tools.bench.real_images import Cutout, position_order

__all__ = [
    "Dataset",
    "Embedded",
    "FeatureCache",
    "change_stream",
    "load_dataset",
    "planted_tail",
    "stationary_stream",
]

ORDERS = ("time", "shuffled", "position")


@dataclass(frozen=True)
class Embedded:
    """Features ``(n, d)`` float32 and energy scores ``(n,)`` of images in a given order."""

    features: NDArray[np.float32]
    energy: NDArray[np.float64]

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> Embedded:
        index = np.asarray(rows, dtype=np.intp)
        return Embedded(self.features[index], self.energy[index])


class FeatureCache:
    """Embeds images with the default backbone, cached per image by content under ``folder``.

    Each image's key hashes the backbone identity with the image's shape, dtype and bytes;
    every call that embeds writes one shard (``LABEL-KEY.npz``: keys, features, energies),
    written to a temporary name then renamed, so a killed run leaves no half shard. Any
    subset, superset or reordering of cached images is served from the shards.
    """

    def __init__(self, folder: Path, batch_size: int = 32, bf16: bool = True) -> None:
        from processors.score.backbone import Backbone, BackboneSpec

        self.folder = folder
        self.batch_size = batch_size
        self.backbone = Backbone(BackboneSpec(bf16=bf16))  # bf16 only where the CPU has it
        b = self.backbone
        self.identity = f"{b.version}|bf16={b.bf16}|cl={b.channels_last}|{b.device}"
        self.embedded = 0  # images run through the backbone in this process (cache misses)
        self._known: dict[str, tuple[NDArray[np.float32], float]] | None = None

    def key(self, image: NDArray[np.float32]) -> str:
        digest = hashlib.sha256(self.identity.encode())
        digest.update(repr((image.shape, image.dtype.str)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()[:24]

    def _shards(self) -> dict[str, tuple[NDArray[np.float32], float]]:
        if self._known is None:
            self._known = {}
            for path in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
                if path.name.endswith(".tmp.npz"):
                    continue
                with np.load(path, allow_pickle=False) as data:
                    for k, f, e in zip(data["keys"], data["features"], data["energy"], strict=True):
                        self._known[str(k)] = (f, float(e))
        return self._known

    def embed(self, label: str, images: Sequence[NDArray[np.float32]]) -> Embedded:
        """Features and energies of ``images`` in order; ``label`` only names a new shard."""
        from processors.ood.ensemble import energy_score

        known = self._shards()
        keys = [self.key(image) for image in images]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
        if missing:
            print(f"  embedding {len(missing)} images ({label})...", file=sys.stderr, flush=True)
            out = self.backbone.embed([images[i] for i in missing], batch_size=self.batch_size)
            self.embedded += len(missing)
            energy = energy_score(out.logits)
            new = [keys[i] for i in missing]
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{label}-{hashlib.sha256(''.join(new).encode()).hexdigest()[:16]}"
            tmp = path.with_suffix(".tmp.npz")
            features = out.features.astype(np.float32)
            np.savez(tmp, keys=np.array(new), features=features, energy=energy)
            tmp.replace(path.with_suffix(".npz"))
            for k, f, e in zip(new, features, energy, strict=True):
                known[k] = (f, float(e))
        if not keys:
            return Embedded(np.zeros((0, 0), np.float32), np.zeros(0))
        return Embedded(
            np.stack([known[k][0] for k in keys]), np.array([known[k][1] for k in keys])
        )


@dataclass(frozen=True)
class Dataset:
    """Real cutouts in time order, their embeddings, and how to sort them by position."""

    name: str
    cutouts: list[Cutout]
    base: Embedded
    strip: float  # position order: strips of this height in dec (or field y)

    def order(self, order: str, seed: int = 0) -> list[int]:
        """Row indices of a stationary stream: ``time``, ``shuffled`` (seeded) or ``position``."""
        n = len(self.cutouts)
        if order == "time":
            return list(range(n))
        if order == "shuffled":
            return [int(i) for i in np.random.default_rng(seed).permutation(n)]
        if order == "position":
            return position_order(self.cutouts, self.strip)
        raise ValueError(f"order {order!r}: one of {', '.join(ORDERS)}")


def load_dataset(name: str, cutouts: list[Cutout], cache: FeatureCache, strip: float) -> Dataset:
    """Sort ``cutouts`` by time and embed them (cached)."""
    ordered = sorted(cutouts, key=lambda c: (c.time, c.key))
    return Dataset(name, ordered, cache.embed(f"{name}-base", [c.pixels for c in ordered]), strip)


def stationary_stream(data: Dataset, order: str, seed: int = 0) -> StreamFeatures:
    """The dataset's unchanged images in one order."""
    picked = data.base.take(data.order(order, seed))
    n = len(picked.energy)
    return StreamFeatures(picked.features, picked.energy, np.zeros(n, bool), ["stationary"] * n)


def planted_tail(data: Dataset, kind: str, start: int, end: int, cache: FeatureCache) -> Embedded:
    """Embeddings of images ``start:end`` (time order) after the image change ``kind``."""
    images = [planted(kind, c) for c in data.cutouts[start:end]]
    return cache.embed(f"{data.name}-{kind}", images)


def change_stream(
    data: Dataset,
    kind: str,
    change: int,
    end: int,
    tail: Embedded | None,
    tail_start: int,
    other: Dataset | None = None,
) -> StreamFeatures:
    """Time order, images ``0:end``, changed by ``kind`` from index ``change`` on.

    Image kinds take rows ``change:end`` from ``tail`` (embedded from ``tail_start`` on).
    ``survey_join`` keeps the dataset's own images in order and, from ``change`` on, puts one
    image of ``other`` (in its time order, cycled) in every ``1 / JOIN_SHARE`` positions.
    """
    if not 0 < change < end <= len(data.cutouts):
        raise ValueError(f"need 0 < change {change} < end {end} <= {len(data.cutouts)}")
    head = data.base.take(range(change))
    if kind == "survey_join":
        if other is None:
            raise ValueError("survey_join needs the other survey's dataset")
        every = round(1 / JOIN_SHARE)
        rows: list[tuple[Embedded, int]] = []
        own, joined = change, 0
        for position in range(change, end):
            if (position - change) % every == every - 1:
                rows.append((other.base, joined % len(other.cutouts)))
                joined += 1
            else:
                rows.append((data.base, own))
                own += 1
        after = Embedded(
            np.stack([e.features[i] for e, i in rows]), np.array([e.energy[i] for e, i in rows])
        )
    else:
        if tail is None or change < tail_start or end - tail_start > len(tail.energy):
            raise ValueError(f"kind {kind}: the planted tail does not cover {change}:{end}")
        after = tail.take(range(change - tail_start, end - tail_start))
    n = end
    return StreamFeatures(
        np.concatenate([head.features, after.features]),
        np.concatenate([head.energy, after.energy]),
        np.zeros(n, bool),
        ["before"] * change + ["after"] * (end - change),
    )
