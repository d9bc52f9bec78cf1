"""End-to-end images/s of ``skyloop run`` next to the raw backbone img/s, in one run.

Usage (from the repository root)::

    python tools/bench/end_to_end.py [--images 500] [--batch 32] [--iters 20]

Order: raw backbone throughput first (forward pass on a preprocessed batch, the model and batch
size the scorer uses), then a full ``skyloop run`` on the embedded stack (broker + 4 processors
+ ingest as separate processes, all on this machine), timed from the start of ingest until every
stage has handled every image; ingest starts once every worker is ready (``overlap_start=False``:
a plain run ingests while they start, which would leave part of the work outside the time).
The ratio says how much of the model's speed survives Kafka, Avro, decoding, the OOD ensemble,
the controller and ClickHouse on the same cores.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from processors.core.config import load_settings
from processors.local import run_local
from processors.score.backbone import Backbone, BackboneSpec
from tools.bench.backbone import measure_backbone_throughput
from tools.bench.machine import device_lines
from tools.bench.procstat import CpuSampler

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)

    backbone = Backbone(BackboneSpec())
    for line in device_lines(backbone):
        print(line)
    raw = measure_backbone_throughput(backbone, args.batch, args.iters)
    del backbone  # free the cores' caches and memory for the pipeline's own scorer

    own_before = sum(os.times()[:2])
    with tempfile.TemporaryDirectory() as tmp, CpuSampler() as cpu:
        settings = load_settings(data_dir=Path(tmp), batch_size=args.batch)
        result = run_local(
            settings, ["synthetic", "hubble"], args.images, out=io.StringIO(), overlap_start=False
        )
    used = {**cpu.by_name(), "supervisor": sum(os.times()[:2]) - own_before}
    images = result.counts.get("images", 0)
    e2e = images / result.ingest_seconds
    print(f"raw backbone            {raw:8.1f} img/s  (batch {args.batch})")
    print(
        f"skyloop run end to end  {e2e:8.1f} img/s  ({images} images in "
        f"{result.ingest_seconds:.1f}s; whole run incl. start-up {result.seconds:.1f}s)"
    )
    print(f"ratio e2e / raw         {e2e / raw:8.2f}")
    # Where the cores went over the whole run (start-up included), busiest first.
    ours = sum(used.values())
    print(
        f"CPU seconds per process over the whole run ({result.seconds:.1f} s wall, 2 cores = "
        f"{2 * result.seconds:.0f} CPU s; other work on the machine "
        f"{max(cpu.machine_busy_s - ours, 0.0):.1f} CPU s):"
    )
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<12} {seconds:7.1f}  {seconds / result.seconds:5.2f} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
