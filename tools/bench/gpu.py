"""The scorer on a GPU: raw backbone swept over batch sizes and precisions, then the scoring
pipeline and ``skyloop run`` end to end at the best batch, each with its ratio to raw.

Usage (from the repository root, on a machine with CUDA)::

    python tools/bench/gpu.py [--batches 32,64,128,256,512] [--iters 20] [--images 3000]
                              [--chunks 1,2] [--skip-e2e] [--allow-cpu]

Steps, all in one run so the ratios compare like with like:
1. the machine: CPU features, the GPU (name, memory, capability, bf16), torch and CUDA;
2. raw backbone images/s (:func:`tools.bench.backbone.measure_backbone_throughput`: forward on
   a preprocessed batch, outputs copied back to the host) for every batch size, in float32 and
   bf16 autocast (where the GPU has it), channels_last;
3. the scoring pipeline (:mod:`tools.bench.scoring`: Kafka, Avro, decoding on CPU threads,
   the OOD ensemble) at the fastest batch, for each ``--chunks`` (chunks > 1 decode and
   preprocess the next chunk on a CPU thread while the GPU runs this one);
4. ``skyloop run`` end to end (:mod:`tools.bench.end_to_end`) at that batch, ``--images``.
Steps 3 and 4 run as child processes (their own CUDA context each) with the scorer's default
precision (bf16 autocast where the device has it) and print their own figures and ratios.
The backbone's reduced precision is bf16 autocast only (fp16 is not a setting of the scorer;
on an H100 bf16 runs at fp16's speed).

Without CUDA it refuses (``--allow-cpu`` runs the same steps on the CPU, to try the script).
The aim (issue 19): >= 3,000 images/s through the scorer on one H100, end to end >= 0.8 x raw.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from processors.score.backbone import Backbone, BackboneSpec
from tools.bench.backbone import measure_backbone_throughput
from tools.bench.machine import device_lines

__all__ = ["main", "sweep"]

REPO = Path(__file__).resolve().parents[2]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def sweep(device: str, batches: list[int], iters: int) -> dict[tuple[int, bool], float]:
    """Raw images/s per (batch, bf16) on ``device``; bf16 only where the device has it."""
    base = BackboneSpec(device=device, channels_last=True, bf16=False)
    rates: dict[tuple[int, bool], float] = {}
    for bf16 in (False, True):
        backbone = Backbone(dataclasses.replace(base, bf16=bf16))
        if bf16 and not backbone.bf16:
            print("bf16: not supported here, skipped")
            break
        for batch in batches:
            try:
                rates[(batch, bf16)] = measure_backbone_throughput(backbone, batch, iters)
            except torch.OutOfMemoryError:
                print(f"batch {batch} bf16={bf16}: out of memory, larger batches skipped")
                torch.cuda.empty_cache()
                break
            precision = "bf16" if bf16 else "fp32"
            print(f"raw  batch {batch:5d}  {precision}  {rates[(batch, bf16)]:9.1f} img/s")
        del backbone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rates


def _child(module: str, args: list[str], env: dict[str, str]) -> int:
    command = [sys.executable, "-m", module, *args]
    print(f"\n$ {' '.join(command)}", flush=True)
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=_ints, default=[32, 64, 128, 256, 512])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per raw figure")
    parser.add_argument("--images", type=int, default=3000, help="images of the end-to-end run")
    parser.add_argument("--chunks", type=_ints, default=[1, 2], help="score_chunks to try")
    parser.add_argument("--skip-e2e", action="store_true", help="no end-to-end skyloop run")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a dry run)")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "gpu.py: CUDA is not available here (torch.cuda.is_available() is False); run it on "
            "a machine with an NVIDIA GPU, or pass --allow-cpu to try the steps on the CPU",
            file=sys.stderr,
        )
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for line in device_lines():
        print(line)
    rates = sweep(device, args.batches, args.iters)
    (batch, bf16), best = max(rates.items(), key=lambda kv: kv[1])
    print(f"fastest raw: batch {batch}, {'bf16' if bf16 else 'fp32'}, {best:.1f} img/s")

    # the children build the scorer's default backbone: bf16 autocast wherever the device has it
    env = dict(os.environ)
    failed = 0
    for chunks in args.chunks:
        images = max(batch * 8, 512)
        failed |= _child(
            "tools.bench.scoring",
            ["--batch", str(batch), "--images", str(images), "--chunks", str(chunks)],
            env,
        )
    if not args.skip_e2e:
        failed |= _child(
            "tools.bench.end_to_end", ["--images", str(args.images), "--batch", str(batch)], env
        )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
