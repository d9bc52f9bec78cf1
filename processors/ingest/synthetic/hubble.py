"""Real images that ship offline: cutouts of the Hubble Deep Field (``skimage.data``).

Cutouts are deterministic for a seed (random positions in the 1000x872 RGB field), encoded as
PNG, with no ground truth (it is a real image: nobody labelled it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from processors.core.imaging import encode_png
from processors.ingest.sources.base import BaseSource
from processors.ingest.sources.items import RawImage, SourceItem

__all__ = ["HubbleDeepField"]

_EPOCH = datetime(1995, 12, 18, tzinfo=UTC)


@dataclass
class HubbleDeepField(BaseSource):
    """Cutouts of the Hubble Deep Field; cutout ``n`` depends only on the seed and ``n``."""

    name: str = "hubble"
    seed: int = 0
    size: int = 64
    limit: int | None = None

    @property
    def endless(self) -> bool:
        """Without a ``limit`` cutouts are drawn forever (positions repeat only by chance)."""
        return self.limit is None

    def __iter__(self) -> Iterator[SourceItem]:
        from skimage.data import hubble_deep_field

        field = np.ascontiguousarray(hubble_deep_field())
        h, w = field.shape[:2]
        if self.size > min(h, w):
            raise ValueError(f"cutout size {self.size} exceeds the field ({w}x{h})")
        n = 0
        while self.limit is None or n < self.limit:
            rng = np.random.default_rng([self.seed, n])
            y = int(rng.integers(0, h - self.size + 1))
            x = int(rng.integers(0, w - self.size + 1))
            cutout = field[y : y + self.size, x : x + self.size]
            yield RawImage(
                source=self.name,
                survey="hst-hdf",
                format="png",
                pixels=encode_png(cutout),
                width=self.size,
                height=self.size,
                bands=3,
                observed_at=_EPOCH + timedelta(seconds=n),
                provenance={"field": "hubble_deep_field", "x": str(x), "y": str(y)},
            )
            n += 1
