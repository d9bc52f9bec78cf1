"""Prepared backbones: the built float32 runner saved as frozen TorchScript, loaded without timm.

Why: building a backbone imports timm, which imports torchvision and through it
``torch._dynamo``: about 2.5 s of a scorer's start on a 2-core AVX2 machine, where building the
model itself takes 0.3 s. A frozen TorchScript of the same runner (BN folded, kernels flipped,
channels_last) loads in about 0.15 s and imports none of them. The first :class:`~processors.
score.backbone.model.Backbone` on a machine builds with timm and prepares; every later one in
any process loads the prepared file.

Which backbones: float32 on the CPU, not compiled, with a local or packaged weights file (the
key needs the file's hash). bf16 autocast, CUDA, ``torch.compile``, hub and random weights
always build with timm.

Invariants:
- A prepared file is found only under its key: the format, the weights file's SHA-256, the
  model name, the input size, channels_last, and the torch and timm versions. Anything that
  could change the traced graph changes the key, so a stale file is never read.
- A loaded file must reproduce the probe outputs stored beside it (features and logits of a
  fixed input, within 1e-4); else it is ignored and rebuilt. A file that cannot be read is
  ignored the same way. Either is logged.
- Writes go to a temporary name, then are renamed: a killed writer leaves no half file, and
  two scorers preparing at once both end with a whole one.
- The backbone that prepared runs the frozen runner too, so every instance on a machine
  computes with the same graph (bit-identical outputs for the same batch, as before).

Folder: ``$SKYLOOP_PREPARED_DIR``, else ``$XDG_CACHE_HOME/skyloop/backbones``, else
``~/.cache/skyloop/backbones``. TorchScript is deprecated from torch 2.13 (it warns; the
warnings are silenced here). ``torch.export`` would be its successor, but its loader imports
``torch._dynamo`` and took 2.3 s here: no gain. If TorchScript goes, preparing fails, which is
logged, and the backbone builds with timm as before.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PreparedInfo", "load_prepared", "prepared_dir", "prepared_key", "save_prepared"]

_log = logging.getLogger(__name__)

FORMAT = 1
PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PreparedInfo:
    """What a prepared runner needs beside its graph (stored as JSON next to it)."""

    version: str
    architecture: str
    flip_input: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    num_classes: int
    probe_features: list[float]
    probe_logits: list[float]


def prepared_dir() -> Path:
    """Where prepared backbones live (see the module docstring)."""
    explicit = os.environ.get("SKYLOOP_PREPARED_DIR")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "skyloop" / "backbones"


def prepared_key(name: str, weights_sha256: str, image_size: int, channels_last: bool) -> str:
    """The file name stem of a prepared backbone (see the invariants)."""
    try:
        timm_version = importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        timm_version = "absent"
    parts = {
        "format": FORMAT,
        "name": name,
        "weights": weights_sha256,
        "image_size": image_size,
        "channels_last": channels_last,
        "torch": torch.__version__,
        "timm": timm_version,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return f"{name}-{image_size}-{digest}"


def probe_input(image_size: int, channels_last: bool) -> torch.Tensor:
    """A fixed, non-trivial input: the same on every machine."""
    grid = torch.linspace(-1.0, 1.0, image_size)
    x = torch.stack(
        [
            grid[:, None] * grid[None, :],
            grid[:, None].expand(-1, image_size),
            grid[None, :].expand(image_size, -1),
        ]
    )[None]
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def probe(runner: Any, image_size: int, channels_last: bool) -> tuple[list[float], list[float]]:
    """The first 32 features and logits of the runner on :func:`probe_input`."""
    with torch.inference_mode():
        features, logits = runner(probe_input(image_size, channels_last))
    return features[0, :32].tolist(), logits[0, :32].tolist()


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*", category=DeprecationWarning)
        yield


def load_prepared(
    folder: Path, key: str, image_size: int, channels_last: bool
) -> tuple[Any, PreparedInfo] | None:
    """The prepared runner and its info, or None (absent, unreadable or not reproducing)."""
    graph, sidecar = folder / f"{key}.pt", folder / f"{key}.json"
    if not (graph.is_file() and sidecar.is_file()):
        return None
    try:
        raw = json.loads(sidecar.read_text())
        info = PreparedInfo(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
        with _quiet_torchscript():
            runner = torch.jit.load(str(graph), map_location="cpu")
        features, logits = probe(runner, image_size, channels_last)
    except Exception as exc:  # whatever went wrong, the answer is the same: build with timm
        _log.warning("prepared backbone %s unreadable (%s); building it again", graph, exc)
        return None
    expected = np.array(info.probe_features + info.probe_logits)
    got = np.array(features + logits)
    if expected.shape != got.shape or not np.allclose(
        got, expected, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE
    ):
        _log.warning("prepared backbone %s does not reproduce its probe; building it again", graph)
        return None
    return runner, info


def save_prepared(
    folder: Path,
    key: str,
    runner: torch.nn.Module,
    info: PreparedInfo,
    image_size: int,
    channels_last: bool,
) -> Any | None:
    """Trace, freeze and store ``runner``; returns the frozen runner (None if it failed).

    A model whose trace is not faithful is not prepared: the tracer warned (a Python value
    taken from a tensor, e.g. a shape check, became a constant), or the frozen graph differs
    from ``runner`` on a batch of three (traced on one image) beyond the probe's tolerance."""
    example = probe_input(image_size, channels_last)
    batch = torch.cat([example, example.flip(-1), -example]).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    try:
        with (
            _quiet_torchscript(),
            warnings.catch_warnings(record=True) as caught,
            torch.inference_mode(),
        ):
            warnings.simplefilter("always", torch.jit.TracerWarning)
            frozen = torch.jit.freeze(torch.jit.trace(runner.eval(), example, check_trace=False))
            same = all(
                torch.allclose(a, b, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE)
                for a, b in zip(frozen(batch), runner(batch), strict=True)
            )
        if not same or any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
            _log.info("backbone %s does not trace faithfully; it builds with timm each time", key)
            return None
        features, logits = probe(frozen, image_size, channels_last)
        info = PreparedInfo(**{**asdict(info), "probe_features": features, "probe_logits": logits})
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.tmp"
        graph_tmp, sidecar_tmp = folder / f"{key}.pt{suffix}", folder / f"{key}.json{suffix}"
        with _quiet_torchscript():
            frozen.save(str(graph_tmp))
        sidecar_tmp.write_text(json.dumps(asdict(info)))
        graph_tmp.replace(folder / f"{key}.pt")  # the graph first: a sidecar names a whole file
        sidecar_tmp.replace(folder / f"{key}.json")
    except Exception as exc:  # preparing is an optimisation: it never fails a scorer
        _log.warning(
            "could not prepare backbone %s in %s (%s); it builds with timm", key, folder, exc
        )
        return None
    return frozen
