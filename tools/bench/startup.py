"""How fast a run starts: ``skyloop run --images N`` timed from the command's start.

Each round runs every variant once, in turn, on a fresh data folder (the model and prepared
backbone caches are shared, as on a user's machine after the first run). While a run goes, the
bench reads its progress files every ``--interval`` seconds and prints, in seconds from the
command's start: the first image published by ingest, each worker ready, the first image scored,
the first score stored and the whole command's wall time. A variant is ``LABEL`` or
``"LABEL:NAME=VALUE NAME=VALUE"`` (environment settings for that run, space-separated; a
value may hold commas); ``--variant as-is`` is the default.

    python tools/bench/startup.py --images 64 --rounds 3
    python tools/bench/startup.py --variant as-is --variant timm:SKYLOOP_PREPARED_BACKBONE=false

The figures of one bench run are comparable with each other only (the machine's load moves
them); the bench prints the CPU line with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from processors.core.progress import read_progress
from processors.local import latest_run_dir
from tools.bench.machine import cpu_line

MILESTONES = (
    ("published", "ingest", "published"),
    ("score ready", "score", "ready"),
    ("stats ready", "stats", "ready"),
    ("sink ready", "sink", "ready"),
    ("first scored", "score", "scored"),
    ("first stored", "sink", "scores"),
)
"""(column, progress file, key): a milestone is reached when the key is first truthy."""


@dataclass(frozen=True)
class Variant:
    label: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        label, _, assignments = text.partition(":")
        env: dict[str, str] = {}
        for item in assignments.split():
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise argparse.ArgumentTypeError(f"{item!r} is not NAME=VALUE in {text!r}")
            env[name] = value
        return cls(label or "as-is", env)


def time_one(variant: Variant, images: int, interval_s: float) -> dict[str, float]:
    """One ``skyloop run --images N``: each milestone's and the wall's seconds from the start."""
    with tempfile.TemporaryDirectory(prefix="skyloop-startup-") as tmp:
        data_dir = Path(tmp)
        env = {**os.environ, "SKYLOOP_DATA_DIR": str(data_dir), **variant.env}
        command = [sys.executable, "-m", "processors.cli", "run", "--images", str(images)]
        seen: dict[str, float] = {}
        started = time.monotonic()
        # its output to a file: a pipe read only at the end would block a long run when full
        with (
            (data_dir / "run.log").open("w+") as log,
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) as proc,
        ):
            while proc.poll() is None:
                run_dir = latest_run_dir(data_dir)
                now = time.monotonic() - started
                for column, name, key in MILESTONES:
                    if column in seen or run_dir is None:
                        continue
                    if read_progress(run_dir / "progress", name).get(key):
                        seen[column] = now
                time.sleep(interval_s)
            log.seek(0)
            tail = log.read()[-2000:]
        seen["wall"] = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"{variant.label}: skyloop run exited {proc.returncode}\n{tail}")
        return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between reads")
    parser.add_argument("--variant", type=Variant.parse, action="append", dest="variants")
    args = parser.parse_args(argv)
    variants: list[Variant] = args.variants or [Variant("as-is")]
    print(cpu_line())
    print(f"skyloop run --images {args.images}, {args.rounds} rounds; seconds from the start")
    columns = [column for column, _, _ in MILESTONES] + ["wall"]
    results: dict[str, list[dict[str, float]]] = {v.label: [] for v in variants}
    for round_ in range(1, args.rounds + 1):
        for variant in variants:
            seen = time_one(variant, args.images, args.interval)
            results[variant.label].append(seen)
            figures = "  ".join(f"{c} {seen[c]:.1f}" if c in seen else f"{c} -" for c in columns)
            print(f"round {round_} {variant.label}: {figures}", flush=True)
    print("\nmedian | " + " | ".join(columns))
    for label, runs in results.items():
        cells = []
        for column in columns:
            values = [run[column] for run in runs if column in run]
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
        print(f"{label} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
