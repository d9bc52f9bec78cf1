"""Image backbone: robust preprocessing of survey cutouts and pooled features + ImageNet logits.

What it consumes: decoded pixels, ``float32`` arrays ``(h, w, bands)`` (or ``(h, w)``) of any
size and dynamic range. What it produces: :class:`BackboneOutput` with pooled pre-classifier
features and the classifier's logits (the energy detector uses them).

One concern per module, this package re-exports the public names:
  - :mod:`~processors.score.backbone.preprocessing`: the five preprocessing steps every scorer
    must agree on (:func:`preprocess_image`, :func:`preprocess_batch`);
  - :mod:`~processors.score.backbone.weights`: the packaged offline weights, reading weights
    files, and the TF-port (EfficientNet-PyTorch layout) to timm key mapping;
  - :mod:`~processors.score.backbone.execution`: BatchNorm folding and the symmetric-padding
    twin of TF-padded EfficientNet-Lite (same maths, faster);
  - :mod:`~processors.score.backbone.model`: :class:`BackboneSpec`, :class:`Backbone`,
    :class:`BackboneOutput` (loading, device, bf16, determinism).

Submodules import each other directly, never this package (no import cycle).
"""

from __future__ import annotations

from processors.score.backbone.execution import fold_batchnorm
from processors.score.backbone.model import Backbone, BackboneOutput, BackboneSpec
from processors.score.backbone.preprocessing import preprocess_batch, preprocess_image
from processors.score.backbone.weights import map_tf_port_state_dict, packaged_weights_path

__all__ = [
    "Backbone",
    "BackboneOutput",
    "BackboneSpec",
    "fold_batchnorm",
    "map_tf_port_state_dict",
    "packaged_weights_path",
    "preprocess_batch",
    "preprocess_image",
]
