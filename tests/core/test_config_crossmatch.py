"""The crossmatch_* settings: defaults, environment, and errors that name the key."""

from __future__ import annotations

import pytest

from processors.core.config import load_settings
from processors.core.exceptions import ConfigError


def test_defaults_are_offline_gaia_and_openngc_at_one_and_a_half_arcsec() -> None:
    s = load_settings()
    assert s.crossmatch.catalogs == ["gaia", "openngc"]
    assert s.crossmatch.radius_arcsec == 1.5
    assert s.crossmatch.tap_service is None and s.crossmatch.ztf_context


def test_lists_and_maps_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKYLOOP_CROSSMATCH_CATALOGS", '["hipparcos"]')
    monkeypatch.setenv("SKYLOOP_CROSSMATCH_RADIUS_BY_CATALOG", '{"hipparcos": 3.0}')
    s = load_settings()
    assert s.crossmatch.catalogs == ["hipparcos"]
    assert s.crossmatch.radius_by_catalog == {"hipparcos": 3.0}


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"crossmatch_catalogs": ["sdss"]}, "crossmatch_catalogs (SKYLOOP_CROSSMATCH_CATALOGS)"),
        ({"crossmatch_bright_star_catalogs": ["x"]}, "accepted: gaia, hipparcos, openngc"),
        ({"crossmatch_radius_arcsec": 0}, "crossmatch_radius_arcsec"),
        ({"crossmatch_radius_by_catalog": {"simbad": 2.0}}, "'simbad' is not a configured"),
        ({"crossmatch_radius_by_catalog": {"gaia": -1.0}}, "must be in (0, 3600]"),
        ({"crossmatch_user_catalogs": {"gaia": "g.csv"}}, "are bundled catalogs"),
        ({"crossmatch_user_columns": {"declination": "d"}}, "accepted: ra, dec, object_id"),
        ({"crossmatch_tap_service": "vizier"}, "crossmatch_tap_service"),
        ({"crossmatch_tap_url": "tap.example"}, "crossmatch_tap_url"),
        ({"crossmatch_tap_attempts": 0}, "crossmatch_tap_attempts"),
    ],
)
def test_bad_values_name_the_key(over: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**over)
    assert needle in str(err.value)


def test_a_radius_for_the_tap_catalog_is_accepted_once_tap_is_on() -> None:
    s = load_settings(crossmatch_tap_service="simbad", crossmatch_radius_by_catalog={"simbad": 3})
    assert s.crossmatch.radius_by_catalog == {"simbad": 3.0}


def test_ztf_context_catalogs_take_a_radius_and_their_names_agree() -> None:
    from processors.core import config
    from processors.detect.ztf_context import ZTF_CATALOGS

    assert config._ZTF_CATALOGS == ZTF_CATALOGS
    s = load_settings(crossmatch_radius_by_catalog={"ztf:ss": 10.0})
    assert s.crossmatch.radius_by_catalog == {"ztf:ss": 10.0}
    with pytest.raises(ConfigError, match="'ztf:ss' is not a configured catalog"):
        load_settings(crossmatch_ztf_context=False, crossmatch_radius_by_catalog={"ztf:ss": 10.0})
