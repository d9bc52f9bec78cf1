"""Prepared backbones: a fresh process loads the stored graph without importing timm and
computes exactly what the built model computes; a damaged or stale file is never used."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from processors.score.backbone import Backbone, BackboneSpec
from processors.score.backbone.prepared import prepared_dir

EMBED = """
import sys, numpy as np
from processors.score.backbone import Backbone, BackboneSpec
backbone = Backbone(BackboneSpec(bf16=False))
rng = np.random.default_rng(0)
out = backbone.embed([rng.normal(size=(63, 63, 1)).astype("float32") for _ in range(8)])
np.save(sys.argv[1], np.concatenate([out.features, out.logits], axis=1))
print("timm" in sys.modules, "torchvision" in sys.modules, backbone.prepared, backbone.version,
      backbone.flip_input)
"""


def _embed_in_a_fresh_process(folder: Path, out: Path, *, prepared: bool = True) -> list[str]:
    env = {**os.environ, "SKYLOOP_PREPARED_DIR": str(folder)}
    code = EMBED if prepared else EMBED.replace("bf16=False", "bf16=False, prepared=False")
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return done.stdout.split()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_second_process_loads_the_prepared_graph_without_timm(tmp_path: Path) -> None:
    folder = tmp_path / "prepared"
    built = _embed_in_a_fresh_process(folder, tmp_path / "built.npy")
    assert built[:3] == ["True", "True", "True"]  # the first builds with timm, then prepares
    assert [name.rsplit(".", 1)[1] for name in _files(folder)] == ["json", "pt"]
    loaded = _embed_in_a_fresh_process(folder, tmp_path / "loaded.npy")
    assert loaded[:3] == ["False", "False", "True"]  # neither timm nor torchvision imported
    assert loaded[3:] == built[3:]  # the same version string and input flip
    plain = _embed_in_a_fresh_process(tmp_path / "unused", tmp_path / "plain.npy", prepared=False)
    assert plain[:3] == ["True", "True", "False"] and not (tmp_path / "unused").exists()
    # every process runs the same frozen graph, bit for bit; it is the built model, frozen
    first, again, eager = (np.load(tmp_path / f"{n}.npy") for n in ("built", "loaded", "plain"))
    assert np.array_equal(first, again)
    np.testing.assert_allclose(first, eager, rtol=1e-5, atol=1e-5)


@pytest.fixture
def own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SKYLOOP_PREPARED_DIR", str(tmp_path / "prepared"))
    return prepared_dir()


def _reference_output(backbone: Backbone) -> np.ndarray:
    rng = np.random.default_rng(1)
    out = backbone.embed([rng.normal(size=(40, 40)).astype("float32") for _ in range(3)])
    return np.concatenate([out.features, out.logits], axis=1)


@pytest.mark.parametrize("damage", ["garbled graph", "wrong probe"])
def test_a_damaged_prepared_file_is_rebuilt_not_used(
    own_folder: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = BackboneSpec(bf16=False)
    expected = _reference_output(Backbone(spec))
    graph = next(own_folder.glob("*.pt"))
    sidecar = graph.with_suffix(".json")
    if damage == "garbled graph":
        graph.write_bytes(b"not a TorchScript archive")
    else:  # a graph that no longer computes what it did when it was stored
        info = json.loads(sidecar.read_text())
        info["probe_features"] = [v + 0.5 for v in info["probe_features"]]
        sidecar.write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="processors.score.backbone.prepared"):
        rebuilt = Backbone(spec)
    assert "building it again" in caplog.text
    assert np.array_equal(_reference_output(rebuilt), expected)
    # and stored again, whole: the next one loads it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="processors.score.backbone.prepared"):
        assert np.array_equal(_reference_output(Backbone(spec)), expected)
    assert caplog.text == ""


def test_only_float32_cpu_backbones_are_prepared(own_folder: Path) -> None:
    Backbone(BackboneSpec(bf16=False, prepared=False))
    assert _files(own_folder) == []
    Backbone(BackboneSpec(bf16=False, image_size=160))
    Backbone(BackboneSpec(bf16=False, channels_last=False))
    assert len(_files(own_folder)) == 4  # a graph and its sidecar per input size and layout
