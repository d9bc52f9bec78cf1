"""CatalogMatcher on user tables and the bundled catalogs; the bright-star test."""

from __future__ import annotations

import doctest
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from processors.core.exceptions import CatalogError
from processors.detect import crossmatch
from processors.detect.catalogs import (
    Catalog,
    TableColumns,
    gaia_bright_stars,
    openngc_objects,
    table_catalog,
)
from processors.detect.crossmatch import (
    CatalogMatcher,
    MatchRadius,
    bright_star_radius_arcsec,
    near_bright_star,
)

HERE = SkyCoord(ra=150.0 * u.deg, dec=2.0 * u.deg)


def _offset(where: SkyCoord, arcsec: float, pa_deg: float = 45.0) -> SkyCoord:
    return where.directional_offset_by(pa_deg * u.deg, arcsec * u.arcsec)


def _catalog(tmp_path: Path, name: str, offsets: dict[str, float]) -> Catalog:
    """A CSV catalog of objects at the given distances (arcsec) from HERE."""
    rows = ["id,ra,dec,mag"]
    for i, (oid, arcsec) in enumerate(offsets.items()):
        p = _offset(HERE, arcsec, pa_deg=37.0 * i)
        rows.append(f"{oid},{float(p.ra.deg)!r},{float(p.dec.deg)!r},{15 + i}")
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join(rows) + "\n")
    return table_catalog(name, path, TableColumns(object_id="id", magnitude="mag"))


def test_doctests() -> None:
    result = doctest.testmod(crossmatch)
    assert result.attempted > 0 and result.failed == 0


def test_default_radius_keeps_the_source_and_drops_a_neighbour(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "mine", {"near": 1.0, "edge": 1.45, "far": 2.0})
    matcher = CatalogMatcher([(cat, MatchRadius())])
    matches = matcher.match_one(HERE.ra.deg, HERE.dec.deg)
    assert [m["object_id"] for m in matches] == ["near", "edge"]
    assert matches[0]["separation_arcsec"] == pytest.approx(1.0, abs=1e-6)
    assert matches[0]["catalog"] == "mine" and matches[0]["magnitude"] == 15.0


def test_radius_is_per_catalog_and_results_sort_by_separation(tmp_path: Path) -> None:
    a = _catalog(tmp_path, "a", {"a1": 2.5, "a2": 0.5})
    b = _catalog(tmp_path, "b", {"b1": 1.2, "b2": 2.8})
    matcher = CatalogMatcher([(a, MatchRadius(radius_arcsec=3.0)), (b, MatchRadius())])
    matches = matcher.match_one(HERE.ra.deg, HERE.dec.deg)
    assert [m["object_id"] for m in matches] == ["a2", "b1", "a1"]
    seps = [m["separation_arcsec"] for m in matches]
    assert seps == sorted(seps)


def test_no_position_means_no_matches_and_a_bad_one_is_an_error(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "c", {"x": 0.1})
    matcher = CatalogMatcher([(cat, MatchRadius())])
    got = matcher.match([(None, None), (HERE.ra.deg, None), (float("nan"), 2.0), (150.0, 2.0)])
    assert [len(m) for m in got] == [0, 0, 0, 1]
    with pytest.raises(CatalogError, match=r"position 1 out of range.*dec=91"):
        matcher.match([(150.0, 2.0), (10.0, 91.0)])
    assert matcher.match([]) == []


def test_max_per_catalog_keeps_the_nearest(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, "crowd", {f"s{i}": 0.1 * (i + 1) for i in range(8)})
    matcher = CatalogMatcher([(cat, MatchRadius())], max_per_catalog=3)
    assert [m["object_id"] for m in matcher.match_one(150.0, 2.0)] == ["s0", "s1", "s2"]


def test_a_batch_matches_as_each_position_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ra = 150.0 + rng.uniform(-0.01, 0.01, 400)
    dec = 2.0 + rng.uniform(-0.01, 0.01, 400)
    path = tmp_path / "dense.csv"
    path.write_text("ra,dec\n" + "".join(f"{r},{d}\n" for r, d in zip(ra, dec, strict=True)))
    cat = table_catalog("dense", path)
    matcher = CatalogMatcher([(cat, MatchRadius(radius_arcsec=5.0))])
    probes = [(float(r), float(d)) for r, d in zip(ra[:50] + 1e-4, dec[:50], strict=True)]
    batch = matcher.match(probes)
    assert batch == [matcher.match_one(r, d) for r, d in probes]
    assert sum(map(len, batch)) >= 50  # each probe is 0.36" from its own source


def test_a_bright_star_matches_far_out_where_a_fixed_radius_does_not() -> None:
    gaia = gaia_bright_stars()
    i = int(np.flatnonzero((gaia.magnitudes > 8.0) & (gaia.magnitudes < 9.0))[0])
    star = gaia.coords[i]
    probe = _offset(star, 40.0)  # inside the G~8.5 radius (~86"), far outside 1.5"
    fixed = CatalogMatcher([(gaia, MatchRadius())]).match_one(probe.ra.deg, probe.dec.deg)
    scaled = CatalogMatcher([(gaia, MatchRadius(bright_stars=True))])
    found = scaled.match_one(probe.ra.deg, probe.dec.deg)
    assert all(m["object_id"] != gaia.object_ids[i] for m in fixed)
    hit = [m for m in found if m["object_id"] == gaia.object_ids[i]]
    assert hit and hit[0]["separation_arcsec"] == pytest.approx(40.0, abs=0.01)
    assert hit[0]["kind"] == "star" and near_bright_star(found)
    away = _offset(star, 3 * bright_star_radius_arcsec(float(gaia.magnitudes[i])))
    assert not any(
        m["object_id"] == gaia.object_ids[i] for m in scaled.match_one(away.ra.deg, away.dec.deg)
    )


def test_inside_a_galaxy_ellipse_matches_it_outside_does_not() -> None:
    ngc = openngc_objects()
    i = list(ngc.object_ids).index("NGC0224")  # M31: 88.9' x 34.8' semi-axes, PA 35 deg
    center = ngc.coords[i]
    matcher = CatalogMatcher([(ngc, MatchRadius())])
    along_major = _offset(center, 3600.0, pa_deg=35.0)
    along_minor = _offset(center, 3600.0, pa_deg=125.0)
    assert "NGC0224" in [m["object_id"] for m in matcher.match_one(*_radec(along_major))]
    assert "NGC0224" not in [m["object_id"] for m in matcher.match_one(*_radec(along_minor))]
    no_ellipse = CatalogMatcher([(ngc, MatchRadius(extended=False))])
    assert "NGC0224" not in [m["object_id"] for m in no_ellipse.match_one(*_radec(along_major))]


def _radec(c: SkyCoord) -> tuple[float, float]:
    return float(c.ra.deg), float(c.dec.deg)


def test_near_bright_star_needs_a_bright_star_close_enough() -> None:
    def star(sep: float, mag: float | None, kind: str | None = "star") -> dict:
        return {
            "catalog": "gaia",
            "object_id": "x",
            "separation_arcsec": sep,
            "magnitude": mag,
            "kind": kind,
        }

    assert near_bright_star([star(10.0, 13.0)])  # radius at 13: ~21"
    assert not near_bright_star([star(30.0, 13.0)])
    assert not near_bright_star([star(1.0, 15.0)])  # not bright
    assert not near_bright_star([star(1.0, None)])
    assert not near_bright_star([star(1.0, 9.0, kind="galaxy")])
    assert near_bright_star([star(1.0, 15.0)], max_magnitude=16.0)
    assert not near_bright_star([])


def test_bad_radii_and_duplicate_catalogs_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="radius_arcsec must be > 0"):
        MatchRadius(radius_arcsec=0.0)
    with pytest.raises(CatalogError, match="max_arcsec"):
        MatchRadius(radius_arcsec=10.0, max_arcsec=5.0)
    cat = _catalog(tmp_path, "d", {"x": 0.1})
    with pytest.raises(CatalogError, match="'d' is given twice"):
        CatalogMatcher([(cat, MatchRadius()), (cat, MatchRadius())])
