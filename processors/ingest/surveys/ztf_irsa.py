"""ZTF science-image cutouts from the IRSA image service (``ztf-irsa:TARGETS.csv``).

Interface (IRSA, "ZTF Image Service API", https://irsa.ipac.caltech.edu/docs/program_interface/
ztf_api.html):

1. search: ``GET {base_url}/ibe/search/ztf/products/sci?POS=RA,DEC&ct=csv`` (plus
   ``WHERE=filtercode='zr'`` to keep one filter) answers a CSV of the science images covering
   the position, with columns ``field, ccdid, qid, filtercode, imgtypecode, filefracday,
   obsjd, ...``;
2. cutout: ``GET {base_url}/ibe/data/ztf/products/sci/YYYY/MMDD/dddddd/ztf_<filefracday>_
   <field:06d>_<filtercode>_c<ccdid:02d>_<imgtypecode>_q<qid>_sciimg.fits?center=RA,DEC&
   size=Npix&gzip=false`` answers a FITS cutout of that image (where filefracday =
   YYYYMMDDdddddd).

The most recent image (largest ``obsjd``) is taken. Public ZTF data releases need no login;
an empty search is a dead letter ``NotInSurvey``. Options: ``filter`` (zg, zr or zi; default
any), ``size`` (pixels, default 64).

The ``ztf:`` spec is the alert-packet source (processors/ingest/ztf); this one is ``ztf-irsa``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, ClassVar

from processors.core.exceptions import PermanentFetchError, TransientFetchError
from processors.ingest.sources.options import choice, integer
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["DEFAULT_BASE_URL", "OPTIONS", "ZtfIrsaCutouts", "image_path", "parse_search"]

DEFAULT_BASE_URL = "https://irsa.ipac.caltech.edu"
_COLUMNS = ("field", "ccdid", "qid", "filtercode", "imgtypecode", "filefracday")


OPTIONS: dict[str, Any] = {"filter": choice("zg", "zr", "zi"), "size": integer(8, 3000)}


def parse_search(body: bytes, content_type: str) -> list[dict[str, str]]:
    """Rows of an IBE search answered as CSV; anything else is a transient error."""
    text = body.decode("utf-8", "replace")
    rows = list(csv.DictReader(io.StringIO(text)))
    if "html" in content_type.lower() or (rows and not set(_COLUMNS) <= set(rows[0])):
        raise TransientFetchError("BadSearchTable", f"not an IBE CSV table: {text[:80]!r}")
    if not rows and not text.strip().startswith(tuple(_COLUMNS)) and "field" not in text[:200]:
        raise TransientFetchError("BadSearchTable", f"not an IBE CSV table: {text[:80]!r}")
    return rows


def image_path(row: dict[str, str]) -> str:
    """The IBE data path of a science image, from its search row."""
    ffd = row["filefracday"]
    name = (
        f"ztf_{ffd}_{int(row['field']):06d}_{row['filtercode']}_c{int(row['ccdid']):02d}_"
        f"{row['imgtypecode']}_q{row['qid']}_sciimg.fits"
    )
    return f"ibe/data/ztf/products/sci/{ffd[:4]}/{ffd[4:8]}/{ffd[8:]}/{name}"


@dataclass(frozen=True)
class ZtfIrsaCutouts:
    filter: str | None = None
    size: int = 64
    survey: str = "ztf-irsa"
    options: ClassVar[dict[str, Any]] = OPTIONS

    @property
    def default_base_url(self) -> str:
        """The service root when the spec gives no ``base_url``."""
        return DEFAULT_BASE_URL

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        params: dict[str, Any] = {"POS": f"{target.ra:.7f},{target.dec:.7f}", "ct": "csv"}
        if self.filter:
            params["WHERE"] = f"filtercode='{self.filter}'"
        rows = http.get("ibe/search/ztf/products/sci", params, parse_search)
        if not rows:
            raise PermanentFetchError("NotInSurvey", "no ZTF science image covers this position")
        row = max(rows, key=lambda r: float(r.get("obsjd") or 0.0))
        path = image_path(row)
        expected = Expected("fits", self.size, self.size, 1)
        cut = {
            "center": f"{target.ra:.7f},{target.dec:.7f}",
            "size": f"{self.size}pix",
            "gzip": "false",
        }
        image = http.get(path, cut, lambda body, ct: check_payload(body, ct, expected))
        provenance = {
            "filefracday": row["filefracday"],
            "field": row["field"],
            "filtercode": row["filtercode"],
            "ccdid": row["ccdid"],
            "qid": row["qid"],
        }
        if row.get("obsjd"):
            provenance["obsjd"] = row["obsjd"]
        return Cutout(image, provenance)
