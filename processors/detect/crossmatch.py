"""Cross-match of candidate positions against catalogs, and the bright-star test.

How far a catalog object may be from a candidate to match it (:class:`MatchRadius`):

- a point source matches within ``radius_arcsec`` (default 1.5″: ZTF's astrometry is good to
  ~0.1″ and its PSF FWHM is ~2″, so 1.5″ keeps the same source and rarely a neighbour);
- a bright star matches out to where its light still corrupts the image: ``bright_stars``
  scales the radius with magnitude by the Legacy Surveys' bright-star mask relation
  ``r = 1630″ · 1.396^(-m)`` (legacysurvey.org, DR8/DR9 ``BRIGHT`` mask): 58″ at G = 10, 30″ at
  12, 15″ at 14, capped at 600″ (halos and ghosts of the few naked-eye stars reach further, but
  a 10 arcmin disc already covers most of a ZTF cutout's surroundings). A candidate there is often a
  saturation artefact, a diffraction spike or a ghost;
- an extended object (an OpenNGC galaxy) matches anywhere inside its apparent ellipse, so a
  transient in a galaxy names its possible host.

Invariants: :meth:`CatalogMatcher.match` returns one list per input position, in input order;
each list is sorted by separation (then catalog, then object id), holds at most
``max_per_catalog`` objects of each catalog, and is empty for a position that is missing or not
finite. Matching is pure: the same positions and catalogs give the same records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord, search_around_sky

from processors.core.exceptions import CatalogError
from processors.core.records import CrossMatch
from processors.detect.catalogs import Catalog

__all__ = [
    "BRIGHT_STAR_MAGNITUDE",
    "DEFAULT_RADIUS_ARCSEC",
    "CatalogMatcher",
    "MatchRadius",
    "Position",
    "bright_star_radius_arcsec",
    "bright_stars_near",
    "near_bright_star",
]

DEFAULT_RADIUS_ARCSEC = 1.5
BRIGHT_STAR_MAGNITUDE = 14.0
"""Stars at or brighter than this count as bright: ZTF saturates near 12.5-13 mag, and its own
``neargaiabright`` context names Gaia stars brighter than 14 within 60″."""

_BRIGHT_STAR_R0_ARCSEC = 1630.0
_BRIGHT_STAR_BASE = 1.396
_BRIGHT_STAR_MAX_ARCSEC = 600.0

Position = tuple[float | None, float | None]
"""(ra, dec) in ICRS degrees; ``None`` where the image has no position."""


def bright_star_radius_arcsec(
    magnitude: float, *, max_arcsec: float = _BRIGHT_STAR_MAX_ARCSEC
) -> float:
    """How far a star of ``magnitude`` spoils the image: ``1630″ · 1.396^(-m)``, capped.

    >>> round(bright_star_radius_arcsec(10.0), 1)
    58.0
    >>> bright_star_radius_arcsec(-1.5)
    600.0
    """
    return float(min(max_arcsec, _BRIGHT_STAR_R0_ARCSEC * _BRIGHT_STAR_BASE ** (-magnitude)))


@dataclass(frozen=True)
class MatchRadius:
    """How far from a candidate an object of one catalog may be and still match it.

    ``radius_arcsec``: the radius for every object (and the least one when scaled).
    ``bright_stars``: objects brighter than ``bright_magnitude`` match out to
    :func:`bright_star_radius_arcsec` of their magnitude (capped at ``max_arcsec``).
    ``extended``: objects with an ellipse match anywhere inside it.

    >>> MatchRadius().radius_arcsec
    1.5
    """

    radius_arcsec: float = DEFAULT_RADIUS_ARCSEC
    bright_stars: bool = False
    bright_magnitude: float = BRIGHT_STAR_MAGNITUDE
    extended: bool = True
    max_arcsec: float = _BRIGHT_STAR_MAX_ARCSEC

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius_arcsec) and self.radius_arcsec > 0):
            raise CatalogError(f"radius_arcsec must be > 0 arcsec, not {self.radius_arcsec!r}")
        if not self.max_arcsec >= self.radius_arcsec:
            raise CatalogError(
                f"max_arcsec ({self.max_arcsec}) must be >= radius_arcsec ({self.radius_arcsec})"
            )

    def limit_arcsec(self, magnitude: float | None) -> float:
        """The radius for one point source of ``magnitude`` (None: unknown, not scaled).

        >>> MatchRadius(bright_stars=True).limit_arcsec(12.0) > 29.0
        True
        >>> MatchRadius(bright_stars=True).limit_arcsec(None)
        1.5
        """
        if self.bright_stars and magnitude is not None and magnitude <= self.bright_magnitude:
            scaled = _BRIGHT_STAR_R0_ARCSEC * _BRIGHT_STAR_BASE ** (-magnitude)
            return float(max(self.radius_arcsec, min(self.max_arcsec, scaled)))
        return self.radius_arcsec

    def per_object(self, catalog: Catalog) -> np.ndarray:
        """Each object's point-source radius in arcsec (the ellipse is applied per pair)."""
        radius = np.full(len(catalog), self.radius_arcsec)
        if self.bright_stars:
            mags = catalog.magnitudes
            bright = np.isfinite(mags) & (mags <= self.bright_magnitude)
            scaled = np.minimum(
                self.max_arcsec, _BRIGHT_STAR_R0_ARCSEC * _BRIGHT_STAR_BASE ** (-mags[bright])
            )
            radius[bright] = np.maximum(radius[bright], scaled)
        return radius


@dataclass(frozen=True, eq=False)
class _Prepared:
    catalog: Catalog
    radius: MatchRadius
    point_radius: np.ndarray
    search_arcsec: float


class CatalogMatcher:
    """Cross-matches batches of positions against several catalogs with ``search_around_sky``.

    ``catalogs``: (catalog, radius) pairs; the catalog's name is the record's ``catalog``.
    Building the matcher computes each object's radius once; the KD-tree of each catalog is
    built on its first search and kept with the catalog.
    """

    def __init__(
        self,
        catalogs: Iterable[tuple[Catalog, MatchRadius]],
        *,
        max_per_catalog: int = 5,
    ) -> None:
        if max_per_catalog < 1:
            raise CatalogError(f"max_per_catalog must be >= 1, not {max_per_catalog}")
        self.max_per_catalog = max_per_catalog
        self._prepared: list[_Prepared] = []
        names: set[str] = set()
        for catalog, radius in catalogs:
            if catalog.name in names:
                raise CatalogError(f"catalog {catalog.name!r} is given twice")
            names.add(catalog.name)
            point = radius.per_object(catalog)
            search = float(point.max()) if len(point) else radius.radius_arcsec
            if radius.extended and catalog.semi_major_arcsec is not None:
                major = catalog.semi_major_arcsec[np.isfinite(catalog.semi_major_arcsec)]
                if len(major):
                    search = max(search, float(major.max()))
            self._prepared.append(_Prepared(catalog, radius, point, search))

    @property
    def catalog_names(self) -> list[str]:
        return [p.catalog.name for p in self._prepared]

    def match_one(self, ra: float | None, dec: float | None) -> list[CrossMatch]:
        """The matches of one position (see :meth:`match`)."""
        return self.match([(ra, dec)])[0]

    def match(self, positions: Sequence[Position]) -> list[list[CrossMatch]]:
        """One sorted list of matches per position, in input order.

        Raises :class:`CatalogError` for a position out of range (|dec| > 90, ra outside
        [0, 360]); a missing or non-finite coordinate means no position and no matches.
        """
        results: list[list[CrossMatch]] = [[] for _ in positions]
        known = [
            i
            for i, (ra, dec) in enumerate(positions)
            if ra is not None and dec is not None and math.isfinite(ra) and math.isfinite(dec)
        ]
        if not known or not self._prepared:
            return results
        ra = np.array([positions[i][0] for i in known], dtype=np.float64)
        dec = np.array([positions[i][1] for i in known], dtype=np.float64)
        bad = (ra < 0) | (ra > 360) | (np.abs(dec) > 90)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise CatalogError(
                f"position {known[j]} out of range: ra={float(ra[j])}, dec={float(dec[j])} "
                "(ra in [0, 360], dec in [-90, 90] degrees)"
            )
        coords = SkyCoord(ra=ra * u.deg, dec=dec * u.deg)
        for prepared in self._prepared:
            for row, match in self._search(prepared, coords):
                results[known[row]].append(match)
        for matches in results:
            matches.sort(key=lambda m: (m["separation_arcsec"], m["catalog"], m["object_id"]))
        return results

    def _search(self, p: _Prepared, coords: SkyCoord) -> list[tuple[int, CrossMatch]]:
        catalog = p.catalog
        if len(catalog) == 0:
            return []
        rows, objs, sep, _ = search_around_sky(coords, catalog.coords, p.search_arcsec * u.arcsec)
        if len(rows) == 0:
            return []
        sep_arcsec = sep.to_value(u.arcsec)
        limit = p.point_radius[objs]
        if p.radius.extended and catalog.semi_major_arcsec is not None:
            limit = np.maximum(limit, _ellipse_radius(catalog, coords, rows, objs))
        keep = sep_arcsec <= limit
        rows, objs, sep_arcsec = rows[keep], objs[keep], sep_arcsec[keep]
        order = np.lexsort((objs, sep_arcsec, rows))
        out: list[tuple[int, CrossMatch]] = []
        taken: dict[int, int] = {}
        for k in order:
            row = int(rows[k])
            if taken.get(row, 0) >= self.max_per_catalog:
                continue
            taken[row] = taken.get(row, 0) + 1
            obj = int(objs[k])
            mag = float(catalog.magnitudes[obj])
            kind = catalog.kinds[obj]
            out.append(
                (
                    row,
                    CrossMatch(
                        catalog=catalog.name,
                        object_id=str(catalog.object_ids[obj]),
                        separation_arcsec=float(sep_arcsec[k]),
                        magnitude=mag if math.isfinite(mag) else None,
                        kind=None if kind is None else str(kind),
                    ),
                )
            )
        return out


def _ellipse_radius(
    catalog: Catalog, coords: SkyCoord, rows: np.ndarray, objs: np.ndarray
) -> np.ndarray:
    """The ellipse's radius towards each candidate (0 for objects without an ellipse)."""
    assert catalog.semi_major_arcsec is not None
    a = catalog.semi_major_arcsec[objs]
    b = catalog.semi_minor_arcsec[objs] if catalog.semi_minor_arcsec is not None else a
    pa = catalog.position_angle_deg[objs] if catalog.position_angle_deg is not None else 0.0
    towards = catalog.coords[objs].position_angle(coords[rows]).to_value(u.deg)
    phi = np.radians(towards - pa)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = a * b / np.hypot(b * np.cos(phi), a * np.sin(phi))
    return np.where(np.isfinite(r), r, 0.0)


def bright_stars_near(
    matches: Iterable[CrossMatch], *, max_magnitude: float = BRIGHT_STAR_MAGNITUDE
) -> list[CrossMatch]:
    """The matches that are stars at or brighter than ``max_magnitude`` and close enough for
    their light to reach the candidate (within :func:`bright_star_radius_arcsec`)."""
    near = []
    for m in matches:
        mag = m.get("magnitude")
        if m.get("kind") != "star" or mag is None or not mag <= max_magnitude:
            continue
        limit = max(DEFAULT_RADIUS_ARCSEC, bright_star_radius_arcsec(mag))
        if m["separation_arcsec"] <= limit:
            near.append(m)
    return near


def near_bright_star(
    matches: Iterable[CrossMatch], *, max_magnitude: float = BRIGHT_STAR_MAGNITUDE
) -> bool:
    """Whether a candidate with these matches sits next to a bright star (a likely artefact).

    >>> star = CrossMatch(catalog="gaia", object_id="HIP 1", separation_arcsec=20.0,
    ...                   magnitude=9.0, kind="star")
    >>> near_bright_star([star]), near_bright_star([{**star, "separation_arcsec": 200.0}])
    (True, False)
    """
    return bool(bright_stars_near(matches, max_magnitude=max_magnitude))
