"""Source extraction as the detect worker names it: :mod:`processors.yolo.extraction`.

The trainer needs the same baseline (its gate compares a first detector with source extraction
on the same held-out images), so the code lives in the shared ``yolo`` kit; this module keeps
the detect worker's historical import path.
"""

from __future__ import annotations

from processors.yolo.extraction import (
    ExtractionParams,
    boxes_at,
    extract_boxes,
    localize_record,
    merge_adjacent,
    snr_confidence,
)

__all__ = [
    "ExtractionParams",
    "boxes_at",
    "extract_boxes",
    "localize_record",
    "merge_adjacent",
    "snr_confidence",
]
