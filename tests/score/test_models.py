"""Model slots to backbones: weights from the artifact store, sharing, and unloadable slots."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from processors.core.artifacts import ArtifactStore
from processors.core.control import ModelSlot
from processors.score.backbone import Backbone, packaged_weights_path
from processors.score.models import BackboneCache


@pytest.fixture
def cache(tmp_path: Path, lite0: Backbone) -> BackboneCache:
    return BackboneCache(lite0, ArtifactStore(tmp_path / "artifacts"), tmp_path / "models")


def test_no_slot_or_the_configured_model_is_the_configured_backbone(
    cache: BackboneCache, lite0: Backbone
) -> None:
    assert cache.get(None) is lite0
    assert cache.get(ModelSlot("any-version", None)) is lite0
    assert cache.get(ModelSlot("v2", "efficientnet_lite0")) is lite0


def test_weights_from_the_artifact_store_load_and_equal_weights_share_the_instance(
    cache: BackboneCache, lite0: Backbone
) -> None:
    artifact_id = cache.store.put_bytes(packaged_weights_path().read_bytes())
    slot = ModelSlot("lite0-copy", "efficientnet_lite0", artifact_id)
    # Loaded from the store's verified bytes; the same file hash gives the same version, so
    # the configured instance is reused (its features are computed once per batch).
    assert cache.get(slot) is lite0
    assert (cache.models_dir / f"{artifact_id}.pt").is_file()
    assert cache.get(slot) is lite0


def test_unloadable_slots_are_left_out_and_reported_once(
    cache: BackboneCache, caplog: pytest.LogCaptureFixture
) -> None:
    missing = ModelSlot("gone", "efficientnet_lite0", "0" * 64)
    junk = ModelSlot("junk", "efficientnet_lite0", cache.store.put_bytes(b"not weights"))
    unknown = ModelSlot("nope", "not_a_timm_model")
    with caplog.at_level(logging.ERROR, logger="processors.score.models"):
        for _ in range(3):
            assert cache.get(missing) is None
            assert cache.get(junk) is None
            assert cache.get(unknown) is None
    assert len(caplog.records) == 3
    assert "gone" in caplog.text and "junk" in caplog.text and "nope" in caplog.text
