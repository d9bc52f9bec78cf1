"""Backbone model: a timm image model turning survey cutouts into pooled features + logits.

What it produces: :class:`BackboneOutput` with pooled pre-classifier features and the
classifier's logits (the energy detector uses them). Preprocessing is in
:mod:`processors.score.backbone.preprocessing`, weights files and the TF-port key mapping in
:mod:`processors.score.backbone.weights`, the faster-but-equal execution in
:mod:`processors.score.backbone.execution`.

Determinism: the model runs in eval mode under ``torch.inference_mode``; the same weights,
settings, batch and machine give bit-identical outputs. bf16 autocast and different CPUs, thread
counts or batch compositions can change features in the last bits, so thresholds must come from
stored reference features (the calibration artifact), never from re-embedding.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray

from processors.core.allocator import keep_large_allocations
from processors.core.exceptions import BadImageError, ConfigError
from processors.core.torchvision_compat import ensure_torchvision_ops
from processors.score.backbone.execution import (
    TF_LITE,
    flip_kernels,
    fold_batchnorm,
    symmetric_twin_of_tf_lite,
)
from processors.score.backbone.prepared import (
    PreparedInfo,
    load_prepared,
    prepared_dir,
    prepared_key,
    save_prepared,
)
from processors.score.backbone.preprocessing import preprocess_batch
from processors.score.backbone.weights import (
    PACKAGED_MODEL,
    is_tf_port_layout,
    map_tf_port_state_dict,
    packaged_weights_path,
    read_state_dict,
    sha256_file,
    sha256_state,
)

__all__ = ["RANDOM_SEED", "Backbone", "BackboneOutput", "BackboneSpec"]

_log = logging.getLogger(__name__)

RANDOM_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a :class:`Backbone`; validated on construction (``ConfigError`` names the key).

    Attributes:
        name: a timm model name (``timm.list_models()``), e.g. ``efficientnet_lite0`` (default,
            offline weights packaged) or ``vit_base_patch16_224`` (needs ``weights``).
        weights: ``None`` for the packaged weights (``efficientnet_lite0`` only), a local file,
            or ``"hf-hub:org/repo"`` (only when ``HF_HUB_OFFLINE=0`` is set explicitly).
        allow_random: with no weights available, random init (seed 0) instead of an error; logs a
            loud warning. Never use for real scoring.
        image_size: side of the square model input. Models with a fixed input size (ViT) must
            get theirs.
        channels_last: NHWC memory format (measured: 1.6x faster fp32 on this CPU at batch 32).
        bf16: bfloat16 autocast (measured: about 2.7x faster on this CPU together with
            channels_last); silently off on a CPU without native bf16 (see ``Backbone.bf16``).
        compile: ``torch.compile`` the forward pass (needs a C++ compiler on CPU).
        prepared: load a prepared graph when one exists, else prepare one after building
            (float32 CPU backbones only; :mod:`~processors.score.backbone.prepared`).
        threads: ``torch.set_num_threads`` for this process (``None`` leaves it alone).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        stretch: ``"linear"`` percentile stretch or ``"asinh"`` on top of it.
    """

    name: str = PACKAGED_MODEL
    weights: str | None = None
    allow_random: bool = False
    image_size: int = 224
    channels_last: bool = True
    bf16: bool = True
    compile: bool = False
    prepared: bool = True
    threads: int | None = None
    device: str = "auto"
    stretch: Literal["linear", "asinh"] = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"backbone.name must be a timm model name, got {self.name!r}")
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 4096:
            raise ConfigError(
                f"backbone.image_size must be an int in [16, 4096], got {self.image_size!r}"
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"backbone.threads must be None or >= 1, got {self.threads!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(self.device)):
            raise ConfigError(
                f"backbone.device must be one of auto, cpu, cuda, cuda:N, mps; got {self.device!r}"
            )
        if self.stretch not in ("linear", "asinh"):
            raise ConfigError(f"backbone.stretch must be 'linear' or 'asinh', got {self.stretch!r}")


@dataclass(frozen=True)
class BackboneOutput:
    """Outputs for ``n`` images, row ``i`` for input ``i``.

    Attributes:
        features: ``(n, d)`` float32 pooled pre-classifier features.
        logits: ``(n, c)`` float32 classifier logits (ImageNet head for the default weights).
    """

    features: NDArray[np.float32]
    logits: NDArray[np.float32]


def _import_timm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_torchvision_ops()
    import timm

    return timm


def _per_channel(values: Sequence[float], what: str) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ConfigError(f"the model's {what} has {len(values)} channels; skyloop feeds 3")
    return (float(values[0]), float(values[1]), float(values[2]))


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"backbone.device={device!r} but CUDA is not available")
    return resolved


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class _FeaturesAndLogits(torch.nn.Module):
    """``x -> (pooled pre-logits features, logits)`` for any timm classifier."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model: Any = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats, pre_logits=True), self.model.forward_head(feats)


class Backbone:
    """A timm image model that turns survey cutouts into features and logits.

    Construction loads the weights (strict), puts the model in eval mode on the resolved device,
    and runs one dummy image to learn ``feature_dim`` and ``num_classes``. Raises
    :class:`ConfigError` for an unknown model name, a missing/unreadable/mismatched weights file,
    or no weights when ``allow_random`` is False.

    Attributes:
        spec: the settings it was built from.
        version: ``"<name>@<first 12 hex of sha256 of the weights file>"``; ``"<name>@hf-<12 hex
            of the loaded state>"`` for hub weights; ``"<name>@random-0"`` for random init.
        architecture: the timm architecture actually built (``tf_efficientnet_lite0`` for the
            packaged weights, see :mod:`processors.score.backbone.weights`).
        feature_dim, num_classes: output widths.
        mean, std: per-channel normalisation used by :meth:`preprocess`.
        device: where the model runs; bf16 / channels_last: whether those are in effect.
        flip_input: True when the model is the symmetric-padding twin of a TF-padded one.
        model: the timm module that runs (BatchNorms folded for EfficientNets).

    Example:
        >>> bb = Backbone(BackboneSpec())
        >>> out = bb.embed([np.random.default_rng(0).normal(size=(63, 63, 1)).astype("float32")])
        >>> out.features.shape, out.logits.shape, bb.version.startswith("efficientnet_lite0@")
        ((1, 1280), (1, 1000), True)
    """

    def __init__(self, spec: BackboneSpec | None = None) -> None:
        keep_large_allocations()  # activations reused from the heap, not mapped per batch
        self.spec = spec if spec is not None else BackboneSpec()
        if self.spec.threads is not None:
            torch.set_num_threads(self.spec.threads)
        self.device = _resolve_device(self.spec.device)
        self.flip_input = False
        self.prepared = False  # True: it runs the frozen graph (backbone.prepared)
        self.channels_last = self.spec.channels_last
        self.bf16 = self.spec.bf16 and _bf16_supported(self.device)
        if self.spec.bf16 and not self.bf16:
            _log.info("bf16 autocast is not supported on %s; running float32", self.device)
        key = self._prepared_key()
        if key is not None and self._load_prepared(key):
            return
        timm = _import_timm()
        name = self.spec.name
        if not timm.is_model(name):
            raise ConfigError(
                f"backbone.name={name!r} is not a timm model; accepted: any name in "
                f"timm.list_models(), e.g. 'efficientnet_lite0', 'vit_base_patch16_224'"
            )
        model: Any
        model, self.architecture, self.version = self._build(timm)
        model.eval()
        if isinstance(model, timm.models.efficientnet.EfficientNet):
            fold_batchnorm(model)
        cfg = model.pretrained_cfg
        if (
            cfg.get("fixed_input_size")
            and tuple(cfg["input_size"][1:]) != (self.spec.image_size,) * 2
        ):
            raise ConfigError(
                f"backbone.image_size={self.spec.image_size} but {name} takes fixed "
                f"{cfg['input_size'][1]}x{cfg['input_size'][2]} inputs"
            )
        self.mean = _per_channel(cfg["mean"], "mean")
        self.std = _per_channel(cfg["std"], "std")
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        runner: torch.nn.Module = _FeaturesAndLogits(model).eval()
        if self.spec.compile:
            runner = torch.compile(runner)  # type: ignore[assignment]
        self._runner: Any = runner
        probe = self.forward(torch.zeros(1, 3, self.spec.image_size, self.spec.image_size))
        self.feature_dim = int(probe.features.shape[1])
        self.num_classes = int(probe.logits.shape[1])
        if key is not None:
            self._prepare(key)

    # -- prepared backbones (processors.score.backbone.prepared) ------------------------------
    def _prepared_key(self) -> str | None:
        """The prepared file's key, or None for a backbone that always builds with timm."""
        spec = self.spec
        if not spec.prepared or self.device.type != "cpu" or self.bf16 or spec.compile:
            return None
        if spec.weights is None and spec.name == PACKAGED_MODEL:
            path = packaged_weights_path()
        elif spec.weights is not None and not spec.weights.startswith("hf-hub:"):
            path = Path(spec.weights).expanduser()
        else:
            return None
        if not path.is_file():
            return None  # the build says why
        return prepared_key(spec.name, sha256_file(path), spec.image_size, spec.channels_last)

    def _load_prepared(self, key: str) -> bool:
        loaded = load_prepared(prepared_dir(), key, self.spec.image_size, self.channels_last)
        if loaded is None:
            return False
        self._runner, info = loaded
        self.version, self.architecture = info.version, info.architecture
        self.flip_input, self.mean, self.std = info.flip_input, info.mean, info.std
        self.feature_dim, self.num_classes = info.feature_dim, info.num_classes
        self.prepared = True
        return True

    def _prepare(self, key: str) -> None:
        """Store this backbone prepared, and run the frozen runner from now on (so that every
        instance on the machine computes with the same graph)."""
        info = PreparedInfo(
            self.version,
            self.architecture,
            self.flip_input,
            self.mean,
            self.std,
            self.feature_dim,
            self.num_classes,
            [],
            [],
        )
        frozen = save_prepared(
            prepared_dir(), key, self._runner, info, self.spec.image_size, self.channels_last
        )
        if frozen is not None:
            self._runner, self.prepared = frozen, True

    def __repr__(self) -> str:
        return (
            f"Backbone(version={self.version!r}, architecture={self.architecture!r}, "
            f"device={str(self.device)!r}, bf16={self.bf16}, channels_last={self.channels_last})"
        )

    def _build(self, timm: Any) -> tuple[Any, str, str]:
        name, weights = self.spec.name, self.spec.weights
        if weights is not None and weights.startswith("hf-hub:"):
            if os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False"):
                raise ConfigError(
                    f"backbone.weights={weights!r} needs the network; set HF_HUB_OFFLINE=0 "
                    f"before starting, or pass a local weights file"
                )
            model = timm.create_model(weights, pretrained=True)
            return model, name, f"{name}@hf-{sha256_state(model)[:12]}"
        if weights is None and name == PACKAGED_MODEL:
            path = packaged_weights_path()
        elif weights is None:
            if not self.spec.allow_random:
                raise ConfigError(
                    f"backbone.weights is None but {name!r} has no offline weights; accepted: a "
                    f"weights file path, name={PACKAGED_MODEL!r}, or allow_random=True (tests)"
                )
            _log.warning(
                "RANDOM WEIGHTS: backbone %s is randomly initialised (seed %d); its features "
                "are meaningless for anomaly detection",
                name,
                RANDOM_SEED,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)
                model = timm.create_model(name, pretrained=False)
            return model, name, f"{name}@random-{RANDOM_SEED}"
        else:
            path = Path(weights).expanduser()
        state = read_state_dict(path)
        architecture = name
        if is_tf_port_layout(state) and re.fullmatch(r"efficientnet_lite\d", name):
            architecture = f"tf_{name}"
        num_classes = self._num_classes_in(timm, architecture, state, path)
        twin = TF_LITE.fullmatch(architecture) is not None and self.spec.image_size % 32 == 0
        if twin:
            model = symmetric_twin_of_tf_lite(timm, architecture, num_classes)
        else:
            model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
        if is_tf_port_layout(state):
            state = map_tf_port_state_dict(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(
                f"backbone.weights: {str(path)!r} does not match timm model {architecture!r} "
                f"(strict load): {str(exc)[:800]}"
            ) from exc
        if twin:
            flip_kernels(model)
            self.flip_input = True
        return model, architecture, f"{name}@{sha256_file(path)[:12]}"

    @staticmethod
    def _num_classes_in(
        timm: Any, architecture: str, state: Mapping[str, torch.Tensor], path: Path
    ) -> int:
        if is_tf_port_layout(state):
            head = "_fc"
        else:
            head = str(timm.models.get_pretrained_cfg(architecture).classifier or "")
        weight = state.get(f"{head}.weight")
        if weight is None or weight.ndim != 2:
            raise ConfigError(
                f"backbone.weights: {str(path)!r} has no classifier '{head}.weight'; the energy "
                f"detector needs the classification head's logits"
            )
        return int(weight.shape[0])

    def preprocess(self, images: Sequence[NDArray[Any]]) -> torch.Tensor:
        """Images to a normalised ``(n, 3, s, s)`` float32 CPU tensor (see :mod:`.preprocessing`).

        Same-shape images are preprocessed together (:func:`preprocess_batch`); row ``i`` is
        exactly ``preprocess_image(images[i], ...)``. Raises :class:`BadImageError` naming the
        index of the first image that cannot be used.
        """
        return preprocess_batch(
            images, self.spec.image_size, self.mean, self.std, self.spec.stretch
        )

    def forward(self, batch: torch.Tensor) -> BackboneOutput:
        """Run a preprocessed ``(n, 3, s, s)`` batch; outputs are float32 numpy on the CPU."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BadImageError(f"expected an (n, 3, h, w) batch, got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            empty = np.empty((0, getattr(self, "feature_dim", 0)), np.float32)
            return BackboneOutput(empty, np.empty((0, getattr(self, "num_classes", 0)), np.float32))
        x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.flip_input:
            x = x.flip(-2, -1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
        ):
            features, logits = self._runner(x)
        return BackboneOutput(
            features=features.float().cpu().numpy(),
            logits=logits.float().cpu().numpy(),
        )

    def embed(
        self, images: Sequence[NDArray[Any]], *, batch_size: int | None = None
    ) -> BackboneOutput:
        """Preprocess and forward; ``batch_size`` bounds memory by running chunks in order."""
        if batch_size is None or len(images) <= batch_size:
            return self.forward(self.preprocess(images))
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        parts = [
            self.forward(self.preprocess(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return BackboneOutput(
            features=np.concatenate([p.features for p in parts]),
            logits=np.concatenate([p.logits for p in parts]),
        )
