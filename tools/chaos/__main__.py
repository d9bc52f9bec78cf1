"""``python -m tools.chaos [--images 300] [--fault kill-score ...]``: fault table of skyloop run.

Runs each fault scenario (:mod:`tools.chaos.scenarios`) in turn, each in a fresh run of the
embedded stack, and prints one row per fault: images in, images out, duplicates, losses,
score rows redelivered (absorbed under FINAL), seconds to recover. Exits 1 unless every row
has zero duplicates and zero losses and its run ended cleanly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.chaos.scenarios import FAULTS, Outcome, run_scenario

__all__ = ["format_table", "main"]


def format_table(rows: list[Outcome]) -> str:
    header = ["fault", "images in", "images out", "duplicates", "losses", "redelivered"]
    header += ["recover s", "exit", "notes"]
    cells = [
        [
            r.fault,
            str(r.images_in),
            str(r.images_out),
            str(r.duplicates),
            str(r.losses),
            str(r.redelivered),
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
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--fault", action="append", choices=FAULTS, help="repeatable; default all")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    rows: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="skyloop-chaos-") as tmp:
        work = args.work_dir or Path(tmp)
        for fault in args.fault or FAULTS:
            print(f"chaos: {fault} ...", file=sys.stderr, flush=True)
            rows.append(run_scenario(fault, args.images, work / fault))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(rows))
    return 0 if all(r.clean for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
