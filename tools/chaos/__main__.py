"""``python -m tools.chaos [--images 300] [--fault kill-score ...]``: fault table of skyloop run.

Runs each fault scenario (:mod:`tools.chaos.scenarios`) in turn, each in a fresh run of the
embedded stack, and prints one row per fault: images in, images out, duplicates, losses,
redelivered copies (of which rescored), seconds to recover. ``--schedule random --faults 20
[--seed S]`` runs one randomized schedule instead (:mod:`tools.chaos.schedule`; the seed is
printed, so a failure can be replayed). Exits 1 unless every row has zero duplicates and zero
losses, met its requirements (recovery within the target, ...) and its run ended cleanly; the
unmet requirements and the checker's findings are printed under the table.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.chaos.scenarios import FAULTS, RECOVERY_TARGET_S, Outcome, run_scenario

__all__ = ["format_table", "main"]


def format_table(rows: list[Outcome]) -> str:
    header = ["fault", "images in", "images out", "duplicates", "losses", "redelivered (rescored)"]
    header += ["recover s", "exit", "notes"]
    cells = [
        [
            r.fault,
            str(r.images_in),
            str(r.images_out),
            str(r.duplicates),
            str(r.losses),
            f"{r.redelivered} ({r.rescored})",
            "-" if r.recover_s is None else f"{r.recover_s:.1f}",
            str(r.exit_code),
            r.notes,
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument(
        "--images", type=int, help="per run; default 300, or 25 per fault of a random schedule"
    )
    parser.add_argument("--fault", action="append", choices=FAULTS, help="repeatable; default all")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--schedule", choices=["random"], help="one randomized schedule instead")
    parser.add_argument("--faults", type=int, default=20, help="faults of the random schedule")
    parser.add_argument("--seed", type=int, help="seed of the random schedule (default: drawn)")
    parser.add_argument(
        "--kill-broker",
        action="store_true",
        help="random schedule: also kill the broker (then the durable one); off by default",
    )
    parser.add_argument("--recovery-target", type=float, default=RECOVERY_TARGET_S)
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, CI cancelling) unwinds, so each run's cleanup stops its skyloop run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="skyloop-chaos-") as tmp:
        work = args.work_dir or Path(tmp)
        if args.schedule == "random":
            from tools.chaos.schedule import run_schedule

            seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
            print(
                f"chaos: random schedule of {args.faults} faults, seed {seed} "
                f"(replay: --schedule random --faults {args.faults} --seed {seed})",
                file=sys.stderr,
                flush=True,
            )
            rows.append(
                run_schedule(
                    args.faults,
                    args.images or max(300, 25 * args.faults),
                    work / f"random-{seed}",
                    seed,
                    kill_broker=args.kill_broker,
                    recovery_target_s=args.recovery_target,
                )
            )
        for fault in [] if args.schedule else args.fault or FAULTS:
            print(f"chaos: {fault} ...", file=sys.stderr, flush=True)
            rows.append(
                run_scenario(
                    fault, args.images or 300, work / fault, recovery_target_s=args.recovery_target
                )
            )
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(rows))
    for row in rows:
        for failure in row.failures:
            print(f"{row.fault}: {failure}")
    return 0 if all(r.clean for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
