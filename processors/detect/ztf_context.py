"""Cross-matches a ZTF alert already carries, read from its image's provenance.

The ZTF pipeline cross-matches every candidate before it is sent; ingest keeps those fields as
text in ``ImageRecord.provenance`` (see ``processors.ingest.ztf.packets.EXTRA_FIELDS``). This
turns them into :class:`CrossMatch` records:

- ``ztf:ps1``: id ``objectidps1``, separation ``distpsnr1``, magnitude ``srmag1``, kind star or
  galaxy;
- ``ztf:gaia``: id ``nearest``, ``neargaia``, ``maggaia``, kind star;
- ``ztf:gaia_bright``: id ``nearest_bright``, ``neargaiabright``, ``maggaiabright``, kind star;
- ``ztf:ss``: id ``ssnamenr``, ``ssdistnr``, ``ssmagnr`` (V), kind solar_system;
- ``ztf:ref``: id ``nearest``, ``distnr`` (pixels, times 1.01 arcsec), ``magnr``, kind
  reference_source.

Each field is the nearest object of its kind, whatever its distance (ZTF searches out to
30-90 arcsec); it becomes a cross-match only within that catalog's :class:`MatchRadius`
(:data:`ZTF_RADII`): 1.5 arcsec for PS1 and the reference source, the magnitude-scaled
bright-star radius for the Gaia stars, 5 arcsec for a known solar-system object (whose
predicted position is uncertain by arcseconds; alert brokers use the same 5 arcsec cut).

PS1's kind follows ``sgscore1`` (star-galaxy score, 1 = star): above 0.5 a star, else a galaxy;
unknown where the score is missing. ``neargaiabright`` is the nearest Gaia star brighter than
G = 14 within 60″; ``distnr`` is measured to the nearest source of the reference image's PSF
catalog in pixels of 1.01″.

Invariants: pure (no I/O); ZTF's "no value" sentinels (negative distances such as -999,
``ssnamenr`` of ``null``) and unparsable text give no record; the list is sorted by separation,
then catalog.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from processors.core.records import CrossMatch
from processors.detect.crossmatch import DEFAULT_RADIUS_ARCSEC, MatchRadius

__all__ = ["ZTF_CATALOGS", "ZTF_PIXEL_ARCSEC", "ZTF_RADII", "ztf_crossmatches"]

ZTF_PIXEL_ARCSEC = 1.01
_STAR_GALAXY_SPLIT = 0.5
_NO_NAME = {"", "null", "none", "nan"}

ZTF_RADII: Mapping[str, MatchRadius] = {
    "ztf:ps1": MatchRadius(),
    "ztf:gaia": MatchRadius(bright_stars=True),
    "ztf:gaia_bright": MatchRadius(bright_stars=True),
    "ztf:ss": MatchRadius(radius_arcsec=5.0),
    "ztf:ref": MatchRadius(),
}
"""Default radius of each ZTF context catalog (override any with ``radii``)."""
ZTF_CATALOGS = tuple(ZTF_RADII)


def _number(provenance: Mapping[str, str], key: str) -> float | None:
    text = provenance.get(key)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > -99.0 else None


def _distance(provenance: Mapping[str, str], key: str, scale: float = 1.0) -> float | None:
    value = _number(provenance, key)
    return None if value is None or value < 0 else value * scale


def _name(provenance: Mapping[str, str], key: str) -> str | None:
    text = (provenance.get(key) or "").strip()
    return None if text.lower() in _NO_NAME or text.startswith("-999") else text


def _ps1_kind(provenance: Mapping[str, str]) -> str | None:
    score = _number(provenance, "sgscore1")
    if score is None or not 0.0 <= score <= 1.0:
        return None
    return "star" if score > _STAR_GALAXY_SPLIT else "galaxy"


def ztf_crossmatches(
    provenance: Mapping[str, str], radii: Mapping[str, MatchRadius] | None = None
) -> list[CrossMatch]:
    """The alert's own cross-matches from its provenance within their radii, nearest first.

    ``radii``: per-catalog radii that replace those of :data:`ZTF_RADII`.

    >>> [match] = ztf_crossmatches({"ssnamenr": "12345", "ssdistnr": "0.8", "ssmagnr": "19.1"})
    >>> match["catalog"], match["object_id"], match["separation_arcsec"], match["kind"]
    ('ztf:ss', '12345', 0.8, 'solar_system')
    >>> ztf_crossmatches({"ssnamenr": "null", "ssdistnr": "-999.0"})
    []
    >>> ztf_crossmatches({"ssnamenr": "12345", "ssdistnr": "12.0"})  # beyond 5 arcsec
    []
    """
    found: list[CrossMatch] = []
    limits = {**ZTF_RADII, **(radii or {})}

    def add(
        catalog: str, object_id: str | None, sep: float | None, mag: str, kind: str | None
    ) -> None:
        if object_id is None or sep is None:
            return
        magnitude = _number(provenance, mag)
        radius = limits.get(catalog)
        limit = radius.limit_arcsec(magnitude) if radius else DEFAULT_RADIUS_ARCSEC
        if sep > limit:
            return
        found.append(
            CrossMatch(
                catalog=catalog,
                object_id=object_id,
                separation_arcsec=sep,
                magnitude=magnitude,
                kind=kind,
            )
        )

    add(
        "ztf:ps1",
        _name(provenance, "objectidps1"),
        _distance(provenance, "distpsnr1"),
        "srmag1",
        _ps1_kind(provenance),
    )
    add("ztf:gaia", "nearest", _distance(provenance, "neargaia"), "maggaia", "star")
    add(
        "ztf:gaia_bright",
        "nearest_bright",
        _distance(provenance, "neargaiabright"),
        "maggaiabright",
        "star",
    )
    add(
        "ztf:ss",
        _name(provenance, "ssnamenr"),
        _distance(provenance, "ssdistnr"),
        "ssmagnr",
        "solar_system",
    )
    add(
        "ztf:ref",
        "nearest",
        _distance(provenance, "distnr", ZTF_PIXEL_ARCSEC),
        "magnr",
        "reference_source",
    )
    found.sort(key=lambda m: (m["separation_arcsec"], m["catalog"]))
    return found
