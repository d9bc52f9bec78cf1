"""Sky coverage: the unique HEALPix cells of the images with a position, per source and in all.

Cells are HEALPix (Górski et al. 2005) at ``NSIDE`` = 64 in the nested scheme: 49,152 cells of
equal area, 0.839 deg² each (about 55 arcmin across), so a cell is a region of sky about the
size of a survey field's chip, not of one cutout. Pixel indices come from ``astropy_healpix`` (the
astropy-affiliated implementation). ``ra``/``dec`` are ICRS degrees; an image without both, or
with a non-finite or out-of-range one (``|dec| > 90``), has no position and is counted apart,
never put in a cell. The total counts distinct cells over all sources (a cell two sources
share counts once), so it can be less than the sum of the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processors.report.markdown import number, table

__all__ = ["CELL_AREA_DEG2", "NSIDE", "Coverage", "coverage", "healpix_cells", "sky_section"]

NSIDE = 64
CELL_AREA_DEG2 = 4 * math.pi * (180 / math.pi) ** 2 / (12 * NSIDE**2)
"""0.8393 deg²: the sphere's 41,253 deg² over 12 x NSIDE² cells."""


def healpix_cells(ra: Iterable[float], dec: Iterable[float], nside: int = NSIDE) -> np.ndarray:
    """Nested HEALPix indices of ICRS positions in degrees (all finite, ``|dec| <= 90``).

    >>> healpix_cells([0.0, 135.0, 0.0], [0.0, 42.0, -90.0], nside=1).tolist()
    [4, 1, 8]
    """
    import astropy.units as u
    from astropy_healpix import lonlat_to_healpix

    lon = np.asarray(list(ra), dtype=np.float64) % 360.0
    lat = np.asarray(list(dec), dtype=np.float64)
    if lon.size == 0:
        return np.zeros(0, dtype=np.int64)
    cells = lonlat_to_healpix(lon * u.deg, lat * u.deg, nside, order="nested")
    return np.asarray(cells, dtype=np.int64)


@dataclass
class Coverage:
    """Cells per source, images with and without a position, per source."""

    cells: dict[str, set[int]] = field(default_factory=dict)
    placed: dict[str, int] = field(default_factory=dict)
    unplaced: dict[str, int] = field(default_factory=dict)

    @property
    def total_cells(self) -> int:
        return len(set().union(*self.cells.values())) if self.cells else 0


def _valid(ra: Any, dec: Any) -> bool:
    return (
        ra is not None
        and dec is not None
        and math.isfinite(float(ra))
        and math.isfinite(float(dec))
        and -90.0 <= float(dec) <= 90.0
    )


def coverage(rows: Iterable[Mapping[str, Any]]) -> Coverage:
    """Coverage of rows of :data:`~processors.report.picture_queries.SKY_POSITIONS`
    (``source``, ``ra``, ``dec``, ``n`` images at that position)."""
    out = Coverage()
    positions: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        source, n = str(r["source"]), int(r["n"])
        out.placed.setdefault(source, 0)
        out.unplaced.setdefault(source, 0)
        if _valid(r["ra"], r["dec"]):
            out.placed[source] += n
            positions.setdefault(source, []).append((float(r["ra"]), float(r["dec"])))
        else:
            out.unplaced[source] += n
    for source in out.placed:
        pos = positions.get(source, [])
        cells = healpix_cells([p[0] for p in pos], [p[1] for p in pos])
        out.cells[source] = {int(c) for c in cells}
    return out


def sky_section(cov: Coverage) -> list[str]:
    """The *Sky coverage* section: cells and sky area per source and in all."""
    lines = ["## Sky coverage", ""]
    if not cov.placed:
        return [*lines, "No images this day."]
    rows = [
        (
            source,
            cov.placed[source],
            len(cov.cells[source]),
            number(len(cov.cells[source]) * CELL_AREA_DEG2, 1),
            cov.unplaced[source],
        )
        for source in sorted(cov.placed)
    ]
    rows.append(
        (
            "**all sources**",
            sum(cov.placed.values()),
            cov.total_cells,
            number(cov.total_cells * CELL_AREA_DEG2, 1),
            sum(cov.unplaced.values()),
        )
    )
    lines += table(
        ["Source", "Images with a position", "HEALPix cells", "Area (deg²)", "Without a position"],
        rows,
    )
    lines += [
        "",
        f"Unique HEALPix cells (nside {NSIDE}, nested; {CELL_AREA_DEG2:.3f} deg² per cell, of "
        f"{12 * NSIDE**2:,} on the sky) holding at least one image's position (ra, dec). The "
        "total counts a cell shared by sources once. Images without a position (no ra/dec in "
        "their record, e.g. cutouts of synthetic or archival sources that give none) are "
        "counted apart and cover no cell.",
    ]
    return lines
