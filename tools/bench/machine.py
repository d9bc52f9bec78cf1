"""What a bench's figures depend on: the CPU (model, cores, SIMD features), the accelerator and
the precision in use. Every bench prints these lines next to its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["FEATURES", "cpu_line", "device_lines"]

FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
"""The CPU flags that change the backbone's speed (bf16 needs avx512_bf16 or amx_bf16)."""


def cpu_line() -> str:
    """``CPU: <model>, <n> cores; features: <those of FEATURES it has>``."""
    model, flags = platform.processor() or "unknown CPU", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    have = " ".join(f for f in FEATURES if f in flags) or "none of " + " ".join(FEATURES)
    return f"CPU: {model}, {cores} cores; features: {have}"


def device_lines(backbone: Any | None = None) -> list[str]:
    """The CPU line, torch and CUDA, and (with ``backbone``) where and in which precision it
    runs."""
    import torch

    lines = [cpu_line()]
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        lines.append(
            f"CUDA: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}, bf16 {torch.cuda.is_bf16_supported()}, "
            f"torch {torch.__version__} (CUDA {torch.version.cuda})"
        )
    else:
        lines.append(f"CUDA: none; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if backbone is not None:
        lines.append(backbone_line(backbone))
    return lines


def backbone_line(backbone: Any) -> str:
    """The backbone's version, device, precision, layout and whether it runs prepared."""
    precision = "bf16 autocast" if backbone.bf16 else "float32"
    return (
        f"backbone {backbone.version} on {backbone.device}, {precision}, "
        f"channels_last={backbone.channels_last}"
        + (", prepared graph" if getattr(backbone, "prepared", False) else "")
    )
