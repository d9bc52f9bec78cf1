"""Real cutouts for the real-image drift bench: ZTF alert packets and Hubble Deep Field tiles.

What each :class:`Cutout` holds is exactly what the pipeline would score: for ZTF the stamp
the ``ztf:`` source decodes (:func:`processors.ingest.ztf.cutouts.alert_pixels`, default mode
``difference``, as ``skyloop run --source ztf:DIR`` scores it), for Hubble the tile the
``hubble`` source cuts (:class:`processors.ingest.synthetic.hubble.HubbleDeepField`), decoded
from its PNG as the scorer decodes it. ZTF difference cutouts also carry their science stamp,
so that a change of the *new* exposure (its gain, its saturation level) can be propagated into
the difference the way a subtraction that did not follow the change would show it.

Simulated packets (``sim_*``) are left out: they are not the real sky. Malformed packets
(bad Avro, missing or undecodable stamps) are skipped and counted: the ingest source turns
them into dead letters, never into images, so they are not part of a scored stream either.

Invariant: loading is deterministic (files sorted by name, tiles by their index), so a stream
built from the same data directory is the same stream on every run.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from processors.core.exceptions import BadImageError
from processors.core.imaging import decode_pixels
from processors.ingest.ztf.cutouts import CutoutError, CutoutMode, alert_pixels
from processors.ingest.ztf.packets import AlertPacketError, AlertReader

__all__ = ["Cutout", "data_dir", "load_hubble", "load_ztf", "position_order"]

REPO = Path(__file__).resolve().parents[2]
ZTF_STREAM_ENV, ZTF_ALERTS_ENV = "SKYLOOP_ZTF_STREAM_DIR", "SKYLOOP_ZTF_ALERTS_DIR"


@dataclass(frozen=True)
class Cutout:
    """One real image as the pipeline scores it, with where and when it was taken.

    ``pixels``: float32 ``(h, w, bands)`` (NaN where masked). ``science``: for a ZTF
    difference cutout, its science stamp of the same shape (else ``None``). ``time``: a
    sortable observation time (ZTF: jd; Hubble: the tile's index). ``ra``/``dec``: sky
    position in degrees (Hubble: the tile's x/y pixel position in the field).
    """

    key: str
    survey: str
    pixels: NDArray[np.float32]
    science: NDArray[np.float32] | None
    time: float
    ra: float
    dec: float


def data_dir(env: str, default: str) -> Path:
    """The shared data folder named by ``env``, else ``../shared/data/DEFAULT`` from the repo."""
    return Path(os.environ.get(env) or REPO.parent / "shared" / "data" / default)


def load_ztf(
    folders: list[Path], cutout: CutoutMode = "difference", limit: int | None = None
) -> tuple[list[Cutout], Counter[str]]:
    """Every readable alert under ``folders`` (``*.avro``, sorted by name), and skip counts.

    ``limit``: stop after that many cutouts (the first in file order).
    Returns the cutouts in file order and a counter of skipped packets/alerts by reason.
    A missing folder raises ``FileNotFoundError`` naming it and the environment variables.
    """
    reader = AlertReader()
    out: list[Cutout] = []
    skipped: Counter[str] = Counter()
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no such folder (set {ZTF_STREAM_ENV} / {ZTF_ALERTS_ENV})"
            )
        for path in sorted(folder.glob("*.avro")):
            if limit is not None and len(out) >= limit:
                break
            if path.name.startswith("sim_"):  # simulated packets: not the real sky
                skipped["simulated"] += 1
                continue
            try:
                for alert in reader.read(path.read_bytes()):
                    if isinstance(alert, AlertPacketError):
                        skipped[alert.reason] += 1
                        continue
                    try:
                        pixels, _ = alert_pixels(alert, cutout)
                        science = None
                        if cutout == "difference":
                            science, _ = alert_pixels(alert, "science")
                            if science.shape != pixels.shape:
                                science = None
                    except CutoutError as exc:
                        skipped[exc.reason] += 1
                        continue
                    out.append(
                        Cutout(
                            key=f"ztf:{alert.candid}",
                            survey="ztf",
                            pixels=pixels,
                            science=science,
                            time=alert.jd,
                            ra=alert.ra,
                            dec=alert.dec,
                        )
                    )
            except AlertPacketError as exc:
                skipped[exc.reason] += 1
    return out, skipped


def load_hubble(count: int, seed: int = 0, size: int = 64) -> list[Cutout]:
    """The first ``count`` tiles of the ``hubble`` source (seed, size) as the scorer sees them."""
    from processors.ingest.sources.items import RawImage
    from processors.ingest.synthetic.hubble import HubbleDeepField

    out: list[Cutout] = []
    for n, item in enumerate(HubbleDeepField(seed=seed, size=size, limit=count)):
        if not isinstance(item, RawImage):  # the source yields images only
            raise BadImageError(f"hubble tile {n}: not an image")
        x, y = float(item.provenance["x"]), float(item.provenance["y"])
        pixels = decode_pixels(item.pixels, item.format)
        out.append(Cutout(f"hubble:{seed}:{n}", "hst-hdf", pixels, None, float(n), x, y))
    return out


def position_order(cutouts: list[Cutout], strip: float) -> list[int]:
    """Indices in a survey's scan order: strips of ``strip`` in dec, serpentine in ra.

    Neighbours in this order are neighbours on the sky (overlapping tiles, one ZTF field):
    the least independent order a stream can arrive in.
    """
    strips = [int(np.floor(c.dec / strip)) for c in cutouts]
    return sorted(
        range(len(cutouts)),
        key=lambda i: (strips[i], cutouts[i].ra if strips[i] % 2 == 0 else -cutouts[i].ra),
    )
