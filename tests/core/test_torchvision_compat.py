"""torchvision imports after ensure_torchvision_ops; the nms fallback gives the right answer."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from processors.core.torchvision_compat import (
    compiled_ops_available,
    ensure_torchvision_ops,
    nms_reference_kernel,
)


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Textbook greedy NMS, one pair at a time, stable order for equal scores."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (area_i + area_j - inter) > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 100, size=(n, 2))
    wh = rng.uniform(1, 40, size=(n, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    return boxes, scores


def test_fresh_interpreter_imports_timm_and_runs_nms() -> None:
    # A clean process: the fix must work *before* anything imported torchvision.
    code = textwrap.dedent(
        """
        from processors.core.torchvision_compat import ensure_torchvision_ops
        ensure_torchvision_ops()
        ensure_torchvision_ops()
        import timm, torch, torchvision
        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
        keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        print(keep.tolist(), timm.create_model("resnet18").__class__.__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[0,", "2]", "ResNet"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_nms_matches_brute_force(seed: int, threshold: float) -> None:
    ensure_torchvision_ops()
    import torchvision

    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 60)
    expected = brute_force_nms(boxes, scores, threshold)
    got = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert got.dtype == torch.int64
    assert got.tolist() == expected
    assert (
        nms_reference_kernel(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).tolist()
        == expected
    )


def test_nms_ties_empty_and_identical_boxes() -> None:
    ensure_torchvision_ops()
    import torchvision

    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[20.0, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.5, 0.9, 0.5])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [2, 3]
    empty = torchvision.ops.nms(torch.empty(0, 4), torch.empty(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_batched_nms_only_suppresses_within_a_class() -> None:
    ensure_torchvision_ops()
    import torchvision

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantized_nms_agrees_with_float_nms() -> None:
    ensure_torchvision_ops()
    import torchvision

    rng = np.random.default_rng(11)
    boxes, scores = random_boxes(rng, 40)
    qboxes = torch.quantize_per_tensor(torch.from_numpy(boxes), 0.5, 3, torch.quint8)
    qscores = torch.quantize_per_tensor(torch.from_numpy(scores), 1 / 256, 0, torch.quint8)
    expected = brute_force_nms(
        qboxes.dequantize().numpy().astype(np.float64),
        qscores.int_repr().numpy().astype(np.float64),
        0.4,
    )
    assert torchvision.ops.nms(qboxes, qscores, 0.4).tolist() == expected


def test_fallback_only_replaces_what_is_missing() -> None:
    ensure_torchvision_ops()
    import torchvision

    assert hasattr(torch.ops.torchvision, "nms")
    if not compiled_ops_available():
        # Compiled-only ops nothing in skyloop needs keep torchvision's own error.
        with pytest.raises(RuntimeError, match="Couldn't load custom C\\+\\+ ops"):
            torchvision.ops.roi_pool(torch.zeros(1, 1, 4, 4), [torch.zeros(1, 4)], 2)


def test_kernel_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="boxes"):
        nms_reference_kernel(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms_reference_kernel(torch.zeros(3, 4), torch.zeros(2), 0.5)
