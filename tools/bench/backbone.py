"""Raw backbone throughput (images/s): the chosen settings, channels_last x bf16, prepared or not.

Usage (from the repository root)::

    python tools/bench/backbone.py --batch 32 --iters 20 [--threads 2] [--model efficientnet_lite0]

"Raw" means the forward pass on an already preprocessed batch (no decoding, no preprocessing,
no OOD maths); warm-up iterations are excluded. ``--preprocess`` also times
``Backbone.preprocess`` on 63x63 single-band float cutouts (ZTF-sized) for comparison. The
scoring-pipeline bench imports :func:`measure_backbone_throughput` to compare against the same
model, batch and settings in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from processors.score.backbone import Backbone, BackboneSpec

__all__ = ["main", "measure_backbone_throughput", "measure_preprocess_throughput"]

WARMUP_ITERS = 5


def measure_backbone_throughput(backbone: Backbone, batch_size: int, iters: int) -> float:
    """Images/s of ``backbone.forward`` on a fixed random preprocessed batch.

    Runs ``WARMUP_ITERS`` untimed iterations first, then ``iters`` timed ones (wall clock,
    ``time.perf_counter``); includes the copy of outputs to numpy, excludes preprocessing.
    """
    if batch_size < 1 or iters < 1:
        raise ValueError(f"batch_size and iters must be >= 1, got {batch_size}, {iters}")
    size = backbone.spec.image_size
    batch = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(WARMUP_ITERS):
        backbone.forward(batch)
    start = time.perf_counter()
    for _ in range(iters):
        backbone.forward(batch)
    return batch_size * iters / (time.perf_counter() - start)


def measure_preprocess_throughput(backbone: Backbone, batch_size: int, iters: int) -> float:
    """Images/s of ``backbone.preprocess`` on 63x63x1 float32 cutouts with a few NaNs."""
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(63, 63, 1)).astype(np.float32) for _ in range(batch_size)]
    for image in images[::4]:
        image[0, 0] = np.nan
    backbone.preprocess(images)
    start = time.perf_counter()
    for _ in range(iters):
        backbone.preprocess(images)
    return batch_size * iters / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="weights file (needed except lite0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preprocess", action="store_true", help="also time preprocessing")
    args = parser.parse_args(argv)

    chosen = BackboneSpec(
        name=args.model,
        weights=args.weights,
        allow_random=args.weights is None and args.model != "efficientnet_lite0",
        threads=args.threads,
        device=args.device,
    )
    backbone = Backbone(chosen)
    print(
        f"model={backbone.version} arch={backbone.architecture} device={backbone.device} "
        f"threads={torch.get_num_threads()} batch={args.batch} iters={args.iters} "
        f"torch={torch.__version__}"
    )
    rate = measure_backbone_throughput(backbone, args.batch, args.iters)
    print(
        f"chosen settings (channels_last={backbone.channels_last}, bf16={backbone.bf16}): "
        f"{rate:.1f} img/s"
    )
    if args.preprocess:
        pre = measure_preprocess_throughput(backbone, args.batch, args.iters)
        print(f"preprocess 63x63x1 cutouts: {pre:.1f} img/s")
    print("channels_last  bf16   img/s")
    for channels_last in (False, True):
        for bf16 in (False, True):
            variant = Backbone(dataclasses.replace(chosen, channels_last=channels_last, bf16=bf16))
            rate = measure_backbone_throughput(variant, args.batch, args.iters)
            note = "" if variant.bf16 == bf16 else "  (bf16 unsupported here: ran float32)"
            print(f"{channels_last!s:<14} {bf16!s:<6} {rate:6.1f}{note}")
    # the prepared (frozen) graph against the built model it stores, float32, alternated
    float32 = dataclasses.replace(chosen, bf16=False)
    built = Backbone(dataclasses.replace(float32, prepared=False))
    prepared = Backbone(float32)
    if prepared.prepared:
        rates: dict[str, list[float]] = {"built": [], "prepared": []}
        for _ in range(3):
            for name, variant in (("built", built), ("prepared", prepared)):
                rates[name].append(measure_backbone_throughput(variant, args.batch, args.iters))
        medians = {name: float(np.median(r)) for name, r in rates.items()}
        print(
            f"float32 built {medians['built']:.1f} img/s, prepared graph "
            f"{medians['prepared']:.1f} img/s (median of 3 alternated rounds): "
            f"ratio {medians['prepared'] / medians['built']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
