"""Tables of the real-image drift bench (markdown, to paste into BENCHMARKS.md) and its header.

The header names what the figures depend on: the CPU (model, cores, the vector/matrix
features the backbone can use), torch, the backbone's version and precision, the checkout and
commit whose ``processors`` (the policy) ran, and the controller's drift parameters.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.machine import backbone_line, cpu_line
from tools.bench.plants import describe
from tools.bench.real_metrics import ChangeScore, StationaryScore

__all__ = ["machine_lines", "print_changes", "print_stationary"]


def _commit() -> str:
    import processors

    root = Path(processors.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%h %cs %s"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        branch = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--abbrev-ref", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return f"{root.name}: {branch} @ {out[:80]}"
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"


def machine_lines(backbone: Any, config: Any) -> list[str]:
    """What the figures depend on, one fact per line."""
    import torch

    return [
        cpu_line(),
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; " + backbone_line(backbone),
        f"policy code: {_commit()}",
        f"controller: policy {config.policy}, reference {config.reference_size} -> "
        f"{config.reference_max_size}, drift window {config.drift_window} step "
        f"{config.drift_step} x{config.drift_consecutive}, tests {config.drift_tests}",
    ]


def _band(pair: tuple[int, int]) -> str:
    inside, total = pair
    return f"{inside}/{total}" if total else "-"


def _delay(c: ChangeScore) -> str:
    return "missed" if c.delay is None else str(c.delay)


def print_changes(scores: list[ChangeScore]) -> None:
    """One row per stream, then one per kind (River's counts summed over its streams)."""
    if not scores:
        return
    print(
        "\n| kind | stream | change / images | delay | false alarms before | refines past "
        "change | in band before | in band after (revised) | whole stream in [0.4, 2] x "
        "(revised) | flag rate, first 64 after | after windows | after windows, revised |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in scores:
        rates = " ".join(f"{r:.3f}" for r in c.after_rates)
        revised = " ".join(f"{r:.3f}" for r in c.after_rates_revised or [])
        print(
            f"| {c.kind} | {c.stream} | {c.change} / {c.images} | {_delay(c)} | "
            f"{c.false_alarms} | {c.refine_past} | {_band(c.before)} | {_band(c.after)} "
            f"({_band(c.after_revised)}) | {_band(c.whole)} ({_band(c.whole_revised)}) | "
            f"{c.effect:.3f} | {rates} | {revised} |"
        )
    by_kind: dict[str, list[ChangeScore]] = defaultdict(list)
    for c in scores:
        by_kind[c.kind].append(c)
    print(
        "\n| kind | change | streams | detected | missed | delay per stream | mean delay | "
        "false alarms | streams with a refine past the change | in band before | in band after "
        "| in band after, revised |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, group in by_kind.items():
        delays = [c.delay for c in group if c.delay is not None]
        mean = f"{np.mean(delays):.0f}" if delays else "-"
        before = (sum(c.before[0] for c in group), sum(c.before[1] for c in group))
        after = (sum(c.after[0] for c in group), sum(c.after[1] for c in group))
        after_revised = (
            sum(c.after_revised[0] for c in group),
            sum(c.after_revised[1] for c in group),
        )
        print(
            f"| {kind} | {describe(kind)} | {len(group)} | {len(delays)} | "
            f"{len(group) - len(delays)} | {', '.join(f'{c.stream} {_delay(c)}' for c in group)}"
            f" | {mean} | {sum(c.false_alarms for c in group)} | "
            f"{sum(c.refine_past > 0 for c in group)} | {_band(before)} | {_band(after)} | "
            f"{_band(after_revised)} |"
        )


def print_stationary(scores: list[StationaryScore]) -> None:
    """One row per stationary stream and the false-alarm rate per 100,000 images."""
    if not scores:
        return
    print(
        "\n| stationary stream | images judged | false alarms (at image) | windows in band "
        "| window flag rates |"
    )
    print("|---|---|---|---|---|")
    for s in scores:
        at = f" ({', '.join(map(str, s.alarms_at))})" if s.alarms_at else ""
        rates = " ".join(f"{r:.3f}" for r in s.rates)
        print(f"| {s.stream} | {s.images} | {s.false_alarms}{at} | {_band(s.windows)} | {rates} |")
    images = sum(s.images for s in scores)
    alarms = sum(s.false_alarms for s in scores)
    bound = f"; 95 % upper bound {3e5 / images:.0f}" if alarms == 0 and images else ""
    print(
        f"\nfalse alarms per 100,000 stationary images: {alarms * 1e5 / max(images, 1):.0f} "
        f"({alarms} on {images:,} images judged in {len(scores)} streams{bound}; "
        "shuffled and position orders reuse the same images, so the streams are not independent)"
    )
