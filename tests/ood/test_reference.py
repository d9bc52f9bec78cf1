"""ReferenceSet: validation, canonical bytes, a stable content address, store round trip."""

from __future__ import annotations

import doctest
import hashlib
from pathlib import Path

import numpy as np
import pytest

from processors.core.artifacts import ArtifactError, ArtifactStore
from processors.ood import reference as reference_module
from processors.ood.reference import (
    ReferenceSet,
    ReferenceSetError,
    load_reference,
    save_reference,
)


def make_reference(n: int = 30, d: int = 8, seed: int = 0) -> ReferenceSet:
    rng = np.random.default_rng(seed)
    return ReferenceSet(
        features=rng.normal(size=(n, d)).astype(np.float32),
        energy=rng.normal(size=n),
        backbone="efficientnet_lite0@579344248a93",
    )


def test_docstring_examples_run() -> None:
    result = doctest.testmod(reference_module, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_bytes_round_trip_exactly() -> None:
    ref = make_reference()
    back = ReferenceSet.from_bytes(ref.to_bytes())
    assert np.array_equal(back.features, ref.features) and back.features.dtype == np.float32
    assert np.array_equal(back.energy, ref.energy) and back.energy.dtype == np.float64
    assert back.backbone == ref.backbone
    assert back.to_bytes() == ref.to_bytes()


def test_content_address_is_pinned() -> None:
    # Pins the byte format: changing it changes every stored reference's artifact id.
    ref = ReferenceSet(
        features=np.arange(12, dtype=np.float32).reshape(4, 3) / 7,
        energy=np.array([-1.5, -2.0, 0.25, 3.0]),
        backbone="bb@0",
    )
    data = ref.to_bytes()
    assert len(data) == 8 + 20 + 4 + 4 * 3 * 4 + 4 * 8
    assert hashlib.sha256(data).hexdigest() == (
        "6e4fb5ea400dc2cc57e29712b0fbfadea7dda7ca2dfc3901f56106dba45fc372"
    )


def test_features_that_are_float16_values_are_stored_in_half_the_bytes() -> None:
    # What the controller calibrates from: its ring keeps features in float16.
    ref = ReferenceSet(
        features=np.arange(12, dtype=np.float32).reshape(4, 3) / 8,
        energy=np.array([-1.5, -2.0, 0.25, 3.0]),
        backbone="bb@0",
    )
    data = ref.to_bytes()
    assert data[:8] == b"SKYREF\x00\x02" and len(data) == 8 + 20 + 4 + 4 * 3 * 2 + 4 * 8
    assert hashlib.sha256(data).hexdigest() == (  # pins the second format
        "ef73e099910f997bca4a89dd5dabde316ab366fb97ee30bb0eca2cc8fea9fb9c"
    )
    ring = make_reference(n=64, d=1280)
    ring = ReferenceSet(ring.features.astype(np.float16), ring.energy, ring.backbone)
    back = ReferenceSet.from_bytes(ring.to_bytes())
    assert back.features.dtype == np.float32 and np.array_equal(back.features, ring.features)
    assert back.to_bytes() == ring.to_bytes()
    assert len(ring.to_bytes()) < 0.51 * len(make_reference(n=64, d=1280).to_bytes())


def test_one_value_that_float16_cannot_hold_keeps_float32() -> None:
    features = np.full((3, 2), 0.5, np.float32)
    for value in (0.1, 70000.0, 1e-9):  # rounded, past float16's range, below its subnormals
        features[1, 1] = value
        data = ReferenceSet(features, np.zeros(3)).to_bytes()
        assert data[:8] == b"SKYREF\x00\x01"
        assert ReferenceSet.from_bytes(data).features[1, 1] == np.float32(value)


def test_equal_contents_give_equal_bytes_whatever_the_input_layout() -> None:
    ref = make_reference()
    fortran = np.asfortranarray(ref.features.astype(">f4"))
    other = ReferenceSet(fortran, list(ref.energy), ref.backbone)
    assert other.to_bytes() == ref.to_bytes()


def test_arrays_are_frozen_copies() -> None:
    features = np.ones((3, 2), np.float32)
    ref = ReferenceSet(features, np.zeros(3))
    features[0, 0] = 5.0
    assert ref.features[0, 0] == 1.0
    with pytest.raises(ValueError):
        ref.features[0, 0] = 2.0
    with pytest.raises(ValueError):
        ref.energy[0] = 2.0


@pytest.mark.parametrize(
    ("features", "energy", "match"),
    [
        (np.zeros((3,), np.float32), np.zeros(3), "features must be"),
        (np.zeros((0, 4), np.float32), np.zeros(0), "features must be"),
        (np.zeros((3, 4), np.float32), np.zeros(2), "energy must be"),
        (np.array([[0.0, np.nan]], np.float32), np.zeros(1), "non-finite values in 1 rows"),
        (np.zeros((1, 2), np.float32), np.array([np.inf]), "non-finite"),
    ],
)
def test_invalid_contents_raise(features: np.ndarray, energy: np.ndarray, match: str) -> None:
    with pytest.raises(ReferenceSetError, match=match):
        ReferenceSet(features, energy)


def test_malformed_bytes_raise() -> None:
    data = make_reference().to_bytes()
    with pytest.raises(ReferenceSetError, match="magic"):
        ReferenceSet.from_bytes(b"NOTAREF!" + data[8:])
    with pytest.raises(ReferenceSetError, match="needs"):
        ReferenceSet.from_bytes(data[:-1])
    with pytest.raises(ReferenceSetError, match="truncated"):
        ReferenceSet.from_bytes(data[:12])


def test_store_round_trip_and_stable_id(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ref = make_reference(n=200, d=1280)
    artifact_id = save_reference(store, ref)
    assert save_reference(store, make_reference(n=200, d=1280)) == artifact_id
    assert save_reference(store, make_reference(n=200, d=1280, seed=1)) != artifact_id
    loaded = load_reference(store, artifact_id)
    assert loaded.to_bytes() == ref.to_bytes()
    assert len(loaded) == 200 and loaded.dim == 1280


def test_load_reports_missing_and_non_reference_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError):
        load_reference(store, "0" * 64)
    other = store.put_bytes(b"not a reference")
    with pytest.raises(ReferenceSetError, match=other):
        load_reference(store, other)
