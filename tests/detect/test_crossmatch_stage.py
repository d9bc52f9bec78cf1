"""CrossMatchStage built from settings: offline catalogs, ZTF context and TAP merged per image."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import astropy.units as u
import pytest

from processors.core.config import CrossmatchSettings, load_settings
from processors.core.exceptions import CatalogError
from processors.core.records import ImageRecord
from processors.detect.crossmatch_stage import CrossMatchStage
from tests.detect.conftest import CENTER, FakeTap

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def image(
    ra: float | None, dec: float | None, survey: str = "synthetic", **prov: str
) -> ImageRecord:
    return ImageRecord(
        image_id=f"img-{ra}-{dec}-{survey}",
        source="test",
        survey=survey,
        ra=ra,
        dec=dec,
        observed_at=NOW,
        fetched_at=NOW,
        format="fits",
        pixels=b"",
        uri=None,
        width=1,
        height=1,
        bands=1,
        provenance=dict(prov),
        truth=None,
    )


def _user_catalog(tmp_path: Path) -> Path:
    near = CENTER.directional_offset_by(0 * u.deg, 1.0 * u.arcsec)
    path = tmp_path / "mine.csv"
    path.write_text(f"name,RA,DEC\nsrc-1,{float(near.ra.deg)},{float(near.dec.deg)}\n")
    return path


def _settings(tmp_path: Path, **over: object) -> CrossmatchSettings:
    base: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "crossmatch_catalogs": [],
        "crossmatch_user_catalogs": {"mine": _user_catalog(tmp_path)},
        "crossmatch_user_columns": {"ra": "RA", "dec": "DEC", "object_id": "name"},
    }
    return load_settings(**(base | over)).crossmatch


RA, DEC = float(CENTER.ra.deg), float(CENTER.dec.deg)


def test_offline_and_ztf_matches_merge_sorted_and_a_positionless_image_gets_its_context(
    tmp_path: Path,
) -> None:
    stage = CrossMatchStage.from_settings(_settings(tmp_path))
    ztf = image(RA, DEC, "ztf", objectidps1="42", distpsnr1="0.3", sgscore1="0.98")
    got = stage.crossmatches(
        [ztf, image(RA, DEC), image(None, None, "ztf", ssnamenr="1234", ssdistnr="2.5")]
    )
    assert [(m["catalog"], m["object_id"]) for m in got[0]] == [
        ("ztf:ps1", "42"),
        ("mine", "src-1"),
    ]
    assert [m["catalog"] for m in got[1]] == ["mine"]  # not ZTF: no alert context
    assert [(m["catalog"], m["object_id"]) for m in got[2]] == [("ztf:ss", "1234")]
    without = CrossMatchStage.from_settings(_settings(tmp_path, crossmatch_ztf_context=False))
    assert [m["catalog"] for m in without.crossmatches([ztf])[0]] == ["mine"]


def test_the_radius_of_one_catalog_is_configurable(tmp_path: Path) -> None:
    tight = _settings(tmp_path, crossmatch_radius_by_catalog={"mine": 0.5})
    assert CrossMatchStage.from_settings(tight).crossmatches([image(RA, DEC)]) == [[]]


def test_bundled_catalogs_load_by_name(tmp_path: Path) -> None:
    stage = CrossMatchStage.from_settings(
        _settings(tmp_path, crossmatch_catalogs=["openngc"], crossmatch_user_catalogs={})
    )
    m31 = stage.crossmatches([image(10.6847, 41.2690)])[0]
    assert [m["object_id"] for m in m31][:1] == ["NGC0224"]
    assert m31[0]["kind"] == "galaxy"


def test_a_bad_user_catalog_fails_at_start_naming_the_column(tmp_path: Path) -> None:
    bad = _settings(tmp_path, crossmatch_user_columns={"ra": "alpha"})
    with pytest.raises(CatalogError, match="no column 'alpha'"):
        CrossMatchStage.from_settings(bad)


def test_tap_adds_its_matches_and_an_outage_keeps_the_offline_ones(
    tmp_path: Path, fake: FakeTap
) -> None:
    settings = _settings(
        tmp_path,
        crossmatch_tap_service="simbad",
        crossmatch_tap_url=fake.url,
        crossmatch_tap_timeout_s=0.3,
        crossmatch_tap_attempts=1,
        crossmatch_tap_failures_to_open=2,
    )
    stage = CrossMatchStage.from_settings(settings)
    fake.script = ["ok", "500"]
    [first] = stage.crossmatches([image(RA, DEC)])
    assert [m["catalog"] for m in first] == ["simbad", "mine"]  # 0.8" then 1.0"
    batch = stage.crossmatches([image(RA, DEC) for _ in range(5)])
    assert all([m["catalog"] for m in matches] == ["mine"] for matches in batch)
    assert stage.tap_failures == 5
    assert len(fake.queries) == 3  # one answered, two failed, then the circuit is open
