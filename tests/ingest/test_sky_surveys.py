"""The synthetic sky as several surveys see it (``synthetic?kind=survey``): shapes, truth boxes
that point at what makes each anomaly, drifts whose truth says when they start, and the older
kinds left unchanged."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from processors.core.exceptions import ConfigError
from processors.core.imaging import decode_pixels
from processors.ingest.sources import source_from_spec
from processors.ingest.synthetic.sky import SyntheticSky
from processors.ingest.synthetic.survey_sky import ANOMALY_CLASSES, SURVEYS

# The first 20 images of each older spec, as they were before kind=survey existed: those streams
# must not change (benchmarks and tests depend on them). Truth and provenance are compared
# exactly (a sha256); positions and pixel statistics to 1e-6 relative, because numpy's AVX-512
# kernels round transcendental functions differently from its AVX2 ones in the last bit (an
# exact pixel digest made on one CPU fails on another; measured: 2e-16 relative apart), while
# any real change to a stream (another draw order, another model) moves them by far more.
OLDER_SPECS = Path(__file__).with_name("older_specs.json")


def _fingerprint(spec: str, n: int = 20) -> tuple[str, NDArray[np.float64]]:
    exact = hashlib.sha256()
    numbers = []
    for _, image in zip(range(n), source_from_spec(spec), strict=False):
        # truth boxes were added later; everything that existed before must stay the same
        truth = {k: v for k, v in (image.truth or {}).items() if k != "boxes"} or image.truth
        exact.update(repr((truth, image.provenance)).encode())
        data = decode_pixels(image.pixels, image.format).astype(np.float64)
        h, w = data.shape[:2]
        numbers.append(
            [
                image.ra,
                image.dec,
                data.mean(),
                data.std(),
                data.min(),
                data.max(),
                data[h // 3, w // 3].sum(),
                data[h // 2, w // 2].sum(),
            ]
        )
    return exact.hexdigest(), np.array(numbers, dtype=np.float64)


def _sky(**kw: object) -> SyntheticSky:
    args: dict[str, object] = {"kind": "survey", "seed": 4, "anomaly_rate": 0.6}
    args.update(kw)
    return SyntheticSky(**args)  # type: ignore[arg-type]


def test_triplets_of_each_survey_decode_with_consistent_planes() -> None:
    sky = _sky(surveys=",".join(SURVEYS), anomaly_rate=0.0)
    seen = Counter()
    for n in range(40):
        image = sky.image(n)
        cube = decode_pixels(image.pixels, "fits")
        assert cube.shape == (64, 64, 3) and image.bands == 3
        survey = image.survey.removeprefix("synthetic-")
        seen[survey] += 1
        profile = SURVEYS[survey]
        science, template, difference = (cube[:, :, i].astype(np.float64) for i in range(3))
        # baseline: difference = science - template (both skies removed, equal here)
        np.testing.assert_allclose(difference, science - template, atol=0.05)
        # the sky level of each survey shows in its science exposure
        assert abs(np.median(science) - profile.sky) < 0.35 * profile.sky + 5 * profile.read_noise
        assert image.provenance["pixel_scale"] == str(profile.pixel_scale)
    assert set(seen) == set(SURVEYS)


def _robust_sigma(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def test_truth_boxes_point_at_the_anomaly() -> None:
    sky = _sky(surveys="wide,deep,transient")
    assert sky._surveys is not None
    found: Counter[str] = Counter()
    for n in range(120):
        image = sky.image(n)
        kind = image.truth["kind"] if image.truth else None
        box = sky._surveys.truth_box(n)
        if kind is None:
            assert box is None
            continue
        assert box is not None, kind
        x1, y1, x2, y2 = box
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64, (kind, box)
        found[kind] += 1
        cube = decode_pixels(image.pixels, "fits").astype(np.float64)
        plane = 2 if kind in ("transient", "satellite_trail", "cosmic_ray", "bad_column") else 0
        data = cube[:, :, plane]
        inside = np.zeros(data.shape, bool)
        inside[y1:y2, x1:x2] = True
        background = data[~inside] if (~inside).any() else data.ravel()
        excess = (data[inside].max() - np.median(background)) / max(_robust_sigma(background), 1e-6)
        # science-only kinds stand out in the difference; static ones in the science exposure
        assert excess > 5.0, (n, kind, box, excess)
    assert set(found) == set(ANOMALY_CLASSES)


def test_drifts_and_a_new_survey_start_when_their_truth_says() -> None:
    sky = _sky(surveys="wide", drifts="30:background,60:+space,90:baseline", anomaly_rate=0.0)
    truth = [sky.image(n) for n in range(120)]
    segments = [i.truth["segment"] for i in truth if i.truth]
    assert segments[:30] == ["baseline"] * 30
    assert set(segments[30:60]) == {"background"}
    assert set(segments[60:90]) == {"background+space"}
    assert set(segments[90:]) == {"baseline+space"}
    surveys = [i.survey for i in truth]
    assert set(surveys[:60]) == {"synthetic-wide"} and "synthetic-space" in surveys[60:]
    sky_level = [float(np.median(decode_pixels(i.pixels, "fits")[:, :, 0])) for i in truth[:60]]
    assert np.median(sky_level[30:60]) > 2.5 * np.median(sky_level[:30])


def test_spec_and_errors() -> None:
    source = source_from_spec("synthetic?kind=survey&surveys=deep,space&drifts=5:seeing&size=32")
    image = next(iter(source))
    assert image.bands == 3 and image.width == 32  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="surveys='wide,moon'"):
        source_from_spec("synthetic?kind=survey&surveys=wide,moon")
    with pytest.raises(ConfigError, match="drifts: '3:\\+moon'"):
        source_from_spec("synthetic?kind=survey&drifts=3:+moon")


def test_same_seed_same_stream() -> None:
    a, b = _sky(), _sky()
    assert [a.image(n).pixels for n in range(5)] == [b.image(n).pixels for n in range(5)]


@pytest.mark.parametrize("spec", sorted(json.loads(OLDER_SPECS.read_text())))
def test_older_specs_are_unchanged(spec: str) -> None:
    expected = json.loads(OLDER_SPECS.read_text())[spec]
    exact, numbers = _fingerprint(spec)
    assert exact == expected["exact"]
    np.testing.assert_allclose(numbers, np.array(expected["numbers"]), rtol=1e-6, atol=1e-9)
