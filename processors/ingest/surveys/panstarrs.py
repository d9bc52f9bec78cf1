"""Pan-STARRS1 (3pi) cutouts in two steps: file lookup, then fitscut (``panstarrs:TARGETS.csv``).

Interface (STScI "PS1 Image Cutout Service", https://outerspace.stsci.edu/display/PANSTARRS/
PS1+Image+Cutout+Service, section "web services"):

1. ``GET {base_url}/ps1filenames.py?ra=DEG&dec=DEG&filters=r&type=stack`` answers a
   whitespace-separated table with a header line (columns include ``projcell subcell ra dec
   filter mjd type filename shortname``), one row per skycell image covering the position;
2. ``GET {base_url}/fitscut.cgi?ra=DEG&dec=DEG&size=PX&format=fits&red=FILENAME`` answers the
   cutout of that image as FITS (0.25 arcsec/pixel; 240 px = 1 arcmin).

No row means the position is outside the survey (dec < -30): a dead letter ``NotInSurvey``.
Options: ``filter`` (one of grizy, default r), ``size`` (pixels, default 64), ``type``
(``stack`` or ``warp``, default stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from processors.core.exceptions import PermanentFetchError, TransientFetchError
from processors.ingest.sources.options import choice, integer
from processors.ingest.surveys.http import SurveyHttp
from processors.ingest.surveys.payloads import Expected, check_payload
from processors.ingest.surveys.source import Cutout
from processors.ingest.surveys.targets import Target

__all__ = ["DEFAULT_BASE_URL", "OPTIONS", "PanStarrsCutouts", "parse_filenames"]

DEFAULT_BASE_URL = "https://ps1images.stsci.edu/cgi-bin"


OPTIONS: dict[str, Any] = {
    "filter": choice(*"grizy"),
    "size": integer(8, 6000),
    "type": choice("stack", "warp"),
}


def parse_filenames(body: bytes, content_type: str) -> list[dict[str, str]]:
    """Rows of a ps1filenames.py table; a page that is not that table is a transient error."""
    text = body.decode("utf-8", "replace")
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if "html" in content_type.lower() or not lines or "filename" not in lines[0]:
        raise TransientFetchError("BadLookupTable", f"not a ps1filenames table: {text[:80]!r}")
    header = lines[0]
    return [dict(zip(header, row, strict=False)) for row in lines[1:] if len(row) == len(header)]


@dataclass(frozen=True)
class PanStarrsCutouts:
    filter: str = "r"
    size: int = 64
    type: str = "stack"
    survey: str = "panstarrs"
    options: ClassVar[dict[str, Any]] = OPTIONS

    @property
    def default_base_url(self) -> str:
        """The service root when the spec gives no ``base_url``."""
        return DEFAULT_BASE_URL

    def fetch(self, http: SurveyHttp, target: Target) -> Cutout:
        position = {"ra": f"{target.ra:.7f}", "dec": f"{target.dec:.7f}"}
        rows = http.get(
            "ps1filenames.py",
            {**position, "filters": self.filter, "type": self.type},
            parse_filenames,
        )
        if not rows:
            raise PermanentFetchError("NotInSurvey", "no PS1 image covers this position")
        filename = rows[0]["filename"]
        expected = Expected("fits", self.size, self.size, 1)
        params = {**position, "size": self.size, "format": "fits", "red": filename}
        image = http.get("fitscut.cgi", params, lambda body, ct: check_payload(body, ct, expected))
        return Cutout(image, {"filter": self.filter, "filename": filename, "type": self.type})
