"""Cutouts -> the image to score, in the three modes (processors/ingest/ztf/cutouts)."""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from processors.core.codec import default_codec
from processors.core.imaging import decode_image, decode_pixels, encode_fits
from processors.ingest.sources.items import image_id_for, to_record
from processors.ingest.ztf.cutouts import CutoutError, alert_to_image
from processors.ingest.ztf.packets import ZtfAlert, read_alerts
from tests.core.test_imaging_limits import gzip_zeros_fits

RewriteFn = Callable[..., bytes]
EDGE = "ZTF18abdqake_v3.0_472263571115115014.avro"  # 63 rows x 53 columns at a CCD edge


def _alert(path: Path) -> ZtfAlert:
    (alert,) = read_alerts(path.read_bytes())
    return alert


def _stamp(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)  # ZTF's SIMPLE card
        with fits.open(io.BytesIO(gzip.decompress(data))) as hdul:
            return np.asarray(hdul[0].data, dtype=np.float32)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("ZTF18aaxjdyr_v3.5_1661382530015060001.avro", (63, 63)), (EDGE, (63, 53))],
)
@pytest.mark.parametrize("mode", ["difference", "science", "template", "triplet"])
def test_modes_give_float32_fits_with_their_bands(
    ztf_alerts_dir: Path, name: str, shape: tuple[int, int], mode: Any
) -> None:
    alert = _alert(ztf_alerts_dir / name)
    image = alert_to_image(alert, mode, "ztf-test")
    bands = ("science", "template", "difference") if mode == "triplet" else (mode,)
    assert (image.height, image.width, image.bands) == (*shape, len(bands))
    assert (image.source, image.survey, image.format) == ("ztf-test", "ztf", "fits")
    with fits.open(io.BytesIO(image.pixels)) as hdul:
        assert hdul[0].data.dtype == np.dtype(">f4")
        assert hdul[0].header["CUTOUT"] == mode
    pixels = decode_pixels(image.pixels, "fits")
    assert pixels.shape == (*shape, len(bands))
    for i, kind in enumerate(bands):
        np.testing.assert_array_equal(pixels[:, :, i], _stamp(alert.cutouts[kind]))
    assert image.provenance["bands"] == ",".join(bands)


def test_position_time_and_provenance(ztf_alerts_dir: Path) -> None:
    alert = _alert(ztf_alerts_dir / "ZTF17aaajnnn_v3.3_472263571115115000.avro")
    image = alert_to_image(alert, "difference", "ztf")
    assert (image.ra, image.dec, image.observed_at) == (alert.ra, alert.dec, alert.observed_at)
    prov = image.provenance
    assert all(isinstance(v, str) for v in prov.values())
    assert prov["object_id"] == "ZTF17aaajnnn" and prov["candid"] == "472263571115115000"
    assert prov["schemavsn"] == "3.3" and prov["programid"] == "3"
    assert prov["fid"] == "2" and prov["filter"] == "r"
    assert float(prov["ra"]) == alert.ra and float(prov["jd"]) == alert.jd
    assert prov["rb"] == "0.8433333" and prov["drb"] == "0.987645"  # float32 as stored
    assert prov["nbad"] == "0" and prov["magpsf"].startswith("18.36")
    assert prov["observed_at"] == "2018-04-18T06:19:33.000960+00:00"


def test_the_same_cutout_in_other_schema_versions_has_the_same_image_id(
    ztf_alerts_dir: Path,
) -> None:
    ids = {
        image_id_for("ztf", alert_to_image(_alert(p), "triplet", "ztf").pixels)
        for p in ztf_alerts_dir.glob("ZTF17aaajnnn_v3.*")
    }
    assert len(ids) == 1


def test_jpeg_stamps_of_the_simulated_packets(ztf_alerts_dir: Path) -> None:
    alert = _alert(ztf_alerts_dir / "sim_vpre2_87704463155002.avro")
    image = alert_to_image(alert, "triplet", "ztf")
    assert (image.height, image.width, image.bands) == (44, 51, 3)
    assert "object_id" not in image.provenance and image.provenance["schemavsn"] == "pre-2.0"


def test_plain_fits_stamps_read_like_gzip_ones(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn
) -> None:
    def unzip(record: dict[str, Any]) -> None:
        cut = record["cutoutDifference"]
        cut["stampData"] = gzip.decompress(cut["stampData"])

    path = ztf_alerts_dir / "ZTF18aagqxtf_vpre2_396522680015020000.avro"
    (plain,) = read_alerts(rewrite_packet(path, unzip))
    assert plain.cutouts["difference"][:6] == b"SIMPLE"
    assert alert_to_image(plain, "difference", "ztf") == alert_to_image(
        _alert(path), "difference", "ztf"
    )


def _with(kind: str, stamp: bytes | None) -> Any:
    field = {"science": "cutoutScience", "template": "cutoutTemplate"}.get(kind, "cutoutDifference")

    def mutate(record: dict[str, Any]) -> None:
        if stamp is None:
            record[field] = None
        else:
            record[field]["stampData"] = stamp

    return mutate


def _flipped_gzip(record_stamp: bytes) -> bytes:
    data = bytearray(record_stamp)
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    ("case", "mode", "reason", "words"),
    [
        ("flipped-gzip", "difference", "BadCutout", "corrupt gzip"),
        ("flipped-gzip", "triplet", "BadCutout", "difference cutout"),
        ("gzip-not-fits", "difference", "BadCutout", "undecodable FITS"),
        ("gzip-bomb", "difference", "BadCutout", "inflates to more than"),
        ("missing", "difference", "MissingCutout", "no difference cutout"),
        ("missing", "triplet", "MissingCutout", "no difference cutout"),
        ("small-template", "triplet", "CutoutShapeMismatch", "template 40x40"),
    ],
)
def test_bad_cutouts_fail_with_a_reason(
    ztf_alerts_dir: Path, rewrite_packet: RewriteFn, case: str, mode: Any, reason: str, words: str
) -> None:
    path = ztf_alerts_dir / "ZTF18aaxjlwy_v2.0_472263571115090000.avro"
    good = _alert(path)
    if case == "flipped-gzip":
        mutate = _with("difference", _flipped_gzip(good.cutouts["difference"]))
    elif case == "gzip-not-fits":
        mutate = _with("difference", gzip.compress(b"SIMPLE  =  not really FITS" * 200))
    elif case == "gzip-bomb":  # 144 MB of zeros behind a FITS header, ~140 KB compressed
        mutate = _with("difference", gzip_zeros_fits(6_000))
    elif case == "missing":
        mutate = _with("difference", None)
    else:
        small = encode_fits(_stamp(good.cutouts["template"])[:40, :40])
        mutate = _with("template", gzip.compress(small))
    (alert,) = read_alerts(rewrite_packet(path, mutate))
    with pytest.raises(CutoutError) as err:
        alert_to_image(alert, mode, "ztf")
    assert err.value.reason == reason and words in str(err.value)
    assert str(alert.candid) in str(err.value)
    # the other stamps are intact: a mode that does not need the damaged one still works
    assert alert_to_image(alert, "science", "ztf").bands == 1


def test_an_image_becomes_an_image_record_the_scorer_can_decode(ztf_alerts_dir: Path) -> None:
    alert = _alert(ztf_alerts_dir / EDGE)
    record = to_record(alert_to_image(alert, "triplet", "ztf"))
    codec = default_codec()
    back = codec.decode(codec.encode(record, "skyloop.ImageRecord"), "skyloop.ImageRecord")
    assert back["provenance"] == record["provenance"] and back["survey"] == "ztf"
    assert back["observed_at"] == alert.observed_at.replace(
        microsecond=alert.observed_at.microsecond // 1000 * 1000
    )
    pixels = decode_image(back)  # type: ignore[arg-type]
    assert pixels.shape == (63, 53, 3)
