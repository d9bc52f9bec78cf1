"""Fixtures of the scoring tests: one packaged-weights backbone for the whole session."""

from __future__ import annotations

import pytest

from processors.score.backbone import Backbone, BackboneSpec


@pytest.fixture(scope="session")
def lite0() -> Backbone:
    """The default backbone (packaged EfficientNet-Lite0 weights); loaded once, shared."""
    return Backbone(BackboneSpec())
