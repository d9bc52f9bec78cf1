"""Make ``import torchvision`` (and so ``import timm``) work when torchvision's compiled ops do not.

PyPI's torchvision wheels are built against CUDA torch. On a CPU-only torch their ``_C.so`` does
not load, torchvision silently records "no ops", and then its own import fails: its meta
registrations call ``torch.library.register_fake("torchvision::nms")`` (and ``"::qnms"``) for
operators that were never defined, raising ``operator torchvision::nms does not exist``. Every
library that imports torchvision (timm, ultralytics) breaks with it.

:func:`ensure_torchvision_ops` repairs exactly that, and only when needed:

1. If ``torch.ops.torchvision.nms`` already exists (the compiled ops are loaded), do nothing.
2. Otherwise try to load torchvision's compiled extension the way torchvision does (without
   importing torchvision). If it loads, do nothing more.
3. Otherwise define ``torchvision::nms`` and ``torchvision::qnms`` with ``torch.library`` and a
   pure-torch kernel (greedy IoU suppression, the algorithm of torchvision's CPU kernel), import
   torchvision, and let ``torchvision.ops.nms`` / ``batched_nms`` use that kernel. The other
   compiled ops (``roi_align``, ``deform_conv2d``, ...) stay unavailable and still raise
   torchvision's own "Couldn't load custom C++ ops" error; nothing in skyloop needs them.

Invariants: idempotent and thread-safe; never replaces a compiled kernel; the fallback kernel
returns the same indices as torchvision's CPU kernel (kept boxes in decreasing score order,
suppressing boxes whose IoU with a kept box is strictly greater than the threshold; ties in
score are broken by the lower index first, as a stable sort does).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path

import torch

__all__ = ["compiled_ops_available", "ensure_torchvision_ops", "nms_reference_kernel"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, bool] = {}
# torch.library.Library objects must stay alive, or their registrations are removed.
_libraries: list[torch.library.Library] = []


def _has_nms_op() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the check
    except (AttributeError, RuntimeError):
        return False
    return True


def _try_load_compiled_extension() -> bool:
    """Load torchvision's ``_C`` extension without importing torchvision; True when it worked."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("_C*")):
            if candidate.suffix not in {".so", ".pyd", ".dylib"}:
                continue
            try:
                torch.ops.load_library(str(candidate))
            except (OSError, RuntimeError):
                continue
            if _has_nms_op():
                return True
    return False


def nms_reference_kernel(
    dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy non-maximum suppression in pure torch; returns kept indices (int64).

    ``dets`` is ``(n, 4)`` in ``(x1, y1, x2, y2)``; a box is suppressed when its IoU with an
    already kept, higher-scoring box is strictly greater than ``iou_threshold``. Boxes are visited
    in decreasing score order (stable for ties). The IoU matrix is computed once, vectorised; the
    greedy pass is O(n) small tensor steps over a boolean mask.
    """
    if dets.dim() != 2 or dets.size(1) != 4:
        raise ValueError(f"boxes should be a (n, 4) tensor, got shape {tuple(dets.shape)}")
    if scores.dim() != 1 or scores.size(0) != dets.size(0):
        raise ValueError(
            f"scores should be a 1d tensor of {dets.size(0)} elements, got {tuple(scores.shape)}"
        )
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    boxes = dets.double() if dets.dtype == torch.float64 else dets.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    xx1 = torch.maximum(x1[:, None], x1[None, :])
    yy1 = torch.maximum(y1[:, None], y1[None, :])
    xx2 = torch.minimum(x2[:, None], x2[None, :])
    yy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    overlaps = (iou > iou_threshold).cpu()
    n = boxes.size(0)
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def _qnms_kernel(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # torchvision passes the integer representation of quantized boxes and scores. IoU is
    # invariant to a common scale and zero point, and scores keep their order, so float NMS on
    # the integers gives the quantized kernel's answer without unsigned-integer underflow.
    return nms_reference_kernel(dets.to(torch.float64), scores.to(torch.float64), iou_threshold)


def _define_fallback_ops() -> None:
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # CompositeExplicitAutograd: one pure-torch kernel for every backend (CPU, CUDA, ...);
    # torchvision registers its own fake (meta) kernels for both ops at import.
    lib.impl("nms", nms_reference_kernel, "CompositeExplicitAutograd")
    lib.impl("qnms", _qnms_kernel, "CompositeExplicitAutograd")
    _libraries.append(lib)


def _enable_python_nms_in_torchvision() -> None:
    # torchvision.ops.boxes checks "were the compiled ops loaded?" before calling
    # torch.ops.torchvision.nms; with the fallback defined, nms may run. Other compiled ops in
    # that module (box_iou_rotated) keep torchvision's original error.
    import torchvision.extension
    import torchvision.ops.boxes as boxes_module

    original = torchvision.extension._assert_has_ops

    def _assert_nms_ops() -> None:
        if not _has_nms_op():
            original()

    boxes_module._assert_has_ops = _assert_nms_ops


def compiled_ops_available() -> bool:
    """True when torchvision's compiled (C++) ops are loaded, False when the fallback is active."""
    ensure_torchvision_ops()
    return _state["compiled"]


def ensure_torchvision_ops() -> None:
    """Make ``import torchvision`` and ``torchvision.ops.nms`` work; call before importing timm.

    Idempotent and thread-safe. Does nothing when torchvision is not installed or its compiled ops
    load. Otherwise registers the pure-torch ``torchvision::nms`` / ``qnms`` fallback (logged at
    INFO) and imports torchvision. If torchvision was already imported successfully, its ops are
    whatever that import loaded and nothing is changed.
    """
    if "compiled" in _state:
        return
    with _lock:
        if "compiled" in _state:
            return
        if _has_nms_op() or importlib.util.find_spec("torchvision") is None:
            _state["compiled"] = _has_nms_op()
            return
        if _try_load_compiled_extension():
            _state["compiled"] = True
            return
        _define_fallback_ops()
        _log.info("torchvision compiled ops unavailable; using the pure-torch nms fallback")
        _enable_python_nms_in_torchvision()
        _state["compiled"] = False
