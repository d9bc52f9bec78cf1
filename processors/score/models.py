"""Backbones for the model slots that ``ControlState`` names (production, shadow, canary).

A :class:`~processors.core.control.ModelSlot` names a version, a timm model name
(``slot.backbone``) and optionally a weights artifact (``slot.artifact_id``, the weights file's
bytes in the :class:`~processors.core.artifacts.ArtifactStore`; ``.pth``/``.pt`` torch state
dicts or ``.safetensors``). A slot without an artifact uses the configured backbone when it
names the same model (or none), else that model's packaged weights (``efficientnet_lite0``) or,
with ``allow_random_weights``, random weights (tests only).

Invariants:
- Each distinct (model name, weights) is loaded once and kept; a slot whose weights are the
  configured backbone's (same :attr:`Backbone.version`) shares that instance, so its features
  are computed once per batch.
- A slot that cannot be loaded (absent or corrupt artifact, weights that do not fit the model)
  is logged once and remembered as unavailable: :meth:`BackboneCache.get` returns ``None`` and
  the scorer leaves that slot out; production scoring is never blocked by another slot.
- Loading happens synchronously the first time a slot is needed (seconds, once per slot), so
  the same batch and ControlState always give the same outputs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from processors.core.artifacts import ArtifactError, ArtifactStore
from processors.core.config import ScoreSettings
from processors.core.control import ModelSlot
from processors.core.exceptions import ConfigError
from processors.score.backbone import Backbone, BackboneSpec

__all__ = ["BackboneCache", "backbone_spec_from_settings"]

log = logging.getLogger(__name__)

_SAFETENSORS_HEADER_END = 8


def backbone_spec_from_settings(settings: ScoreSettings) -> BackboneSpec:
    """The configured production backbone (``settings.score``): ``backbone``,
    ``backbone_weights``, ``image_size``, ``torch_threads``, ``torch_compile``,
    ``prepared_backbone``, ``allow_random_weights``."""
    return BackboneSpec(
        name=settings.backbone,
        weights=settings.backbone_weights,
        allow_random=settings.allow_random_weights,
        image_size=settings.image_size,
        threads=settings.torch_threads,
        compile=settings.torch_compile,
        prepared=settings.prepared_backbone,
    )


class BackboneCache:
    """Resolves model slots to loaded backbones; see the module docstring for the invariants."""

    def __init__(self, default: Backbone, store: ArtifactStore, models_dir: Path) -> None:
        self.default = default
        self.store = store
        self.models_dir = models_dir
        self._loaded: dict[tuple[str, str | None], Backbone] = {}
        self._failed: dict[tuple[str, str | None], str] = {}

    def get(self, slot: ModelSlot | None) -> Backbone | None:
        """The backbone of ``slot`` (``None`` slot: the configured one), or None if unavailable."""
        if slot is None:
            return self.default
        name = slot.backbone or self.default.spec.name
        key = (name, slot.artifact_id)
        if slot.artifact_id is None and name == self.default.spec.name:
            return self.default
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            return None
        try:
            backbone = self._load(name, slot.artifact_id)
        except (ArtifactError, ConfigError) as exc:
            self._failed[key] = str(exc)
            log.error("score: model %s (%s) cannot be loaded; left out: %s", slot.version, key, exc)
            return None
        if backbone.version == self.default.version:
            backbone = self.default
        self._loaded[key] = backbone
        log.info("score: loaded model %s as %r", slot.version, backbone)
        return backbone

    def _load(self, name: str, artifact_id: str | None) -> Backbone:
        spec = dataclasses.replace(self.default.spec, name=name, weights=None, threads=None)
        if artifact_id is not None:
            spec = dataclasses.replace(spec, weights=str(self._weights_file(artifact_id)))
        return Backbone(spec)

    def _weights_file(self, artifact_id: str) -> Path:
        """A verified copy of the artifact with the suffix its format needs."""
        data = self.store.get_bytes(artifact_id)
        is_safetensors = data[_SAFETENSORS_HEADER_END : _SAFETENSORS_HEADER_END + 1] == b"{"
        path = self.models_dir / f"{artifact_id}{'.safetensors' if is_safetensors else '.pt'}"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path
