"""Drift on real images: planted instrument changes and stationary orders, River-style figures.

Usage (from the repository root)::

    python tools/bench/real_drift.py                      # every kind and order, both surveys
    python tools/bench/real_drift.py --kinds tuning --orders tuning   # nothing held out
    python tools/bench/real_drift.py --quick              # ZTF only, shorter tails

Real cutouts (:mod:`tools.bench.real_images`): the shared ZTF night plus the ZTF example
packets (``SKYLOOP_ZTF_STREAM_DIR`` / ``SKYLOOP_ZTF_ALERTS_DIR``, default ``../shared/data/...``;
malformed and simulated packets skipped and counted), scored as the ``ztf:`` source scores them
(difference cutouts by default, ``--cutout``), and tiles of the Hubble Deep Field as the
``hubble`` source cuts them. Changes (:mod:`tools.bench.plants`) are planted from a change
index on (ZTF: alerts 200 and 384 in time order; Hubble: tile 384); stationary streams are
the unchanged images in time order, shuffled (seeded) and by sky position.

Each stream's features and energies come from the real backbone (cached by content under
``--cache``); the controller, with the settings' policy (``ControllerConfig.from_settings``)
at ``--target-fpr``, replays each stream offline through the real scorer decisions
(:func:`tools.bench.policy_sim.replay`). Figures (:mod:`tools.bench.real_metrics`): detection
delay in images, false alarms, missed detections, windows in band before and after the change,
refines that reached past the change before the detection, and false alarms per 100,000
stationary images with the number of images that estimate rests on.

``SKYLOOP_BENCH_CODE=DIR`` runs this bench against the ``processors`` package of another
checkout (another branch's policy) with this checkout's bench; the header names its commit.

HELD OUT: the kinds ``saturation`` and ``survey_join`` and the order ``position`` are kept
out of tuning; they are printed in their own table. ``--kinds tuning --orders tuning`` runs
the others only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if os.environ.get("SKYLOOP_BENCH_CODE"):  # another checkout's processors (e.g. a policy branch)
    sys.path.insert(0, os.environ["SKYLOOP_BENCH_CODE"])
    import processors  # noqa: F401  (bound to that checkout from here on)

    sys.path.pop(0)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from processors.controller.config import ControllerConfig
from processors.core.config import load_settings
from processors.ingest.ztf.cutouts import CUTOUT_MODES
from tools.bench.plants import HELD_OUT, KINDS, TUNING, describe
from tools.bench.policy_sim import Replay, StreamFeatures, replay
from tools.bench.real_images import REPO, data_dir, load_hubble, load_ztf
from tools.bench.real_metrics import (
    BAND,
    ChangeScore,
    StationaryScore,
    score_change,
    score_stationary,
)
from tools.bench.real_report import machine_lines, print_changes, print_stationary
from tools.bench.real_streams import (
    ORDERS,
    Dataset,
    FeatureCache,
    change_stream,
    load_dataset,
    planted_tail,
    stationary_stream,
)

__all__ = ["main"]

HELD_OUT_ORDERS = ("position",)
ZTF_STRIP_DEG = 7.0  # one ZTF field is ~7 degrees on a side
HUBBLE_TILE = 64


def _kinds(text: str) -> list[str]:
    named = {"all": list(KINDS), "tuning": list(TUNING), "held-out": list(HELD_OUT)}
    kinds = named.get(text) or [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown}; accepted: all, tuning, held-out, {KINDS}")
    return kinds


def _orders(text: str) -> list[str]:
    tuning = [o for o in ORDERS if o not in HELD_OUT_ORDERS]
    named = {"all": list(ORDERS), "tuning": tuning, "held-out": list(HELD_OUT_ORDERS)}
    orders = named.get(text) or [o.strip() for o in text.split(",") if o.strip()]
    unknown = [o for o in orders if o not in ORDERS]
    if unknown:
        raise SystemExit(f"--orders: unknown {unknown}; accepted: all, tuning, held-out, {ORDERS}")
    return orders


def _indices(text: str) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


def _replay(job: tuple[StreamFeatures, ControllerConfig, int]) -> Replay:
    stream, config, lag = job
    return replay(stream, config, lag=lag)


def _run_all(
    jobs: list[tuple[StreamFeatures, ControllerConfig, int]], workers: int
) -> list[Replay]:
    if workers <= 1 or len(jobs) <= 1:
        return [_replay(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_replay, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="all", help="all | tuning | held-out | k1,k2,...")
    parser.add_argument("--orders", default="all", help="all | tuning | held-out | o1,o2,...")
    parser.add_argument("--datasets", default="ztf,hubble")
    parser.add_argument("--target-fpr", type=float, default=0.05)
    parser.add_argument("--cutout", default="difference", choices=CUTOUT_MODES)
    parser.add_argument("--ztf-change", type=_indices, default="200,384", help="change points")
    parser.add_argument("--ztf-after", type=int, default=448, help="ZTF images after a change")
    parser.add_argument("--hubble-images", type=int, default=768)
    parser.add_argument("--hubble-change", type=_indices, default="384", help="change points")
    parser.add_argument("--shuffles", type=int, default=2, help="shuffled streams (seeds 1..N)")
    parser.add_argument("--settle", type=int, default=56, help="after-windows start change+N")
    parser.add_argument("--lag", type=int, default=1, help="batches before an event applies")
    parser.add_argument("--jobs", type=int, default=2, help="replays in parallel")
    parser.add_argument("--quick", action="store_true", help="ZTF only, 320 images after")
    parser.add_argument("--events", action="store_true", help="print every stream's events")
    parser.add_argument(
        "--float32",
        action="store_true",
        help="embed in float32 even where the CPU has bf16 (figures comparable across machines)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("SKYLOOP_BENCH_CACHE") or REPO / ".skyloop" / "bench-cache"),
    )
    args = parser.parse_args(argv)
    kinds = _kinds(args.kinds)
    orders = _orders(args.orders)
    datasets = ["ztf"] if args.quick else args.datasets.split(",")
    ztf_after = 320 if args.quick else args.ztf_after
    ztf_changes = args.ztf_change[:1] if args.quick else args.ztf_change
    started = time.perf_counter()

    settings = load_settings()
    config = replace(ControllerConfig.from_settings(settings), target_fpr=args.target_fpr)
    target = config.target_fpr
    cache = FeatureCache(args.cache, bf16=not args.float32)
    print(f"drift on real images, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    for line in machine_lines(cache.backbone, config):
        print(line)
    data: dict[str, Dataset] = {}
    folders = [
        data_dir("SKYLOOP_ZTF_STREAM_DIR", "ztf-stream"),
        data_dir("SKYLOOP_ZTF_ALERTS_DIR", "ztf-alerts"),
    ]
    ztf, skipped = load_ztf(folders, args.cutout)
    data["ztf"] = load_dataset("ztf", ztf, cache, ZTF_STRIP_DEG)
    print(f"ztf: {len(ztf)} alerts ({args.cutout} cutouts); skipped {dict(skipped)}")
    if "hubble" in datasets or "survey_join" in kinds:
        tiles = load_hubble(args.hubble_images, size=HUBBLE_TILE)
        data["hubble"] = load_dataset("hubble", tiles, cache, float(HUBBLE_TILE))
        print(f"hubble: {len(tiles)} tiles of {HUBBLE_TILE} px")
    spans = {  # dataset -> [(change, end)]
        "ztf": [(c, min(c + ztf_after, len(data["ztf"].cutouts))) for c in ztf_changes],
        "hubble": [(c, args.hubble_images) for c in args.hubble_change],
    }
    print("changes: " + "; ".join(f"{k} ({describe(k)})" for k in kinds))
    where = ", ".join(f"{d} {c} of {e}" for d in datasets for c, e in spans[d])
    print(
        f"target FPR {target}; band [{BAND[0] * target:.4f}, {BAND[1] * target:.4f}]; "
        f"windows of 128; changes at {where}"
    )

    jobs: list[tuple[StreamFeatures, ControllerConfig, int]] = []
    labels: list[tuple[str, str, str, int]] = []  # (what, stream, kind/order, change)
    for name in datasets:
        other = data["hubble" if name == "ztf" else "ztf"] if "survey_join" in kinds else None
        first, last = min(c for c, _ in spans[name]), max(e for _, e in spans[name])
        for kind in kinds:
            tail = None
            if kind != "survey_join":  # one tail serves every change point
                tail = planted_tail(data[name], kind, first, last, cache)
            for change, end in spans[name]:
                stream = change_stream(data[name], kind, change, end, tail, first, other)
                jobs.append((stream, config, args.lag))
                labels.append(("change", f"{name}@{change}", kind, change))
        for order in orders:
            seeds = range(1, args.shuffles + 1) if order == "shuffled" else [0]
            for seed in seeds:
                jobs.append((stationary_stream(data[name], order, seed), config, args.lag))
                label = f"{name}/{order}" + (f"#{seed}" if order == "shuffled" else "")
                labels.append(("stationary", label, order, 0))
    embedded_s = time.perf_counter() - started
    print(f"{len(jobs)} replays ({cache.embedded} images embedded now, {embedded_s:.0f}s)...")
    results = _run_all(jobs, args.jobs)

    changes: list[ChangeScore] = []
    stationary: list[StationaryScore] = []
    for (what, name, kind, change), result in zip(labels, results, strict=True):
        if args.events:
            print(f"\n{name} {kind}:")
            for e, at in zip(result.events, result.event_at, strict=True):
                extra = e["params"].get("extra") or {}
                ref = f"{extra.get('reference_from_seq', '')}-{extra.get('reference_to_seq', '')}"
                said = ""
                if e["type"] == "decisions.revised":  # what the revision changed
                    ev = e["evidence"]
                    said = (
                        f"images {ev['images']:.0f} from {ev['change_point_seq']:.0f}, flags "
                        f"{ev['flags_before']:.0f} -> {ev['flags_after']:.0f}"
                    )
                print(f"  {at:5d} {e['type']:<20} {e['params'].get('reason') or ''} {ref}{said}")
        if what == "change":
            changes.append(score_change(name, kind, result, change, target, args.settle))
        else:
            stationary.append(score_stationary(name, kind, result, target))

    tuning_kinds = [c for c in changes if c.kind not in HELD_OUT]
    held_kinds = [c for c in changes if c.kind in HELD_OUT]
    tuning_orders = [s for s in stationary if s.order not in HELD_OUT_ORDERS]
    held_orders = [s for s in stationary if s.order in HELD_OUT_ORDERS]
    if tuning_kinds or tuning_orders:
        print("\n== tuning kinds and orders ==")
        print_changes(tuning_kinds)
        print_stationary(tuning_orders)
    if held_kinds or held_orders:
        print(
            f"\n== HELD OUT (kinds {', '.join(HELD_OUT)}; order {', '.join(HELD_OUT_ORDERS)}): "
            "never tune on these =="
        )
        print_changes(held_kinds)
        print_stationary(held_orders)
    print(f"\n{time.perf_counter() - started:.0f}s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
