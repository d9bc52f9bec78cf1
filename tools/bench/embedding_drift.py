"""A candidate drift test, measured before it enters the controller: MMD on whole embeddings.

Usage (from the repository root)::

    python tools/bench/embedding_drift.py                 # tuning kinds, time and shuffled orders
    python tools/bench/embedding_drift.py --orders position   # the held-out order, reported apart

Why: the controller's feature tests look at the drift profile's top principal components of
the *normal* images (:mod:`processors.policies.sequential`, :func:`~processors.policies.drift.
judge_window`). A change that moves the embeddings along directions normal images do not vary
in (blur plus noise, the "blind" kind) is then invisible to them until its flags go, which at
a 5 % target takes a hundred images or more. A two-sample test on the whole embedding sees it.

The test: every ``--step`` images, the last ``--window`` images against a reference of
``--reference`` images that ends ``--lag`` images before the window (a stand-in for the
controller's refinement from cleared images; the first reference is images ``0:reference``).
Statistic: the (biased) MMD with a Gaussian kernel, bandwidth the median squared distance of
the pooled sample. p-value: ``--permutations`` seeded label permutations (seed: the window's
end, so a rerun gives the same p), ``(1 + #{null >= observed}) / (1 + permutations)``. An alarm
is ``--consecutive`` windows in a row with ``p < --alpha``; a stream is judged from image
``reference + window`` on, and a change stream's delay counts images from its change.

Real cutouts and planted changes as :mod:`tools.bench.real_drift` builds them (the same feature
cache). It replays no controller: compare its delays with that bench's, one test against
the other, never its false alarms with the controller's (refinement there is data-driven).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from numpy.typing import NDArray

from processors.ingest.ztf.cutouts import CUTOUT_MODES
from tools.bench.machine import backbone_line, cpu_line
from tools.bench.plants import TUNING, describe
from tools.bench.real_drift import HUBBLE_TILE, ZTF_STRIP_DEG, _indices, _kinds
from tools.bench.real_images import data_dir, load_hubble, load_ztf
from tools.bench.real_streams import (
    FeatureCache,
    change_stream,
    load_dataset,
    planted_tail,
    stationary_stream,
)

__all__ = ["first_alarm", "main", "mmd_p"]


def mmd_p(
    reference: NDArray[np.floating], window: NDArray[np.floating], permutations: int, seed: int
) -> float:
    """Permutation p-value of the Gaussian-kernel MMD between two samples (rows: images)."""
    pooled = np.concatenate([reference, window]).astype(np.float64)
    n, total = len(reference), len(pooled)
    squared = (pooled * pooled).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    bandwidth = float(np.median(distances[np.triu_indices(total, 1)])) or 1.0
    kernel = np.exp(-distances / bandwidth)
    labels = np.r_[np.full(n, 1.0 / n), np.full(total - n, -1.0 / (total - n))]
    observed = float(labels @ kernel @ labels)
    rng = np.random.default_rng(seed)
    weights = np.stack([labels[rng.permutation(total)] for _ in range(permutations)], axis=1)
    null = np.einsum("ip,ip->p", weights, kernel @ weights)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + permutations))


def first_alarm(features: NDArray[np.floating], args: argparse.Namespace) -> int | None:
    """The image index at which the test first raises on ``features`` (stream order)."""
    streak = 0
    first_end = args.reference + args.window
    for end in range(first_end, len(features) + 1, args.step):
        ref_end = max(end - args.window - args.lag, args.reference)
        p = mmd_p(
            features[ref_end - args.reference : ref_end],
            features[end - args.window : end],
            args.permutations,
            seed=end,
        )
        streak = streak + 1 if p < args.alpha else 0
        if streak >= args.consecutive:
            return end - 1
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="tuning", help="all | tuning | held-out | k1,k2,...")
    parser.add_argument("--orders", default="time,shuffled", help="time, shuffled, position")
    parser.add_argument("--ztf-change", type=_indices, default="200,384")
    parser.add_argument("--ztf-after", type=int, default=448)
    parser.add_argument("--hubble-images", type=int, default=768)
    parser.add_argument("--hubble-change", type=_indices, default="384")
    parser.add_argument("--shuffles", type=int, default=2)
    parser.add_argument("--cutout", default="difference", choices=CUTOUT_MODES)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--reference", type=int, default=128)
    parser.add_argument("--lag", type=int, default=128, help="images between reference and window")
    parser.add_argument("--alpha", type=float, default=0.0005)
    parser.add_argument("--consecutive", type=int, default=2)
    parser.add_argument("--permutations", type=int, default=3999)  # p: multiples of 1/4000
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(
            os.environ.get("SKYLOOP_BENCH_CACHE")
            or Path(__file__).resolve().parents[2] / ".skyloop" / "bench-cache"
        ),
    )
    args = parser.parse_args(argv)
    kinds = [k for k in _kinds(args.kinds) if k != "survey_join"]  # image kinds only
    started = time.perf_counter()
    cache = FeatureCache(args.cache)
    print(cpu_line())
    print(backbone_line(cache.backbone))
    print(
        f"MMD (Gaussian, median bandwidth), window {args.window} step {args.step}, reference "
        f"{args.reference} ending {args.lag} before the window, p < {args.alpha} in "
        f"{args.consecutive} windows, {args.permutations} permutations"
    )
    folders = [
        data_dir("SKYLOOP_ZTF_STREAM_DIR", "ztf-stream"),
        data_dir("SKYLOOP_ZTF_ALERTS_DIR", "ztf-alerts"),
    ]
    ztf, _ = load_ztf(folders, args.cutout)
    data = {
        "ztf": load_dataset("ztf", ztf, cache, ZTF_STRIP_DEG),
        "hubble": load_dataset(
            "hubble", load_hubble(args.hubble_images, size=HUBBLE_TILE), cache, float(HUBBLE_TILE)
        ),
    }
    changes = {"ztf": args.ztf_change, "hubble": args.hubble_change}
    ends = {"ztf": lambda c: min(c + args.ztf_after, len(data["ztf"].cutouts))}
    ends["hubble"] = lambda c: args.hubble_images

    print("\n| kind | " + " | ".join(f"{d}@{c}" for d in data for c in changes[d]) + " |")
    print("|---|" + "---|" * sum(len(c) for c in changes.values()))
    for kind in kinds:
        delays = []
        for name, dataset in data.items():
            first, last = min(changes[name]), max(ends[name](c) for c in changes[name])
            tail = planted_tail(dataset, kind, first, last, cache)
            for change in changes[name]:
                stream = change_stream(dataset, kind, change, ends[name](change), tail, first)
                at = first_alarm(stream.features, args)
                if at is None:
                    delays.append("missed")
                else:
                    delays.append(f"{at - change}" if at >= change else f"early, at {at}")
        print(f"| {kind} ({describe(kind)}) | " + " | ".join(delays) + " |")
    held = " (HELD OUT)" if "position" in args.orders else ""
    print(f"\n| stationary stream{held} | images judged | false alarm at |")
    print("|---|---|---|")
    for name, dataset in data.items():
        for order in [o.strip() for o in args.orders.split(",") if o.strip()]:
            seeds = range(1, args.shuffles + 1) if order == "shuffled" else [0]
            for seed in seeds:
                stream = stationary_stream(dataset, order, seed)
                at = first_alarm(stream.features, args)
                judged = len(stream.features) - args.reference - args.window + 1
                label = f"{name}/{order}" + (f"#{seed}" if order == "shuffled" else "")
                print(f"| {label} | {judged} | {'-' if at is None else at} |")
    print(f"\n{time.perf_counter() - started:.0f}s; tuning kinds: {', '.join(TUNING)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
