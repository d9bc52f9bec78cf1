from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

from processors.core.exceptions import BadImageError
from processors.yolo.evaluation import box_quality
from processors.yolo.extraction import (
    ExtractionParams,
    boxes_at,
    extract_boxes,
    localize_record,
    snr_confidence,
)
from tests.detect.blobs import blob_image, blob_set, fits_record

ZTF_STREAM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ztf-stream"


def test_sources_are_found_where_they_are() -> None:
    samples = blob_set(200, 12, size=96)
    found = [extract_boxes(image) for image, _ in samples]
    quality = box_quality(found, [truth for _, truth in samples])
    assert quality.recall == 1.0
    assert quality.precision == 1.0
    assert quality.mean_iou > 0.6


def test_boxes_are_sorted_by_significance_with_bounded_confidence() -> None:
    image, _ = blob_image(7, size=128, sources=3)
    boxes = extract_boxes(image)
    confidences = [b["confidence"] for b in boxes]
    assert len(boxes) == 3
    assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 < c < 1.0 for c in confidences)
    assert all(0 <= b["x1"] < b["x2"] <= 128 and 0 <= b["y1"] < b["y2"] <= 128 for b in boxes)


def test_a_box_follows_its_source_and_is_never_fixed() -> None:
    image, _ = blob_image(9, size=96, sources=1)
    shifted = np.roll(image, (11, -7), axis=(0, 1))
    (a,), (b,) = extract_boxes(image), extract_boxes(shifted)
    assert b["x1"] - a["x1"] == pytest.approx(-7, abs=0.5)
    assert b["y1"] - a["y1"] == pytest.approx(11, abs=0.5)


@pytest.mark.parametrize("seed", range(8))
def test_pure_noise_gives_no_box(seed: int) -> None:
    noise = np.random.default_rng(seed).normal(100.0, 5.0, (64, 64)).astype(np.float32)
    assert extract_boxes(noise) == []


def test_constant_and_masked_images() -> None:
    assert extract_boxes(np.full((64, 64), 10.0, dtype=np.float32)) == []
    image, truth = blob_image(11, size=64, sources=1)
    image[:5, :] = np.nan
    (box,) = extract_boxes(image)
    assert box_quality([[box]], [truth]).recall == 1.0
    with pytest.raises(BadImageError):
        extract_boxes(np.full((64, 64), np.nan))


def test_difference_finds_a_faded_source_only_when_signed() -> None:
    image, truth = blob_image(13, size=64, sources=1)
    difference = 2 * 100.0 - image  # a source that was there in the reference and is gone
    assert extract_boxes(difference) == []
    (box,) = extract_boxes(difference, signed=True)
    assert box_quality([[box]], [truth]).recall == 1.0


def test_significance_threshold_and_label() -> None:
    image, _ = blob_image(15, size=64, sources=1)
    (box,) = extract_boxes(image, label="transient")
    snr = box["confidence"] * 10.0 / (1 - box["confidence"])
    assert box["label"] == "transient"
    assert extract_boxes(image, params=ExtractionParams(min_snr=snr + 1)) == []
    assert snr_confidence(0.0) == 0.0 and snr_confidence(-3.0) == 0.0
    with pytest.raises(ValueError, match="min_area"):
        ExtractionParams(min_area=0)


def test_localize_record_from_its_fits_bytes_or_difference() -> None:
    image, truth = blob_image(17, size=64, sources=1)
    record = fits_record(image)
    assert box_quality([localize_record(record)], [truth]).recall == 1.0
    flat = np.random.default_rng(1).normal(0, 5.0, (64, 64)).astype(np.float32)
    assert localize_record(record, difference=flat) == []
    with pytest.raises(BadImageError, match="difference cutout is 32x32"):
        localize_record(record, difference=flat[:32, :32])


def test_localize_record_on_one_band_of_a_triplet() -> None:
    science, truth = blob_image(19, size=64, sources=1)
    template = np.random.default_rng(2).normal(100.0, 5.0, (64, 64)).astype(np.float32)
    faded = 2 * 100.0 - science  # the source is in the template only
    record = fits_record(np.stack([template, science, faded - 100.0], axis=-1))
    assert box_quality([localize_record(record, band=1)], [truth]).recall == 1.0
    assert localize_record(record, band=2) == []
    assert box_quality([localize_record(record, band=2, signed=True)], [truth]).recall == 1.0
    assert localize_record(record, band=0) == []
    with pytest.raises(BadImageError, match="band 3 does not exist"):
        localize_record(record, band=3)


def test_real_ztf_difference_cutouts_show_the_alert_at_the_centre() -> None:
    if not ZTF_STREAM.is_dir():
        pytest.skip(f"needs the real ZTF night at {ZTF_STREAM}")
    from processors.ingest.ztf.cutouts import alert_pixels
    from processors.ingest.ztf.packets import read_alerts

    centred = total = 0
    for path in sorted(ZTF_STREAM.glob("*.avro"))[:30]:
        for alert in read_alerts(path.read_bytes()):
            pixels, bands = alert_pixels(alert, "triplet")
            difference = pixels[:, :, bands.index("difference")]
            h, w = difference.shape
            boxes = extract_boxes(difference, signed=True)
            total += 1
            centred += bool(boxes_at(boxes, w / 2, h / 2))
    assert total >= 20
    assert centred / total >= 0.9


def test_doctests() -> None:
    from processors.yolo import extraction as localize

    result = doctest.testmod(localize, raise_on_error=False)
    assert result.attempted >= 2 and result.failed == 0
