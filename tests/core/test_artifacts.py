"""ArtifactStore: content addressing, atomic idempotent writes, verified reads."""

from __future__ import annotations

import doctest
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from processors.core import artifacts
from processors.core.artifacts import ArtifactError, ArtifactStore, artifact_id_of
from processors.core.exceptions import SkyloopError


def test_docstring_examples_run() -> None:
    result = doctest.testmod(artifacts, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0


def test_put_returns_sha256_and_get_round_trips(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = bytes(range(256)) * 100
    artifact_id = store.put_bytes(data)
    assert artifact_id == hashlib.sha256(data).hexdigest() == artifact_id_of(data)
    assert store.exists(artifact_id)
    assert store.get_bytes(artifact_id) == data
    assert store.path_of(artifact_id) == tmp_path / artifact_id[:2] / artifact_id


def test_put_is_idempotent_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    first = store.put_bytes(b"same")
    mtime = store.path_of(first).stat().st_mtime_ns
    assert store.put_bytes(b"same") == first
    assert store.path_of(first).stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [first]


def test_concurrent_puts_of_the_same_bytes(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = b"x" * 1_000_000
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: store.put_bytes(data), range(16)))
    assert len(ids) == 1
    assert store.get_bytes(ids.pop()) == data
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_empty_blob_is_a_valid_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert store.get_bytes(store.put_bytes(b"")) == b""


def test_corrupt_blob_is_detected(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    artifact_id = store.put_bytes(b"calibration reference")
    store.path_of(artifact_id).write_bytes(b"calibration referencE")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_bytes(artifact_id)


def test_missing_and_malformed_ids(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    absent = artifact_id_of(b"never stored")
    assert not store.exists(absent)
    with pytest.raises(ArtifactError, match="not in the store"):
        store.get_bytes(absent)
    for bad in ["", "abc", absent.upper(), "../" + absent[3:], absent + "0"]:
        with pytest.raises(ArtifactError, match="not a sha256"):
            store.path_of(bad)
    assert issubclass(ArtifactError, SkyloopError)
