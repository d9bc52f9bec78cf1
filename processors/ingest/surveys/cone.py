"""Targets from a cone search of the SDSS photometric catalog (``SURVEY:cone:RA,DEC,RADIUS``).

Instead of a CSV, a survey spec may name a cone: ``sdss:cone:150.1,2.2,3?limit=50`` takes
the galaxies (``PhotoObj.type = 3``) within RADIUS arcminutes of (RA, DEC) in degrees, nearest
first, and fetches each one's cutout from the survey. The query goes to SkyServer's SQL search
web service (https://skyserver.sdss.org/dr18/SkyServerWS/SearchTools/SqlSearch, parameters
``cmd`` = the SQL and ``format=csv``; its CSV starts with a ``#Table1`` line) using the
documented table-valued function ``dbo.fGetNearbyObjEq(ra, dec, radius_arcmin)``, which
returns ``objid`` and ``distance`` (arcmin) of every object in the cone.

The query runs through the source's resilient HTTP (:mod:`processors.ingest.surveys.http`) at
``catalog_url``; a query that fails for good is one dead letter naming the cone.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

from processors.core.exceptions import ConfigError, TransientFetchError
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.targets import BadTarget, Target

__all__ = ["DEFAULT_CATALOG_URL", "ConeQuery", "parse_cone"]

DEFAULT_CATALOG_URL = "https://skyserver.sdss.org/dr18/SkyServerWS/SearchTools"


def parse_cone(text: str, limit: int) -> ConeQuery:
    """``'RA,DEC,RADIUS_ARCMIN'`` -> a ConeQuery; ConfigError naming what is wrong."""
    parts = text.split(",")
    try:
        ra, dec, radius = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"cone:{text}: accepted form is cone:RA,DEC,RADIUS_ARCMIN (degrees, arcmin)"
        ) from None
    if not (0 <= ra < 360 and -90 <= dec <= 90 and 0 < radius <= 60 and math.isfinite(ra)):
        raise ConfigError(
            f"cone:{text}: ra in [0, 360), dec in [-90, 90], radius in (0, 60] arcmin"
        )
    return ConeQuery(ra, dec, radius, limit)


@dataclass(frozen=True)
class ConeQuery:
    ra: float
    dec: float
    radius_arcmin: float
    limit: int = 100

    @property
    def label(self) -> str:
        return f"cone:{self.ra},{self.dec},{self.radius_arcmin}"

    def sql(self) -> str:
        return (
            f"SELECT TOP {int(self.limit)} p.objid, p.ra, p.dec FROM PhotoObj AS p "
            f"JOIN dbo.fGetNearbyObjEq({self.ra}, {self.dec}, {self.radius_arcmin}) AS n "
            "ON n.objid = p.objid WHERE p.type = 3 ORDER BY n.distance"
        )

    def targets(self, http: SurveyHttp) -> Iterator[Target | BadTarget]:
        """The cone's galaxies in distance order (raises Transient/PermanentFetchError)."""
        rows = http.get("SqlSearch", {"cmd": self.sql(), "format": "csv"}, _parse_table)
        for line, row in enumerate(rows, start=1):
            try:
                ra, dec = float(row["ra"]), float(row["dec"])
            except (KeyError, ValueError):
                yield BadTarget(line, ",".join(row.values()), "no numeric ra/dec in the row")
                continue
            yield Target(ra, dec, row.get("objid", ""), line)


def _parse_table(body: bytes, content_type: str) -> list[dict[str, str]]:
    text = body.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if "html" in content_type.lower() or not lines or "ra" not in lines[0].split(","):
        raise TransientFetchError("BadCatalogTable", f"not a SqlSearch CSV: {text[:80]!r}")
    return list(csv.DictReader(io.StringIO("\n".join(lines))))
